#!/usr/bin/env bash
# Idle scenario: peak RSS of a server holding N idle websocket clients (each in one room), per
# client, for the ioswarm binary and for Node's socket.io 4.8 (bench/peers/node) in the same run.
#
#   bench/run-idle.sh                      # 10,000 clients, both servers
#   CLIENTS=2000 SERVERS=node bench/run-idle.sh
#
# Environment (defaults): CLIENTS (10000), WORKERS (2), SOURCES (127.0.0.2,…,127.0.0.5),
# HOLD_SECS (30: one 25 s ping round), MODE (ws | upgrade), ROOM (idle), CONCURRENCY (200 per
# worker), SERVERS ("ioswarm node"), SKIP_BUILD (unset), CARGO_TARGET_DIR (target).
# Prints a Markdown table and writes bench/results/idle-<UTC timestamp>.json.
# Loopback only; every server it starts is stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CLIENTS=${CLIENTS:-10000}
WORKERS=${WORKERS:-2}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
HOLD_SECS=${HOLD_SECS:-30}
MODE=${MODE:-ws}
ROOM=${ROOM:-idle}
CONCURRENCY=${CONCURRENCY:-200}
SERVERS=${SERVERS:-ioswarm node}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN_DIR=$TARGET_DIR/release
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=$ROOT/bench/results
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ioswarm-idle.XXXXXX")
SERVER_PID=""

log() { printf '[run-idle] %s\n' "$*" >&2; }

stop_server() {
    [ -n "$SERVER_PID" ] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            log "server $SERVER_PID ignored SIGTERM for 10 s; killing it"
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        fi
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
trap 'stop_server; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building (release)"
    # `--bin` selects targets across every -p package: name both binaries.
    cargo build --release -p ioswarm --bin ioswarm -p ioswarm-bench --bin ioswarm-bench
    log "installing the node peer"
    (cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error)
fi
BENCH=$BIN_DIR/ioswarm-bench
[ -x "$BENCH" ] || { log "missing $BENCH"; exit 1; }

# start_server NAME: starts it in the background, sets SERVER_PID and SERVER_ADDR from its
# ready line (waits at most 30 s).
start_server() {
    local name=$1 out=$WORK/$1.out err=$WORK/$1.err pattern
    case $name in
        ioswarm)
            "$BIN_DIR/ioswarm" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --client-rooms \
                >"$out" 2>"$err" &
            pattern='^ioswarm ready socketio='
            ;;
        node)
            node "$ROOT/bench/peers/node/server.mjs" --listen 127.0.0.1:0 >"$out" 2>"$err" &
            pattern='^node-peer ready socketio='
            ;;
        *) log "unknown server $name"; return 1 ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        if grep -q "$pattern" "$out" 2>/dev/null; then
            SERVER_ADDR=$(grep -m1 "$pattern" "$out" | sed -E 's/.*socketio=([^ ]+).*/\1/')
            log "$name ready at $SERVER_ADDR (pid $SERVER_PID)"
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            log "$name exited before its ready line; stderr:"
            tail -n 20 "$err" >&2 || true
            SERVER_PID=""
            return 1
        fi
        sleep 0.1
    done
    log "$name printed no ready line in 30 s"
    return 1
}

FILES=()
for name in $SERVERS; do
    if ! start_server "$name"; then
        stop_server
        continue
    fi
    sleep 1 # let start-up allocations settle before the "before" sample
    log "$name: $CLIENTS clients, $WORKERS workers, mode $MODE, room $ROOM, hold $HOLD_SECS s"
    if "$BENCH" idle --label "$name" --target "http://$SERVER_ADDR" --server-pid "$SERVER_PID" \
        --clients "$CLIENTS" --workers "$WORKERS" --sources "$SOURCES" --room "$ROOM" \
        --hold-secs "$HOLD_SECS" --mode "$MODE" --concurrency "$CONCURRENCY" \
        --json-out "$WORK/$name.json" >"$WORK/$name.result"; then
        FILES+=("$WORK/$name.json")
    else
        log "$name: the idle run failed (see above); its server's stderr ends with:"
        tail -n 20 "$WORK/$name.err" >&2 || true
    fi
    stop_server
done
[ "${#FILES[@]}" -gt 0 ] || { log "no run produced a result"; exit 1; }

mkdir -p "$RESULTS"
OUT=$RESULTS/idle-$STAMP.json
echo
echo "Idle: $CLIENTS clients (mode $MODE), each in room \"$ROOM\", held $HOLD_SECS s; $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"
echo
"$BENCH" report --baseline node --out "$OUT" "${FILES[@]}"
