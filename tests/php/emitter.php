<?php
// A PHP emitter of today's format, as @socket.io/redis-emitter 5 publishes it (docs/protocol.md
// #emitter-wire-format), over php-cli, phpredis and msgpack-php 2: the Emitter class the demo
// backends use (examples/apps/lib/Emitter.php, where the format is described), driven from the
// command line for ioswarm's tests (no third-party code).
//
// Usage: php emitter.php <redis-port> ['<json list of emits>']   (without it: the JSON on stdin)
//   Each emit is {"event": "...", "args": [...], "key"?: "socket.io", "nsp"?: "/chat",
//   "rooms"?: [...], "except"?: [...], "flags"?: ["volatile", ...]}. An argument
//   {"$binary": "<hex>"} is sent as those bytes; JSON objects are PHP associative arrays.
//   Prints the channel and the hex of each published message, one emit per line.

declare(strict_types=1);

require_once __DIR__ . '/../../examples/apps/lib/Emitter.php';

/** JSON arguments to PHP values: {"$binary": hex} becomes those bytes. */
function to_arg(mixed $value): mixed
{
    if (is_array($value) && array_keys($value) === ['$binary']) {
        return (string) hex2bin($value['$binary']);
    }
    return $value;
}

function main(array $argv): int
{
    if (count($argv) < 2 || count($argv) > 3) {
        fwrite(STDERR, "usage: php emitter.php <redis-port> ['<json list of emits>' (default: stdin)]\n");
        return 2;
    }
    $json = $argv[2] ?? stream_get_contents(STDIN);
    foreach (['redis', 'msgpack'] as $ext) {
        if (!extension_loaded($ext)) {
            fwrite(STDERR, "the PHP extension '$ext' is not loaded (Debian: php-$ext)\n");
            return 3;
        }
    }
    $redis = new Redis();
    $redis->connect('127.0.0.1', (int) $argv[1], 5.0);
    foreach (json_decode($json, true, 512, JSON_THROW_ON_ERROR) as $e) {
        $emitter = new Emitter($redis, $e['key'] ?? 'socket.io');
        if (isset($e['nsp'])) {
            $emitter->of($e['nsp']);
        }
        foreach ($e['rooms'] ?? [] as $room) {
            $emitter->to($room);
        }
        foreach ($e['except'] ?? [] as $room) {
            $emitter->except($room);
        }
        foreach ($e['flags'] ?? [] as $flag) {
            $emitter->flag($flag);
        }
        [$channel, $message] = $emitter->emit($e['event'], ...array_map('to_arg', $e['args'] ?? []));
        echo $channel, ' ', bin2hex($message), "\n";
    }
    $redis->close();
    return 0;
}

exit(main($argv));
