#!/usr/bin/env bash
# Cluster benchmarks, one command: a 3-node ioswarm cluster on loopback against 3 Node socket.io
# 4.8 processes on @socket.io/redis-adapter and one redis-server, in the same run. Writes
# cluster.md (also printed) and cluster.json under bench/results/<UTC timestamp>/.
#
#   bench/run-cluster.sh                 # latency converge incr presence scale, full size
#   bench/run-cluster.sh latency         # some parts only (latency, converge, incr, presence, scale)
#   SIZE=smoke bench/run-cluster.sh      # tiny (CI, < 2 min once built): the tooling works
#
# Parts (bench/README.md, "Cluster" explains every figure):
#   latency   FANOUT_CLIENTS subscribers on node 2, one Redis emitter publishing at FANOUT_RATES:
#             into node 2's Redis port (ioswarm-same), into node 1's (ioswarm-cross: forwarded over
#             QUIC to node 2), subscribers spread over nodes 1-3 with the emitter on node 1
#             (ioswarm-spread, SPREAD=0 skips it), and the peer: subscribers on Node process 2,
#             emitter into redis-server (node-redis-adapter, PEER=0 skips it).
#   converge  CONVERGE_CLIENTS clients on node 2 join CONVERGE_ROOMS distinct rooms, then leave
#             them, CONVERGE_ROUNDS times; nodes 1 and 3 are polled (GET /cluster) every POLL_MS
#             until they hold node 2's new room count.
#   incr      INCR on one key for INCR_SECS: INCR_CONNS connections to each cluster node's Redis
#             port at once, then 3 × INCR_CONNS to redis-server (in memory), to redis-server with
#             appendonly yes + appendfsync always (the durable peer: fsync before it answers, as
#             the cluster does) and to a single ioswarm node (no cluster, local store); GET
#             afterwards must equal the INCRs answered.
#   presence  a fresh 3-node cluster with [[presence]] users:count; PRESENCE_CLIENTS idle
#             WebSocket clients connect, a third to each node; GET users:count is polled on every
#             node (every POLL_MS) until all three answer the number connected (time from the last
#             connect); then node 3 is killed with SIGKILL and the survivors are polled until its
#             clients left the count (time from the kill). Written to presence.md / .json.
#   scale     SCALE_CLIENTS WebSocket clients per node (SCALE_WORKERS worker processes per node,
#             SCALE_SOURCES), SCALE_ROOMS rooms with members on every node, SCALE_EMITTERS Redis
#             emitters (emitter e into node e mod 3) at SCALE_RATE msg/s each: one node alone
#             (single), then a fresh 3-node cluster where node 3 is killed (SIGKILL) after
#             SCALE_STEADY_SECS of load, then one where it gets SIGTERM with --drain-ms
#             SCALE_DRAIN_MS --drain-spread-ms SCALE_SPREAD_MS; its clients reconnect to the
#             survivors. Written to scale.md / scale.json / scale.png (clients per node over time).
#
# Environment (full / smoke defaults):
#   SIZE              full | smoke
#   FANOUT_CLIENTS    2000 / 50;  FANOUT_RATES 10,100;  STEP_SECS 10 / 2;  PAYLOAD_BYTES 64
#   DRAIN_MAX_SECS    15 / 5;     DRAIN_QUIET_MS 2000 / 1000;  WORKERS 2 (3 for the spread run)
#   SOURCES           127.0.0.2,…,127.0.0.5;  SPREAD 1;  PEER 1
#   CONVERGE_ROOMS    10000 / 1000;  CONVERGE_CLIENTS 10;  CONVERGE_BATCH 100;
#   CONVERGE_ROUNDS   5 / 2;   POLL_MS 2
#   INCR_SECS         5 / 2;   INCR_CONNS 16 / 4 (per cluster node);  INCR_PIPELINE 1
#   PRESENCE_CLIENTS  10000 / 300
#   SCALE_CLIENTS     12000 / 150 per node;  SCALE_WORKERS 2 / 1 per node;  SCALE_ROOMS 240 / 30
#   SCALE_EMITTERS    3;  SCALE_RATE 100 / 20 msg/s per emitter;  SCALE_STEADY_SECS 20 / 3
#   SCALE_AFTER_SECS  5 / 1;  SCALE_RECOVER_MAX_SECS 90 / 30;  SCALE_SOURCES 127.0.0.2,…,127.0.0.9
#   SCALE_DRAIN_MS    2000 / 300;  SCALE_SPREAD_MS 10000 / 700;  SCALE_GRACE_MS 30000 / 10000
#   SCALE_EVENTS      "kill term"
#   SKIP_BUILD        set: use the binaries already built (and the node peer already installed)
#   PROFILE           release | debug (debug: quick checks of the script only; figures meaningless)
#   CARGO_TARGET_DIR  (target)
# Needs node/npm, redis-server (Debian: redis-server). Loopback only; every process it starts is
# stopped on exit. Exits non-zero only when the tooling fails (a server did not start, a part
# errored, nothing was delivered, room interest did not converge within 60 s); no timing is
# asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PARTS=${*:-latency converge incr presence scale}
SIZE=${SIZE:-full}
case $SIZE in
    smoke)
        d_fan=50 d_step=2 d_drain=5 d_quiet=1000 d_cv_rooms=1000 d_cv_rounds=2 d_incr_secs=2 d_incr_conns=4
        d_presence=300 d_sc_clients=150 d_sc_workers=1 d_sc_rooms=30 d_sc_rate=20 d_sc_steady=3 d_sc_after=1
        d_sc_recover=30 d_sc_drain=300 d_sc_spread=700 d_sc_grace=10000 ;;
    full)
        d_fan=2000 d_step=10 d_drain=15 d_quiet=2000 d_cv_rooms=10000 d_cv_rounds=5 d_incr_secs=5 d_incr_conns=16
        d_presence=10000 d_sc_clients=12000 d_sc_workers=2 d_sc_rooms=240 d_sc_rate=100 d_sc_steady=20 d_sc_after=5
        d_sc_recover=90 d_sc_drain=2000 d_sc_spread=10000 d_sc_grace=30000 ;;
    *) echo "SIZE must be full or smoke" >&2; exit 2 ;;
esac
FANOUT_CLIENTS=${FANOUT_CLIENTS:-$d_fan}
FANOUT_RATES=${FANOUT_RATES:-10,100}
STEP_SECS=${STEP_SECS:-$d_step}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-64}
DRAIN_MAX_SECS=${DRAIN_MAX_SECS:-$d_drain}
DRAIN_QUIET_MS=${DRAIN_QUIET_MS:-$d_quiet}
WORKERS=${WORKERS:-2}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
SPREAD=${SPREAD:-1}
PEER=${PEER:-1}
CONVERGE_ROOMS=${CONVERGE_ROOMS:-$d_cv_rooms}
CONVERGE_CLIENTS=${CONVERGE_CLIENTS:-10}
CONVERGE_BATCH=${CONVERGE_BATCH:-100}
CONVERGE_ROUNDS=${CONVERGE_ROUNDS:-$d_cv_rounds}
POLL_MS=${POLL_MS:-2}
INCR_SECS=${INCR_SECS:-$d_incr_secs}
INCR_CONNS=${INCR_CONNS:-$d_incr_conns}
INCR_PIPELINE=${INCR_PIPELINE:-1}
PRESENCE_CLIENTS=${PRESENCE_CLIENTS:-$d_presence}
SCALE_CLIENTS=${SCALE_CLIENTS:-$d_sc_clients}
SCALE_WORKERS=${SCALE_WORKERS:-$d_sc_workers}
SCALE_ROOMS=${SCALE_ROOMS:-$d_sc_rooms}
SCALE_EMITTERS=${SCALE_EMITTERS:-3}
SCALE_RATE=${SCALE_RATE:-$d_sc_rate}
SCALE_STEADY_SECS=${SCALE_STEADY_SECS:-$d_sc_steady}
SCALE_AFTER_SECS=${SCALE_AFTER_SECS:-$d_sc_after}
SCALE_RECOVER_MAX_SECS=${SCALE_RECOVER_MAX_SECS:-$d_sc_recover}
SCALE_SOURCES=${SCALE_SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8,127.0.0.9}
SCALE_DRAIN_MS=${SCALE_DRAIN_MS:-$d_sc_drain}
SCALE_SPREAD_MS=${SCALE_SPREAD_MS:-$d_sc_spread}
SCALE_GRACE_MS=${SCALE_GRACE_MS:-$d_sc_grace}
SCALE_EVENTS=${SCALE_EVENTS:-kill term}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET_DIR
PROFILE=${PROFILE:-release}
case $PROFILE in release) build_flag=(--release) ;; debug) build_flag=() ;; *) echo "PROFILE must be release or debug" >&2; exit 2 ;; esac
IOSWARM=$TARGET_DIR/$PROFILE/ioswarm
BENCH=$TARGET_DIR/$PROFILE/ioswarm-bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP
LOGS=$OUT/logs
WORK=$(mktemp -d)
export RUST_LIB_BACKTRACE=0 RUST_BACKTRACE=0
PIDS=()     # every process started, stopped on exit
FILES=()    # result files for the report
FAILED=()

log() { printf '[run-cluster] %s\n' "$*" >&2; }

# stop PID…: SIGTERM, up to 10 s, then SIGKILL; removes them from PIDS.
stop() {
    local pid keep=() p
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "process $pid ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        [[ " $* " == *" $p "* ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}
cleanup() {
    [ "${#PIDS[@]}" -gt 0 ] && stop "${PIDS[@]}"
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for part in $PARTS; do
    case $part in latency | converge | incr | presence | scale) ;; *) log "unknown part $part"; exit 2 ;; esac
done
want() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$LOGS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# source_state: the commit, and whether src/ differs from it (the binary may hold others' edits).
source_state() {
    local commit
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit="$commit + uncommitted changes in src/"
    echo "$commit"
}
if [ -z "${SKIP_BUILD:-}" ]; then
    BUILT_FROM="built from $(source_state)"
    log "building ioswarm and ioswarm-bench ($PROFILE)"
    cargo build "${build_flag[@]}" -p ioswarm --bin ioswarm -p ioswarm-bench --bin ioswarm-bench
    if want latency && [ "$PEER" != 0 ]; then
        log "installing the node cluster peer"
        (cd bench/peers/node-cluster && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
for bin in "$IOSWARM" "$BENCH"; do [ -x "$bin" ] || { log "missing $bin"; exit 1; }; done
BUILT_FROM=${BUILT_FROM:-"prebuilt $(date -u -r "$IOSWARM" +%Y-%m-%dT%H:%MZ), HEAD now $(source_state)"}

# free_port: a TCP port free on 127.0.0.1 right now (for redis-server, which cannot take port 0).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_line FILE PATTERN PID NAME: waits (30 s) for PATTERN in FILE; prints the line.
wait_line() {
    local file=$1 pattern=$2 pid=$3 name=$4
    for _ in $(seq 1 300); do
        if grep -q "$pattern" "$file" 2>/dev/null; then
            grep -m1 "$pattern" "$file"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before its ready line; stderr:"
            tail -n 20 "${file%.out}.err" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "$name printed no ready line in 30 s"
    return 1
}

field() { sed -E "s/.* $1=([^ ]+).*/\\1/" <<<" $2"; }

# start_cluster [FLAG…]: nodes 1..3 (node 1 first, the others join it), each also given FLAGs.
# Sets N_PID N_SIO N_ADMIN N_REDIS (arrays indexed by node id) and LEADER.
start_cluster() {
    local n line join=() extra=("$@") dir
    # A fresh CA and data dirs each time: a node that left a cluster will not bootstrap another.
    CLUSTER_RUNS=$((${CLUSTER_RUNS:-0} + 1))
    dir=$WORK/cluster$CLUSTER_RUNS
    mkdir -p "$dir"
    "$IOSWARM" cluster init-ca --dir "$dir/ca" >/dev/null
    N_PID=() N_SIO=() N_ADMIN=() N_REDIS=()
    for n in 1 2 3; do
        "$IOSWARM" cluster issue --ca "$dir/ca" --node-id "$n" --out "$dir/cred$n" >/dev/null
        "$IOSWARM" --node-id "$n" --cluster-listen 127.0.0.1:0 --data-dir "$dir/data$n" \
            --cluster-credentials "$dir/cred$n" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
            --redis-listen 127.0.0.1:0 --client-rooms --client-relay "${join[@]}" "${extra[@]}" \
            >"$LOGS/ioswarm-run$CLUSTER_RUNS-node$n.out" 2>"$LOGS/ioswarm-run$CLUSTER_RUNS-node$n.err" &
        N_PID[n]=$!
        PIDS+=("${N_PID[n]}")
        line=$(wait_line "$LOGS/ioswarm-run$CLUSTER_RUNS-node$n.out" 'ioswarm ready' "${N_PID[n]}" "ioswarm node $n") || return 1
        N_SIO[n]=http://$(field socketio "$line")
        N_ADMIN[n]=$(field admin "$line")
        N_REDIS[n]=$(field redis "$line")
        [ "$n" = 1 ] && join=(--join "$(field cluster "$line")")
        log "ioswarm node $n ready (pid ${N_PID[n]}): ${N_SIO[n]} redis=${N_REDIS[n]} admin=${N_ADMIN[n]}"
    done
    line=$("$BENCH" cluster-wait --admin "${N_ADMIN[1]},${N_ADMIN[2]},${N_ADMIN[3]}" --timeout-secs 60) || return 1
    LEADER=$(field leader "$line")
    log "$line"
}

start_redis() {
    REDIS_PORT=$(free_port)
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        >"$LOGS/redis-server.out" 2>"$LOGS/redis-server.err" &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 1 100); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && { log "redis-server ready on $REDIS_PORT (pid $REDIS_PID)"; return 0; }
        kill -0 "$REDIS_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "redis-server did not start; see $LOGS/redis-server.err"
    return 1
}

# fanout LABEL TARGETS PIDS WORKERS REDIS ROOM NOTE: one fanout run, the emitter on REDIS.
fanout() {
    local label=$1 targets=$2 pids=$3 workers=$4 redis=$5 room=$6 note=$7
    log "latency: $label ($note)"
    if "$BENCH" fanout --label "$label" --note "$note" --target "$targets" --server-pid "$pids" \
        --workers "$workers" --sources "$SOURCES" --clients "$FANOUT_CLIENTS" --rates "$FANOUT_RATES" \
        --step-secs "$STEP_SECS" --flat-secs 0 --payload-bytes "$PAYLOAD_BYTES" \
        --drain-max-secs "$DRAIN_MAX_SECS" --drain-quiet-ms "$DRAIN_QUIET_MS" \
        --publisher redis-emitter --redis "$redis" --room "$room" --json-out "$OUT/fanout-$label.json" \
        >"$LOGS/fanout-$label.result" 2> >(tee "$LOGS/fanout-$label.log" >&2); then
        FILES+=("$OUT/fanout-$label.json")
    else
        FAILED+=("latency/$label")
    fi
}

# incr LABEL ADDRS NAMES CONNS PIDS NOTE
incr() {
    local label=$1 addrs=$2 names=$3 conns=$4 pids=$5 note=$6
    log "incr: $label ($note)"
    if "$BENCH" incr --label "$label" --note "$note" --redis "$addrs" --names "$names" --conns "$conns" \
        --pipeline "$INCR_PIPELINE" --secs "$INCR_SECS" --server-pid "$pids" --json-out "$OUT/incr-$label.json" \
        >"$LOGS/incr-$label.result" 2> >(tee "$LOGS/incr-$label.log" >&2); then
        FILES+=("$OUT/incr-$label.json")
    else
        FAILED+=("incr/$label")
    fi
}

spread_workers=$WORKERS
[ "$spread_workers" -lt 3 ] && spread_workers=3

if want latency || want converge || want incr; then
    if start_cluster; then
        pids="${N_PID[1]},${N_PID[2]},${N_PID[3]}"
        if want latency; then
            fanout ioswarm-same "${N_SIO[2]}" "$pids" "$WORKERS" "${N_REDIS[2]}" fanout-same \
                "3 nodes; subscribers on node 2; emitter into node 2"
            fanout ioswarm-cross "${N_SIO[2]}" "$pids" "$WORKERS" "${N_REDIS[1]}" fanout-cross \
                "3 nodes; subscribers on node 2; emitter into node 1 (forwarded to node 2)"
            if [ "$SPREAD" != 0 ]; then
                fanout ioswarm-spread "${N_SIO[1]},${N_SIO[2]},${N_SIO[3]}" "$pids" "$spread_workers" \
                    "${N_REDIS[1]}" fanout-spread "3 nodes; subscribers spread over nodes 1-3; emitter into node 1"
            fi
        fi
        if want converge; then
            log "converge: $CONVERGE_ROOMS rooms on node 2, watched from nodes 1 and 3"
            if "$BENCH" cluster-converge --label ioswarm --target "${N_SIO[2]}" --admin "${N_ADMIN[2]}" \
                --watch "${N_ADMIN[1]},${N_ADMIN[3]}" --clients "$CONVERGE_CLIENTS" --rooms "$CONVERGE_ROOMS" \
                --batch "$CONVERGE_BATCH" --rounds "$CONVERGE_ROUNDS" --poll-ms "$POLL_MS" \
                --json-out "$OUT/converge.json" \
                >"$LOGS/converge.result" 2> >(tee "$LOGS/converge.log" >&2); then
                FILES+=("$OUT/converge.json")
            else
                [ -f "$OUT/converge.json" ] && FILES+=("$OUT/converge.json")
                FAILED+=("converge")
            fi
        fi
        if want incr; then
            names="node1,node2,node3"
            names=${names/node$LEADER/node$LEADER (leader)}
            incr ioswarm-cluster "${N_REDIS[1]},${N_REDIS[2]},${N_REDIS[3]}" "$names" "$INCR_CONNS" "$pids" \
                "3 nodes, raft leader node $LEADER; $INCR_CONNS connections per node"
        fi
        stop "${N_PID[1]}" "${N_PID[2]}" "${N_PID[3]}"
    else
        FAILED+=("cluster (did not start)")
        [ "${#PIDS[@]}" -gt 0 ] && stop "${PIDS[@]}"
    fi
fi

if (want latency && [ "$PEER" != 0 ]) || want incr; then
    start_redis || FAILED+=("redis-server (did not start)")
fi

if want latency && [ "$PEER" != 0 ] && [ -n "${REDIS_PID:-}" ]; then
    P_PID=() P_SIO=()
    ok=1
    for n in 1 2 3; do
        node "$ROOT/bench/peers/node-cluster/server.mjs" --listen 127.0.0.1:0 --redis "127.0.0.1:$REDIS_PORT" \
            >"$LOGS/node-cluster$n.out" 2>"$LOGS/node-cluster$n.err" &
        P_PID[n]=$!
        PIDS+=("${P_PID[n]}")
        if line=$(wait_line "$LOGS/node-cluster$n.out" 'node-cluster-peer ready' "${P_PID[n]}" "node peer $n"); then
            P_SIO[n]=http://$(field socketio "$line")
            log "node peer $n ready (pid ${P_PID[n]}): ${P_SIO[n]}"
        else
            ok=""
        fi
    done
    if [ -n "$ok" ]; then
        fanout node-redis-adapter "${P_SIO[2]}" "${P_PID[1]},${P_PID[2]},${P_PID[3]},$REDIS_PID" "$WORKERS" \
            "127.0.0.1:$REDIS_PORT" fanout-peer \
            "3 Node processes on @socket.io/redis-adapter; subscribers on process 2; emitter into redis-server"
    else
        FAILED+=("latency/node-redis-adapter (did not start)")
    fi
    stop "${P_PID[@]}"
fi

if want incr; then
    redis_version=$(redis-server --version | sed -E 's/.*v=([^ ]+).*/\1/')
    if [ -n "${REDIS_PID:-}" ]; then
        incr redis-server "127.0.0.1:$REDIS_PORT" redis-server "$((3 * INCR_CONNS))" "$REDIS_PID" \
            "redis-server $redis_version, no persistence; $((3 * INCR_CONNS)) connections"
    fi
    # The durable peer: every write in the append-only file, fsync'd before the reply (one
    # fdatasync per event-loop turn, shared by the writes of that turn).
    AOF_PORT=$(free_port)
    mkdir -p "$WORK/redis-aof"
    redis-server --bind 127.0.0.1 --port "$AOF_PORT" --save "" --appendonly yes --appendfsync always \
        --dir "$WORK/redis-aof" >"$LOGS/redis-server-aof.out" 2>"$LOGS/redis-server-aof.err" &
    aof=$!
    PIDS+=("$aof")
    for _ in $(seq 1 100); do
        redis-cli -p "$AOF_PORT" ping >/dev/null 2>&1 && break
        kill -0 "$aof" 2>/dev/null || break
        sleep 0.1
    done
    if redis-cli -p "$AOF_PORT" ping >/dev/null 2>&1; then
        incr redis-server-fsync "127.0.0.1:$AOF_PORT" redis-server-fsync "$((3 * INCR_CONNS))" "$aof" \
            "redis-server $redis_version, appendonly yes, appendfsync always; $((3 * INCR_CONNS)) connections"
    else
        FAILED+=("incr/redis-server-fsync (did not start; see $LOGS/redis-server-aof.err)")
    fi
    stop "$aof"
    "$IOSWARM" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --redis-listen 127.0.0.1:0 \
        >"$LOGS/ioswarm-single.out" 2>"$LOGS/ioswarm-single.err" &
    single=$!
    PIDS+=("$single")
    if line=$(wait_line "$LOGS/ioswarm-single.out" 'ioswarm ready' "$single" "ioswarm (single)"); then
        incr ioswarm-single "$(field redis "$line")" ioswarm-single "$((3 * INCR_CONNS))" "$single" \
            "one ioswarm node, no cluster (local store); $((3 * INCR_CONNS)) connections"
    else
        FAILED+=("incr/ioswarm-single (did not start)")
    fi
    stop "$single"
fi
[ -n "${REDIS_PID:-}" ] && stop "$REDIS_PID"

# now_ms: wall clock in milliseconds.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# users_count HOST:PORT: GET users:count on that Redis port ("" when it does not answer).
users_count() { redis-cli -h "${1%:*}" -p "${1##*:}" --raw GET users:count 2>/dev/null || true; }

# wait_count WANT TIMEOUT_S NODE…: polls until every NODE's users:count is WANT; prints the time.
wait_count() {
    local want=$1 limit=$(($(now_ms) + $2 * 1000)) n ok
    shift 2
    while [ "$(now_ms)" -lt "$limit" ]; do
        ok=1
        for n in "$@"; do [ "$(users_count "${N_REDIS[n]}")" = "$want" ] || { ok=""; break; }; done
        [ -n "$ok" ] && { now_ms; return 0; }
        sleep "$(awk "BEGIN { print $POLL_MS / 1000 }")"
    done
    return 1
}

if want presence; then
    PCONF=$WORK/presence.toml
    printf '[[presence]]\nkey = "users:count"\nevent = "users:count"\n' >"$PCONF"
    if start_cluster --config "$PCONF"; then
        log "presence: $PRESENCE_CLIENTS clients, a third on each node"
        mkfifo "$WORK/hold"
        exec 9<>"$WORK/hold"
        W_PID=()
        per=$((PRESENCE_CLIENTS / 3))
        for n in 1 2 3; do
            "$BENCH" worker --worker-id "$n" --target "${N_SIO[n]}" --clients "$per" --first-index $(((n - 1) * per)) \
                --sources "$SOURCES" --role idle --max-hold-secs 300 <"$WORK/hold" >"$LOGS/presence-worker$n.out" \
                2>"$LOGS/presence-worker$n.err" &
            W_PID[n]=$!
            PIDS+=("${W_PID[n]}")
        done
        started=$(now_ms)
        connected=0 last_connect=""
        for _ in $(seq 1 1200); do
            done_workers=$({ grep -l '"type":"connected"' "$LOGS"/presence-worker{1,2,3}.out 2>/dev/null || true; } | wc -l)
            [ "$done_workers" = 3 ] && { last_connect=$(now_ms); break; }
            sleep 0.05
        done
        if [ -n "$last_connect" ]; then
            connected=0
            for n in 1 2 3; do
                ok=$(grep -m1 '"type":"connected"' "$LOGS/presence-worker$n.out" | sed -E 's/.*"ok":([0-9]+).*/\1/')
                P_OK[n]=$ok
                connected=$((connected + ok))
            done
            log "presence: $connected clients connected in $((last_connect - started)) ms"
            if converged=$(wait_count "$connected" 60 1 2 3); then
                conv_ms=$((converged - last_connect))
                log "presence: every node says $connected after $conv_ms ms"
                kill -KILL "${N_PID[3]}" 2>/dev/null || true
                killed=$(now_ms)
                if gone=$(wait_count $((connected - P_OK[3])) 60 1 2); then
                    kill_ms=$((gone - killed))
                    log "presence: node 3's ${P_OK[3]} clients left the count after $kill_ms ms"
                    cat >"$OUT/presence.json" <<JSON
{"clients":$connected,"connect_ms":$((last_connect - started)),"converge_ms":$conv_ms,"killed_node_clients":${P_OK[3]},"after_kill_ms":$kill_ms}
JSON
                    cat >"$OUT/presence.md" <<MD
## Presence (users:count on 3 nodes)

| clients | connect time | all 3 nodes agree after the last connect | killed node's clients out of the count after SIGKILL |
|---|---|---|---|
| $connected (a third per node) | $((last_connect - started)) ms | $conv_ms ms | ${P_OK[3]} clients, $kill_ms ms (failure detector: dead after 3 s) |
MD
                else
                    FAILED+=("presence (survivors never dropped node 3's clients)")
                fi
            else
                FAILED+=("presence (nodes never agreed on $connected)")
            fi
        else
            FAILED+=("presence (workers did not report connected)")
        fi
        exec 9>&-
        stop "${W_PID[@]}"
        stop "${N_PID[1]}" "${N_PID[2]}"
        kill -0 "${N_PID[3]}" 2>/dev/null && stop "${N_PID[3]}"
    else
        FAILED+=("presence cluster (did not start)")
        [ "${#PIDS[@]}" -gt 0 ] && stop "${PIDS[@]}"
    fi
fi

if want scale; then
    # shellcheck source=bench/scale-part.sh
    source "$ROOT/bench/scale-part.sh"
    scale_part
fi

if [ "${#FILES[@]}" -eq 0 ] && ! [ -f "$OUT/presence.md" ] && ! [ -f "$OUT/scale.md" ]; then
    log "no part produced a result"
    exit 1
fi
TITLE="ioswarm cluster benchmarks ($SIZE), $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores shared by every server and the load clients; ioswarm $BUILT_FROM; load average before: $LOAD_BEFORE"
echo
if [ "${#FILES[@]}" -gt 0 ]; then
    "$BENCH" cluster-report --title "$TITLE" --out "$OUT/cluster.json" --md "$OUT/cluster.md" "${FILES[@]}"
fi
if [ -f "$OUT/presence.md" ]; then
    { echo; cat "$OUT/presence.md"; } | tee -a "$OUT/cluster.md"
fi
if [ -f "$OUT/scale.md" ]; then
    { echo; cat "$OUT/scale.md"; } | tee -a "$OUT/cluster.md"
fi
log "results in $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
    log "failed: ${FAILED[*]}"
    exit 1
fi
