<?php
// Thing::update, the PHP app: an admin screen that edits the things and, on every save, emits
// `Thing::update` with the changed record to every page (socket.io emitter on ioswarm's Redis
// port); and the webhook answering `Thing::list` for a page that just opened. The things live
// in ioswarm's key-value store (replicated across the nodes).
//
//   IOSWARM_REDIS=127.0.0.1:6379 php -S 127.0.0.1:8080 backend.php

declare(strict_types=1);

require_once __DIR__ . '/../lib/app.php';

/** The things a fresh store starts with. */
const THINGS = [
    1 => ['name' => 'Lamp', 'stock' => 3],
    2 => ['name' => 'Desk', 'stock' => 1],
    3 => ['name' => 'Chair', 'stock' => 12],
];

/**
 * Every thing: `{id, name, stock, rev}`. `rev` grows with every save (pages keep the newest
 * record they saw, whatever order the list and the updates arrive in).
 */
function things(): array
{
    $stored = ioswarm_redis()->mGet(array_map(fn (int $id) => "thing:$id", array_keys(THINGS)));
    $out = [];
    foreach (array_keys(THINGS) as $i => $id) {
        $out[] = is_string($stored[$i])
            ? json_decode($stored[$i], true, 8, JSON_THROW_ON_ERROR)
            : ['id' => $id, ...THINGS[$id], 'rev' => 0];
    }
    return $out;
}

/** Saves thing `$id` and tells every page. */
function update_thing(int $id, string $name, int $stock): array
{
    $redis = ioswarm_redis();
    $thing = ['id' => $id, 'name' => $name, 'stock' => $stock, 'rev' => $redis->incr('thing:rev')];
    $redis->set("thing:$id", json_encode($thing, JSON_THROW_ON_ERROR));
    emitter()->emit('Thing::update', $thing);
    return $thing;
}

[$method, $path] = route();
if ($method === 'POST' && $path === '/socket-events') {
    // ioswarm's webhook: the events the [[forward]] rule names.
    $event = json_body();
    match ($event['event'] ?? '') {
        'Thing::list' => reply_json(['ack' => [things()]]),
        default => reply_json(new stdClass()),
    };
} elseif ($method === 'POST' && preg_match('#^/things/(\d+)$#', $path, $m) && isset(THINGS[(int) $m[1]])) {
    $name = trim((string) ($_POST['name'] ?? ''));
    $stock = filter_var($_POST['stock'] ?? '', FILTER_VALIDATE_INT, ['options' => ['min_range' => 0]]);
    if (!preg_match('/^.{1,60}$/u', $name) || $stock === false) {
        http_response_code(400);
        html_page('Things', '<p>A name (1 to 60 characters) and a stock of 0 or more, please. <a href="/">Back</a></p>');
        return;
    }
    update_thing((int) $m[1], $name, $stock);
    see_other('/?saved=' . (int) $m[1]);
} elseif ($method === 'GET' && $path === '/') {
    $body = '';
    if (isset($_GET['saved'])) {
        $body .= '<p class="note" id="saved">Saved thing ' . h((int) $_GET['saved']) . '; every open page shows it.</p>';
    }
    foreach (things() as $t) {
        $body .= sprintf(
            '<form method="post" action="/things/%1$d" id="thing-%1$d">#%1$d '
            . '<label>Name <input name="name" value="%2$s" required maxlength="60"></label>'
            . '<label>In stock <input name="stock" type="number" min="0" value="%3$d" required></label>'
            . '<button>Save</button></form>',
            $t['id'],
            h($t['name']),
            $t['stock'],
        );
    }
    html_page('Things (PHP admin)', $body);
} else {
    http_response_code(404);
    echo "not found\n";
}
