#!/usr/bin/env bash
# Redis ingress against redis-server, same machine, same run: redis-benchmark's PING and
# PUBLISH (each pipelined 16 and unpipelined), alternating servers over ROUNDS rounds, median rps
# and median server CPU per request (utime+stime of the server process around each run, from
# /proc; steadier than rps when other work shares the cores).
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
for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_PID=$(redis-cli -p "$REDIS_PORT" info server | tr -d '\r' | awk -F: '$1 == "process_id" {print $2}')
target/release/ioswarm --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --redis-listen "127.0.0.1:$IOSWARM_PORT" >"$WORK/ioswarm.out" 2>"$WORK/ioswarm.err" &
IOSWARM_PID=$!
for _ in $(seq 1 50); do grep -q "ioswarm ready" "$WORK/ioswarm.out" && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
run() { # port, pid, label, args...
    local port=$1 pid=$2 label=$3; shift 3
    local before after
    before=$(cpu_ticks "$pid")
    redis-benchmark -p "$port" -n "$N" --csv "$@" | tail -n 1 | cut -d, -f2 | tr -d '"' >>"$WORK/$label"
    after=$(cpu_ticks "$pid")
    awk -v b="$before" -v a="$after" -v t="$TICKS" -v n="$N" 'BEGIN {printf "%.0f\n", (a - b) / t * 1e9 / n}' >>"$WORK/$label.cpu"
}
for _ in $(seq 1 "$ROUNDS"); do
    for server in redis ioswarm; do
        port=$REDIS_PORT pid=$REDIS_PID
        [ "$server" = ioswarm ] && port=$IOSWARM_PORT pid=$IOSWARM_PID
        run "$port" "$pid" "$server-ping" -t ping_mbulk
        run "$port" "$pid" "$server-ping16" -P 16 -t ping_mbulk
        run "$port" "$pid" "$server-pub16" -P 16 PUBLISH ch msg
        run "$port" "$pid" "$server-pub1" -P 1 PUBLISH ch msg
    done
done
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "redis-benchmark, $N requests, median of $ROUNDS alternating rounds, $(nproc) cores, $(date -u +%FT%TZ)"
echo
echo "| benchmark | redis-server rps | ioswarm rps | ioswarm / redis | server CPU ns/request, redis-server | ioswarm |"
echo "|---|---|---|---|---|---|"
for b in ping:"-t ping (PING_MBULK)" ping16:"-t ping (PING_MBULK) -P 16" pub16:"PUBLISH ch msg -P 16" \
    pub1:"PUBLISH ch msg -P 1"; do
    key=${b%%:*} label=${b#*:}
    r=$(median "$WORK/redis-$key") i=$(median "$WORK/ioswarm-$key")
    rc=$(median "$WORK/redis-$key.cpu") ic=$(median "$WORK/ioswarm-$key.cpu")
    echo "| $label | $r | $i | $(awk -v i="$i" -v r="$r" 'BEGIN {printf "%.2f", i / r}') | $rc | $ic |"
done
