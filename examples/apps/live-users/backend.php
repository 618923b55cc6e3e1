<?php
// Live users, the PHP app: its own screens show how many people are on the site by reading the
// count ioswarm keeps (GET users:count on ioswarm's Redis port, as it read the INCR/DECR
// counter from Redis before). The pages get the count from ioswarm itself.
//
//   IOSWARM_REDIS=127.0.0.1:6379 php -S 127.0.0.1:8080 backend.php

declare(strict_types=1);

require_once __DIR__ . '/../lib/app.php';

$users = (int) ioswarm_redis()->get('users:count');
[$method, $path] = route();
if ($method === 'GET' && $path === '/users.json') {
    reply_json(['users' => $users]);
} elseif ($method === 'GET' && $path === '/') {
    html_page('Dashboard (PHP)', sprintf('<p id="users">%d %s on the site right now</p>', $users, $users === 1 ? 'person' : 'people'));
} else {
    http_response_code(404);
    echo "not found\n";
}
