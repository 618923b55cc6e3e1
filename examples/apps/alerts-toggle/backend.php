<?php
// Alerts toggle, the PHP app: an admin screen that deletes things. Every delete is emitted to
// every page (`Thing::delete`); an important one first goes to the pages that turned alerts on
// (`Thing::delete::important` to ROOM::ExtraImportantUpdates). Both with the socket.io emitter
// on ioswarm's Redis port.
//
//   IOSWARM_REDIS=127.0.0.1:6379 php -S 127.0.0.1:8080 backend.php

declare(strict_types=1);

require_once __DIR__ . '/../lib/app.php';

const ALERTS_ROOM = 'ROOM::ExtraImportantUpdates';
const THINGS = [1 => 'Lamp', 2 => 'Desk', 3 => 'Chair', 4 => 'Server rack'];

[$method, $path] = route();
if ($method === 'POST' && preg_match('#^/things/(\d+)/delete$#', $path, $m) && isset(THINGS[(int) $m[1]])) {
    $thing = ['id' => (int) $m[1], 'name' => THINGS[(int) $m[1]]];
    if (isset($_POST['important'])) {
        emitter()->to(ALERTS_ROOM)->emit('Thing::delete::important', $thing);
    }
    emitter()->emit('Thing::delete', $thing);
    see_other('/?deleted=' . $thing['id']);
} elseif ($method === 'GET' && $path === '/') {
    $body = '';
    if (isset($_GET['deleted'], THINGS[(int) $_GET['deleted']])) {
        $body .= '<p class="note" id="deleted">Deleted ' . h(THINGS[(int) $_GET['deleted']]) . '.</p>';
    }
    foreach (THINGS as $id => $name) {
        $body .= sprintf(
            '<form method="post" action="/things/%1$d/delete" id="thing-%1$d">#%1$d %2$s '
            . '<label><input type="checkbox" name="important"> important</label><button>Delete</button></form>',
            $id,
            h($name),
        );
    }
    html_page('Things (PHP admin)', $body);
} else {
    http_response_code(404);
    echo "not found\n";
}
