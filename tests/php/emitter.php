<?php
// A PHP emitter of today's format, as @socket.io/redis-emitter 5 publishes it (docs/protocol.md
// #emitter-wire-format), over php-cli, phpredis and msgpack-php 2. Written for ioswarm's tests
// (no third-party code):
//
// - PUBLISH on `<key>#<nsp>#`, or `<key>#<nsp>#<room>#` when the emit targets exactly one room;
// - the message is msgpack `[uid, packet, opts]`: uid "emitter", packet `{"type": 2, "data":
//   [event, ...args], "nsp"}`, opts `{"rooms": [...], "except": [...], "flags": {...}}`;
// - msgpack-php has no `bin`: binary data is a str that is not UTF-8 (the server turns it into
//   a binary attachment), and empty PHP arrays are msgpack arrays.
//
// Usage: php emitter.php <redis-port> ['<json list of emits>']   (without it: the JSON on stdin)
//   Each emit is {"event": "...", "args": [...], "key"?: "socket.io", "nsp"?: "/chat",
//   "rooms"?: [...], "except"?: [...], "flags"?: ["volatile", ...]}. An argument
//   {"$binary": "<hex>"} is sent as those bytes; JSON objects are PHP associative arrays.
//   Prints the channel and the hex of each published message, one emit per line.

declare(strict_types=1);

/** An emitter of the current format over phpredis. */
final class Emitter
{
    private const EVENT = 2;
    private const UID = 'emitter';

    /** @var list<string> */
    private array $rooms = [];
    /** @var list<string> */
    private array $except = [];
    /** @var array<string, bool> */
    private array $flags = [];
    private string $nsp = '/';

    public function __construct(private readonly Redis $redis, private readonly string $key = 'socket.io')
    {
    }

    public function of(string $nsp): self
    {
        $this->nsp = str_starts_with($nsp, '/') ? $nsp : '/' . $nsp;
        return $this;
    }

    public function to(string $room): self
    {
        if (!in_array($room, $this->rooms, true)) {
            $this->rooms[] = $room;
        }
        return $this;
    }

    public function except(string $room): self
    {
        if (!in_array($room, $this->except, true)) {
            $this->except[] = $room;
        }
        return $this;
    }

    /** `volatile`, `compress`, … */
    public function flag(string $flag): self
    {
        $this->flags[$flag] = true;
        return $this;
    }

    /** Publishes `emit(event, ...args)`; returns [channel, message]. */
    public function emit(string $event, mixed ...$args): array
    {
        $packet = ['type' => self::EVENT, 'data' => [$event, ...$args], 'nsp' => $this->nsp];
        $opts = ['rooms' => $this->rooms, 'flags' => $this->flags, 'except' => $this->except];
        $channel = $this->key . '#' . $this->nsp . '#';
        if (count($this->rooms) === 1) {
            $channel .= $this->rooms[0] . '#';
        }
        $message = msgpack_pack([self::UID, $packet, $opts]);
        $this->redis->publish($channel, $message);

        $this->rooms = [];
        $this->except = [];
        $this->flags = [];
        $this->nsp = '/';
        return [$channel, $message];
    }
}

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
