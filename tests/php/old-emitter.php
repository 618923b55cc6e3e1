<?php
// The PHP emitter of socket.io 1.x (2014-2016), as PHP applications of that time ran it:
// php-cli, phpredis and msgpack-php. Written for ioswarm's tests from the wire format in
// docs/protocol.md#emitters-of-socketio-1x (no third-party code):
//
// - PUBLISH on `<key>#emitter` (key `socket.io` unless configured), one channel for every
//   namespace and room;
// - the message is msgpack `[packet, {"rooms": [...], "flags": {...}}]`: no uid element;
//   `packet` is `{"type": 2 | 5, "data": [event, ...args], "nsp": "/..."}` (the very first
//   versions sent no `nsp`);
// - a PHP string is msgpack raw (msgpack-php 0.5 of 2014 has no str 8 and no bin: 0xa0-0xbf,
//   0xda raw 16, 0xdb raw 32); an argument wrapped in Binary makes the packet a BINARY_EVENT
//   (type 5, flag `binary`), and then every byte 0xda of the message becomes 0xd8 and every 0xdb
//   becomes 0xd9, so that msgpack-js, socket.io-redis' decoder then, read the raw strings as its
//   "buffer 16" / "buffer 32".
//
// Usage: php old-emitter.php <redis-port> ['<json list of emits>']   (without it: the JSON on stdin)
//   Each emit is {"event": "...", "args": [...], "key"?: "socket.io", "nsp"?: "/chat" (null: no
//   nsp at all, as the first versions), "rooms"?: [...], "flags"?: ["volatile", ...],
//   "str8"?: false}. An argument {"$binary": "<hex>"} is sent as Binary; JSON objects are PHP
//   associative arrays. "str8": true packs with msgpack-php 2's str 8 (the same emitter run on a
//   newer PHP). Prints the hex of each published message, one per line.

declare(strict_types=1);

/** Marks an argument as binary data, like the emitter's own wrapper class did. */
final class Binary
{
    public function __construct(public readonly string $bytes)
    {
    }
}

/** A socket.io 1.x emitter over phpredis. */
final class SocketIO1Emitter
{
    private const EVENT = 2;
    private const BINARY_EVENT = 5;

    /** @var list<string> */
    private array $rooms = [];
    /** @var array<string, bool> */
    private array $flags = [];
    private ?string $nsp = '/';

    public function __construct(private readonly Redis $redis, private readonly string $key = 'socket.io')
    {
    }

    public function in(string $room): self
    {
        if (!in_array($room, $this->rooms, true)) {
            $this->rooms[] = $room;
        }
        return $this;
    }

    public function to(string $room): self
    {
        return $this->in($room);
    }

    /** The namespace; null leaves `nsp` out of the packet (the first versions). */
    public function of(?string $nsp): self
    {
        $this->nsp = $nsp;
        return $this;
    }

    /** `json`, `volatile`, `broadcast`. */
    public function flag(string $flag): self
    {
        $this->flags[$flag] = true;
        return $this;
    }

    /** Publishes `emit(event, ...args)`; returns the published message. */
    public function emit(string $event, mixed ...$args): string
    {
        $type = self::EVENT;
        $data = [$event];
        foreach ($args as $arg) {
            if ($arg instanceof Binary) {
                $type = self::BINARY_EVENT;
                $this->flags['binary'] = true;
                $arg = $arg->bytes;
            }
            $data[] = $arg;
        }
        $packet = ['type' => $type, 'data' => $data];
        if ($this->nsp !== null) {
            $packet['nsp'] = $this->nsp;
        }
        $message = msgpack_pack([$packet, ['rooms' => $this->rooms, 'flags' => $this->flags]]);
        if ($type === self::BINARY_EVENT) {
            $message = strtr($message, "\xda\xdb", "\xd8\xd9");
        }
        $this->redis->publish($this->key . '#emitter', $message);

        $this->rooms = [];
        $this->flags = [];
        $this->nsp = '/';
        return $message;
    }
}

/** JSON arguments to PHP values: {"$binary": hex} becomes a Binary. */
function to_arg(mixed $value): mixed
{
    if (is_array($value) && array_keys($value) === ['$binary']) {
        return new Binary((string) hex2bin($value['$binary']));
    }
    return $value;
}

function main(array $argv): int
{
    if (count($argv) < 2 || count($argv) > 3) {
        fwrite(STDERR, "usage: php old-emitter.php <redis-port> ['<json list of emits>' (default: stdin)]\n");
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
    $emits = json_decode($json, true, 512, JSON_THROW_ON_ERROR);
    foreach ($emits as $e) {
        // msgpack-php 0.5 (2014) had no str 8: strings of 32-65535 bytes are raw 16.
        ini_set('msgpack.use_str8_serialization', ($e['str8'] ?? false) ? '1' : '0');
        $emitter = new SocketIO1Emitter($redis, $e['key'] ?? 'socket.io');
        if (array_key_exists('nsp', $e)) {
            $emitter->of($e['nsp']);
        }
        foreach ($e['rooms'] ?? [] as $room) {
            $emitter->in($room);
        }
        foreach ($e['flags'] ?? [] as $flag) {
            $emitter->flag($flag);
        }
        echo bin2hex($emitter->emit($e['event'], ...array_map('to_arg', $e['args'] ?? []))), "\n";
    }
    $redis->close();
    return 0;
}

exit(main($argv));
