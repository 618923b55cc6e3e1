<?php
// A socket.io emitter of today's format (what @socket.io/redis-emitter 5 publishes; see
// docs/protocol.md#emitter-wire-format) over phpredis and msgpack-php 2, shared by the demo
// backends (examples/apps/*/backend.php) and the PHP emitter tests (tests/php/emitter.php).
// Pointed at ioswarm's Redis port, it reaches every page of every node:
//
//   (new Emitter($redis))->to('ROOM::ExtraImportantUpdates')->emit('Thing::delete::important', $thing);
//
// - PUBLISH on `<key>#<nsp>#`, or `<key>#<nsp>#<room>#` when the emit targets exactly one room;
// - the message is msgpack `[uid, packet, opts]`: uid "emitter", packet `{"type": 2, "data":
//   [event, ...args], "nsp"}`, opts `{"rooms": [...], "except": [...], "flags": {...}}`;
// - msgpack-php has no `bin`: binary data is a str that is not UTF-8 (the server turns it into
//   a binary attachment), and empty PHP arrays are msgpack arrays.

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
