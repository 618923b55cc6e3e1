<?php
// What the demo backends share: phpredis connected to ioswarm's embedded Redis port (the
// key-value store and the emitter's PUBLISH, as they went to a Redis server before), and the
// JSON of ioswarm's webhook and connect hook (README, "Forwarding events to the app" and
// "Authentication"). Needs php-cli with phpredis and msgpack-php (Debian: php-cli php-redis
// php-msgpack).

declare(strict_types=1);

require_once __DIR__ . '/Emitter.php';

foreach (['redis', 'msgpack'] as $ext) {
    if (!extension_loaded($ext)) {
        http_response_code(500);
        error_log("the PHP extension '$ext' is not loaded (Debian: php-$ext)");
        exit(1);
    }
}

/**
 * The connection to ioswarm's Redis port, `IOSWARM_REDIS` (host:port; by default
 * 127.0.0.1:6379, a single node's default `--redis-listen`). One per request.
 */
function ioswarm_redis(): Redis
{
    static $redis = null;
    if ($redis === null) {
        $address = getenv('IOSWARM_REDIS') ?: '127.0.0.1:6379';
        $colon = strrpos($address, ':');
        $redis = new Redis();
        $redis->connect(substr($address, 0, $colon), (int) substr($address, $colon + 1), 2.0);
    }
    return $redis;
}

/** An emitter publishing on ioswarm's Redis port. */
function emitter(): Emitter
{
    return new Emitter(ioswarm_redis());
}

/** The request's path (`/socket-events`) and method. */
function route(): array
{
    return [$_SERVER['REQUEST_METHOD'], parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH) ?: '/'];
}

/**
 * The JSON body ioswarm POSTs: a forwarded event `{"event", "args", "socket": {"id", "data",
 * "rooms"}, "nsp", "node"}` or a connect-hook request `{"auth", "query", "headers", …}`.
 */
function json_body(): array
{
    $body = file_get_contents('php://input') ?: '{}';
    $value = json_decode($body, true, 64, JSON_THROW_ON_ERROR);
    return is_array($value) ? $value : [];
}

/** Answers with `$value` as JSON (a webhook reply `{"ack": [...], "emit": [...]}`, …). */
function reply_json(mixed $value, int $status = 200): void
{
    http_response_code($status);
    header('Content-Type: application/json');
    echo json_encode($value, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_THROW_ON_ERROR);
}

/** Text for HTML. */
function h(string|int $text): string
{
    return htmlspecialchars((string) $text, ENT_QUOTES);
}

/** Redirects a form POST back to `$to` (post/redirect/get). */
function see_other(string $to): void
{
    header('Location: ' . $to, true, 303);
}

/** A page of the PHP app (its admin screens), with `$body` as HTML. */
function html_page(string $title, string $body): void
{
    header('Content-Type: text/html; charset=utf-8');
    echo '<!doctype html><html lang="en"><meta charset="utf-8"><title>', h($title), '</title>',
        '<style>body{font:16px system-ui,sans-serif;margin:2em auto;max-width:40em;padding:0 1em}',
        'form{margin:.6em 0}input,select,button{font:inherit}label{margin-right:.8em}',
        '.note{color:#1a7f37}</style>',
        '<link rel="icon" href="data:,">', '<h1>', h($title), '</h1>', $body;
}
