#!/usr/bin/env bash
# Redis ingress against redis-server, same machine, same run: redis-benchmark's PING and
# PUBLISH (pipelined 16 and unpipelined), alternating servers over ROUNDS rounds, median rps.
#
#   bench/run-redis.sh              # ROUNDS=3, N=200000
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools). Loopback only;
# both servers are stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
N=${N:-200000}
REDIS_PORT=${REDIS_PORT:-7400}
IOSWARM_PORT=${IOSWARM_PORT:-7403}
WORK=$(mktemp -d)
IOSWARM_PID=""
cleanup() {
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    [ -n "$IOSWARM_PID" ] && kill "$IOSWARM_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[ -n "${SKIP_BUILD:-}" ] || cargo build --release --bin ioswarm
redis-server --port "$REDIS_PORT" --save "" --appendonly no --daemonize yes >/dev/null
target/release/ioswarm --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --redis-listen "127.0.0.1:$IOSWARM_PORT" >"$WORK/ioswarm.out" 2>"$WORK/ioswarm.err" &
IOSWARM_PID=$!
for _ in $(seq 1 50); do grep -q "ioswarm ready" "$WORK/ioswarm.out" && break; sleep 0.1; done

run() { # port, label, args...
    local port=$1 label=$2; shift 2
    redis-benchmark -p "$port" -n "$N" --csv "$@" | tail -n 1 | cut -d, -f2 | tr -d '"' >>"$WORK/$label"
}
for _ in $(seq 1 "$ROUNDS"); do
    for server in redis ioswarm; do
        port=$REDIS_PORT; [ "$server" = ioswarm ] && port=$IOSWARM_PORT
        run "$port" "$server-ping" -t ping_mbulk
        run "$port" "$server-pub16" -P 16 PUBLISH ch msg
        run "$port" "$server-pub1" -P 1 PUBLISH ch msg
    done
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "redis-benchmark, $N requests, median of $ROUNDS alternating rounds, $(nproc) cores, $(date -u +%FT%TZ)"
echo
echo "| benchmark | redis-server rps | ioswarm rps | ioswarm / redis |"
echo "|---|---|---|---|"
for b in ping:"-t ping (PING_MBULK)" pub16:"PUBLISH ch msg -P 16" pub1:"PUBLISH ch msg -P 1"; do
    key=${b%%:*} label=${b#*:}
    r=$(median "$WORK/redis-$key") i=$(median "$WORK/ioswarm-$key")
    echo "| $label | $r | $i | $(awk -v i="$i" -v r="$r" 'BEGIN {printf "%.2f", i / r}') |"
done
