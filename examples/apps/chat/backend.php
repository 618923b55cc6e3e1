<?php
// Multi-room chat, the PHP app: the connect hook that checks nicknames, the webhook for the
// chat events ioswarm forwards (chat:rooms, chat:create, chat:message), and a screen listing
// the rooms with how many people are in each. The room list lives in ioswarm's key-value store.
//
//   IOSWARM_REDIS=127.0.0.1:6379 php -S 127.0.0.1:8080 backend.php

declare(strict_types=1);

require_once __DIR__ . '/../lib/app.php';

/** The rooms every chat has. */
const DEFAULT_ROOMS = ['lobby', 'random'];

/** Every room's name: the defaults, then the created ones in creation order. */
function rooms(): array
{
    $redis = ioswarm_redis();
    $count = (int) $redis->get('chat:rooms:count');
    $created = $count > 0 ? $redis->mGet(array_map(fn (int $i) => "chat:rooms:$i", range(1, $count))) : [];
    // A name is missing for the moment between a creator's INCR and its SET.
    return array_values(array_unique([...DEFAULT_ROOMS, ...array_filter($created, 'is_string')]));
}

/** Adds room `$name`; false when it already exists. Safe when people create rooms at once. */
function create_room(string $name): bool
{
    $redis = ioswarm_redis();
    if (in_array($name, DEFAULT_ROOMS, true) || !$redis->set("chat:room:$name", '1', ['nx'])) {
        return false;
    }
    $redis->set('chat:rooms:' . $redis->incr('chat:rooms:count'), $name);
    return true;
}

/** A chat event forwarded by ioswarm: the webhook reply (ack, emits). */
function on_event(array $event): array
{
    $socket = $event['socket'];
    $arg = $event['args'][0] ?? null;
    switch ($event['event']) {
        case 'chat:rooms':
            return ['ack' => [rooms()]];
        case 'chat:create':
            $name = is_string($arg) ? $arg : '';
            if (!preg_match('/^[a-z0-9][a-z0-9-]{0,19}$/', $name)) {
                return ['ack' => [['error' => 'a room name is 1 to 20 of a-z, 0-9 and -']]];
            }
            if (!create_room($name)) {
                return ['ack' => [['room' => $name]]];
            }
            // Every page's room list gets the new room.
            return ['ack' => [['room' => $name]], 'emit' => [['event' => 'chat:rooms', 'args' => [rooms()]]]];
        case 'chat:message':
            $room = is_array($arg) && is_string($arg['room'] ?? null) ? $arg['room'] : '';
            $text = is_array($arg) && is_string($arg['text'] ?? null) ? trim($arg['text']) : '';
            if (!in_array("chat:$room", $socket['rooms'], true)) {
                return ['ack' => [['error' => "you are not in #$room"]]];
            }
            if (!preg_match('/^.{1,500}$/us', $text)) {
                return ['ack' => [['error' => 'a message is 1 to 500 characters']]];
            }
            $message = ['room' => $room, 'nick' => $socket['data']['nick'], 'text' => $text];
            // To the room's other members, on every node; the sender shows its own.
            return [
                'emit' => [['rooms' => ["chat:$room"], 'except' => [$socket['id']], 'event' => 'chat:message', 'args' => [$message]]],
                'ack' => [['ok' => true]],
            ];
        default:
            return [];
    }
}

[$method, $path] = route();
if ($method === 'POST' && $path === '/connect') {
    // The connect hook: the page connects with io({auth: {nick}}).
    $nick = json_body()['auth']['nick'] ?? null;
    if (is_string($nick) && preg_match('/^[A-Za-z0-9_-]{1,20}$/', $nick)) {
        reply_json(['data' => ['nick' => $nick]]);
    } else {
        reply_json(['message' => 'a nickname is 1 to 20 letters, digits, - or _'], 403);
    }
} elseif ($method === 'POST' && $path === '/socket-events') {
    reply_json((object) on_event(json_body()));
} elseif ($method === 'GET' && $path === '/') {
    $rooms = rooms();
    // Presence keys: chat:members:<room> (the room is chat:<name>).
    $counts = ioswarm_redis()->mGet(array_map(fn (string $r) => "chat:members:chat:$r", $rooms));
    $body = '<ul id="rooms">';
    foreach ($rooms as $i => $room) {
        $n = (int) $counts[$i];
        $body .= sprintf('<li>#%s: %d %s</li>', h($room), $n, $n === 1 ? 'person' : 'people');
    }
    html_page('Chat rooms (PHP)', $body . '</ul>');
} else {
    http_response_code(404);
    echo "not found\n";
}
