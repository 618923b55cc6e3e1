<?php
// Click tracking, the PHP app: the webhook ioswarm POSTs the pages' clicks to. Each click is
// counted with INCR analytics::counter in ioswarm's key-value store (linearizable on every node,
// so concurrent clicks on different nodes all count), and the new total is emitted to every
// page as Analytics::counter with the socket.io emitter. GET / shows the total.
//
//   IOSWARM_REDIS=127.0.0.1:6379 php -S 127.0.0.1:8080 backend.php

declare(strict_types=1);

require_once __DIR__ . '/../lib/app.php';

const COUNTER = 'analytics::counter';

[$method, $path] = route();
if ($method === 'POST' && $path === '/socket-events') {
    $event = json_body();
    switch ($event['event'] ?? '') {
        case 'document::clicked':
            $total = ioswarm_redis()->incr(COUNTER);
            emitter()->emit('Analytics::counter', $total);
            reply_json(['ack' => [$total]]);
            break;
        case 'Analytics::get':
            reply_json(['ack' => [(int) ioswarm_redis()->get(COUNTER)]]);
            break;
        default:
            reply_json(new stdClass());
    }
} elseif ($method === 'GET' && $path === '/') {
    $total = (int) ioswarm_redis()->get(COUNTER);
    html_page('Analytics (PHP)', '<p id="total">' . h($total) . ' clicks so far</p>');
} else {
    http_response_code(404);
    echo "not found\n";
}
