#!/usr/bin/env bash
# One command for the benchmarks: runs each scenario against ioswarm, Node socket.io 4.8
# (bench/peers/node) and socketioxide (bench/peers/socketioxide) in the same run, and writes
# results.md (also printed), results.json and chart.png under bench/results/<UTC timestamp>/.
#
#   bench/run.sh                     # idle fanout rooms, full size
#   bench/run.sh fanout              # one scenario
#   bench/run.sh memory              # ioswarm under heaptrack: per-connection memory breakdown
#   SIZE=smoke bench/run.sh          # tiny (CI): shows the tooling works, no timing assertion
#
# It builds what it needs (release: ioswarm, ioswarm-bench, the socketioxide peer), installs the
# Node peer (npm ci) and matplotlib into bench/.venv, starts every server on 127.0.0.1:0 with its
# ready line, and stops each when its scenario ends. Exits non-zero only when the tooling fails:
# a server does not start, a scenario errors, or a traffic scenario delivers nothing at all.
#
# Environment (full / smoke defaults):
#   SIZE            full | smoke
#   SERVERS         "ioswarm node socketioxide" (spaces or commas; without node, npm is not needed)
#   WORKERS         load processes per scenario (2 / 2)
#   SOURCES         source addresses (127.0.0.2,…,127.0.0.5)
#   IDLE_CLIENTS    10000 / 50;   HOLD_SECS 30 / 2
#   IDLE_NODES      1: the idle scenario starts this many independent ioswarm processes and splits
#                   the clients evenly over them (one node holds at most ~19,900 connections under a
#                   20,000-descriptor limit); memory and CPU are summed over them. Peers stay single.
#                   Idle then uses max(WORKERS, IDLE_NODES) workers; keep each under 18,000 clients.
#   FANOUT_CLIENTS  5000 / 50;    FANOUT_RATES 10,100,1000 / 10,100;  FLAT_SECS 10 / 2
#   STEP_SECS       10 / 2 (per fanout and rooms step)
#   ROOMS_CLIENTS   5000 / 50;    ROOMS_GROUP 10;  ROOMS_RATES 1,5 / 1,5 (per client)
#   PAYLOAD_BYTES   64;  DRAIN_MAX_SECS 30 / 5;  DRAIN_QUIET_MS 5000 / 1000
#   REDIS_EMITTER   auto (also run fanout through ioswarm's Redis ingress when the binary has
#                   --redis-listen) | 0
#   SKIP_BUILD      set: use the binaries already built;  NO_CHART set: skip the PNG
#   CARGO_TARGET_DIR (target)
# Loopback only; every server it starts is stopped on exit. The load clients run on the same
# machine as the servers: on a small machine they compete for the same cores (see README.md).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SCENARIOS=${*:-idle fanout rooms}
SIZE=${SIZE:-full}
SERVERS=${SERVERS:-ioswarm node socketioxide}
SERVERS=${SERVERS//,/ } # commas or spaces
case $SIZE in
    smoke)
        d_idle=50 d_hold=2 d_fan=50 d_rates=10,100 d_flat=2 d_step=2 d_rooms=50 d_drain=5 d_quiet=1000 ;;
    full)
        d_idle=10000 d_hold=30 d_fan=5000 d_rates=10,100,1000 d_flat=10 d_step=10 d_rooms=5000 d_drain=30 d_quiet=5000 ;;
    *) echo "SIZE must be full or smoke" >&2; exit 2 ;;
esac
WORKERS=${WORKERS:-2}
SOURCES=${SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}
IDLE_CLIENTS=${IDLE_CLIENTS:-$d_idle}
IDLE_NODES=${IDLE_NODES:-1}
[[ $IDLE_NODES =~ ^[1-9][0-9]*$ ]] || { echo "IDLE_NODES must be a positive integer" >&2; exit 2; }
HOLD_SECS=${HOLD_SECS:-$d_hold}
FANOUT_CLIENTS=${FANOUT_CLIENTS:-$d_fan}
FANOUT_RATES=${FANOUT_RATES:-$d_rates}
FLAT_SECS=${FLAT_SECS:-$d_flat}
STEP_SECS=${STEP_SECS:-$d_step}
ROOMS_CLIENTS=${ROOMS_CLIENTS:-$d_rooms}
ROOMS_GROUP=${ROOMS_GROUP:-10}
ROOMS_RATES=${ROOMS_RATES:-1,5}
PAYLOAD_BYTES=${PAYLOAD_BYTES:-64}
DRAIN_MAX_SECS=${DRAIN_MAX_SECS:-$d_drain}
DRAIN_QUIET_MS=${DRAIN_QUIET_MS:-$d_quiet}
REDIS_EMITTER=${REDIS_EMITTER:-auto}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET_DIR
BIN_DIR=$TARGET_DIR/release
BENCH=$BIN_DIR/ioswarm-bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP
LOGS=$OUT/logs
VENV=$ROOT/bench/.venv
# Errors are reported as one line, without a backtrace.
export RUST_LIB_BACKTRACE=0 RUST_BACKTRACE=0
SERVER_PIDS=()
FAILED=()

log() { printf '[run] %s\n' "$*" >&2; }

# stop_server: stops every process in SERVER_PIDS (one per node).
stop_server() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "server $pid ignored SIGTERM for 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PIDS=()
}
trap stop_server EXIT
trap 'exit 130' INT TERM

mkdir -p "$LOGS"
# Every server and worker may use the hard limit of open files (the peers do not raise it
# themselves; 100,000 connections need it far above the usual soft limit of 1,024).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ -z "${SKIP_BUILD:-}" ]; then
    log "building ioswarm and ioswarm-bench (release)"
    # `--bin` selects targets across every -p package: name both binaries.
    cargo build --release -p ioswarm --bin ioswarm -p ioswarm-bench --bin ioswarm-bench
    if [[ " $SERVERS " == *" socketioxide "* ]]; then
        log "building the socketioxide peer (release)"
        (cd bench/peers/socketioxide && cargo build --release --locked)
    fi
    if [[ " $SERVERS " == *" node "* ]]; then
        log "installing the node peer"
        (cd bench/peers/node && npm ci --no-audit --no-fund --loglevel=error)
    fi
fi
[ -x "$BENCH" ] || { log "missing $BENCH"; exit 1; }
if [ -z "${NO_CHART:-}" ] && ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into bench/.venv"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/chart/requirements.txt
fi

HAS_REDIS=""
if [ "$REDIS_EMITTER" != 0 ] && "$BIN_DIR/ioswarm" --help 2>/dev/null | grep -q -- '--redis-listen'; then
    HAS_REDIS=1
fi

# start_server NAME SCENARIO [NODES]: starts NODES (default 1; ioswarm only) processes in the
# background; sets SERVER_PIDS, SERVER_ADDRS (comma-separated lists, one entry per node) and
# REDIS_ADDR (the first node's) from their ready lines (waits at most 30 s each).
start_server() {
    local name=$1 scenario=$2 nodes=${3:-1} node suffix
    SERVER_ADDRS="" REDIS_ADDR=""
    for ((node = 0; node < nodes; node++)); do
        suffix=""
        [ "$nodes" -gt 1 ] && suffix=-node$node
        start_one "$name" "$LOGS/$name-$scenario$suffix" || return 1
    done
}

# start_one NAME LOGBASE: starts one server process; appends to SERVER_PIDS and SERVER_ADDRS.
start_one() {
    local name=$1 out=$2.out err=$2.err pattern line pid addr
    case $name in
        ioswarm)
            local extra=()
            [ -n "$HAS_REDIS" ] && extra=(--redis-listen 127.0.0.1:0)
            "$BIN_DIR/ioswarm" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --client-rooms --client-relay \
                "${extra[@]}" >"$out" 2>"$err" &
            ;;
        node)
            node "$ROOT/bench/peers/node/server.mjs" --listen 127.0.0.1:0 >"$out" 2>"$err" &
            ;;
        socketioxide)
            "$BIN_DIR/socketioxide-peer" --listen 127.0.0.1:0 >"$out" 2>"$err" &
            ;;
        *) log "unknown server $name"; return 1 ;;
    esac
    pid=$!
    SERVER_PIDS+=("$pid")
    pattern=' ready socketio='
    for _ in $(seq 1 300); do
        if grep -q "$pattern" "$out" 2>/dev/null; then
            line=$(grep -m1 "$pattern" "$out")
            addr=$(sed -E 's/.*socketio=([^ ]+).*/\1/' <<<"$line")
            if [[ $line == *" redis="* ]] && [ -z "$REDIS_ADDR" ]; then
                REDIS_ADDR=$(sed -E 's/.* redis=([^ ]+).*/\1/' <<<"$line")
            fi
            SERVER_ADDRS+=${SERVER_ADDRS:+,}http://$addr
            log "$name ready at $addr (pid $pid)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited before its ready line; stderr:"
            tail -n 20 "$err" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "$name printed no ready line in 30 s"
    return 1
}

common_args() {
    local pids workers=$WORKERS
    pids=$(IFS=,; echo "${SERVER_PIDS[*]}")
    [ "${#SERVER_PIDS[@]}" -gt "$workers" ] && workers=${#SERVER_PIDS[@]}
    echo --target "$SERVER_ADDRS" --server-pid "$pids" --workers "$workers" --sources "$SOURCES"
}

# run_one SCENARIO SERVER LABEL [extra args…]: one scenario against the running server.
run_one() {
    local scenario=$1 server=$2 label=$3
    shift 3
    local json=$OUT/$scenario-$label.json
    local args=()
    case $scenario in
        idle)
            args=(idle --clients "$IDLE_CLIENTS" --room idle --hold-secs "$HOLD_SECS") ;;
        fanout)
            args=(fanout --clients "$FANOUT_CLIENTS" --rates "$FANOUT_RATES" --step-secs "$STEP_SECS"
                --flat-secs "$FLAT_SECS" --payload-bytes "$PAYLOAD_BYTES" --drain-max-secs "$DRAIN_MAX_SECS"
                --drain-quiet-ms "$DRAIN_QUIET_MS") ;;
        rooms)
            args=(rooms --clients "$ROOMS_CLIENTS" --group "$ROOMS_GROUP" --rates "$ROOMS_RATES"
                --step-secs "$STEP_SECS" --payload-bytes "$PAYLOAD_BYTES" --drain-max-secs "$DRAIN_MAX_SECS"
                --drain-quiet-ms "$DRAIN_QUIET_MS") ;;
    esac
    log "$scenario against $label"
    # shellcheck disable=SC2046
    if "$BENCH" "${args[@]}" --label "$label" $(common_args) --json-out "$json" "$@" \
        >"$LOGS/$scenario-$label.result" 2> >(tee "$LOGS/$scenario-$label.log" >&2); then
        FILES+=("$json")
    else
        log "$scenario against $label FAILED; the server's stderr ends with:"
        tail -n 10 "$LOGS/$server-$scenario"*.err >&2 || true
        FAILED+=("$scenario/$label")
    fi
}

# run_memory: one ioswarm process under heaptrack holds IDLE_CLIENTS idle clients; its heap at
# the peak is broken down into the parts of a connection (`ioswarm-bench memory`).
run_memory() {
    if ! command -v heaptrack >/dev/null || ! command -v heaptrack_print >/dev/null; then
        log "the memory scenario needs heaptrack and heaptrack_print (apt install heaptrack)"
        FAILED+=("memory (no heaptrack)")
        return
    fi
    local base=$LOGS/ioswarm-memory prof=$OUT/heaptrack-ioswarm ht pid="" addr="" file
    heaptrack -o "$prof" "$BIN_DIR/ioswarm" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --client-rooms \
        --client-relay >"$base.out" 2>"$base.err" &
    ht=$!
    for _ in $(seq 1 300); do
        grep -q ' ready socketio=' "$base.out" 2>/dev/null && break
        sleep 0.1
    done
    addr=$(grep -m1 ' ready socketio=' "$base.out" | sed -E 's/.*socketio=([^ ]+).*/\1/')
    pid=$(pgrep -P "$ht" -f "$BIN_DIR/ioswarm" | head -n1 || true)
    if [ -z "$addr" ] || [ -z "$pid" ]; then
        log "ioswarm under heaptrack did not start; see $base.err"
        kill -TERM "$ht" 2>/dev/null || true
        FAILED+=("memory (did not start)")
        return
    fi
    SERVER_PIDS=("$pid")
    log "ioswarm under heaptrack ready at $addr (pid $pid)"
    sleep 1
    if ! "$BENCH" idle --label ioswarm --target "http://$addr" --server-pid "$pid" --workers "$WORKERS" \
        --sources "$SOURCES" --clients "$IDLE_CLIENTS" --room idle --hold-secs 2 \
        --json-out "$OUT/memory-idle-ioswarm.json" >"$LOGS/memory-ioswarm.result" 2>"$LOGS/memory-ioswarm.log"; then
        FAILED+=("memory/idle")
    fi
    stop_server
    wait "$ht" 2>/dev/null || true
    file=$(ls "$prof".* 2>/dev/null | head -n1 || true)
    if [ -z "$file" ] || [ ! -f "$OUT/memory-idle-ioswarm.json" ]; then
        FAILED+=("memory (no profile)")
        return
    fi
    heaptrack_print -f "$file" -F "$OUT/heaptrack-peak-stacks.txt" --flamegraph-cost-type peak \
        -p 0 -a 0 -T 0 -l 0 >/dev/null
    if "$BENCH" memory --label ioswarm --stacks "$OUT/heaptrack-peak-stacks.txt" \
        --idle-json "$OUT/memory-idle-ioswarm.json" --json-out "$OUT/memory-ioswarm.json" >/dev/null; then
        FILES+=("$OUT/memory-ioswarm.json")
    else
        FAILED+=("memory (breakdown)")
    fi
}

FILES=()
for scenario in $SCENARIOS; do
    case $scenario in idle | fanout | rooms | memory) ;; *) log "unknown scenario $scenario"; exit 2 ;; esac
    if [ "$scenario" = memory ]; then
        run_memory
        continue
    fi
    for server in $SERVERS; do
        nodes=1
        [ "$scenario" = idle ] && [ "$server" = ioswarm ] && nodes=$IDLE_NODES
        if ! start_server "$server" "$scenario" "$nodes"; then
            FAILED+=("$scenario/$server (did not start)")
            stop_server
            continue
        fi
        sleep 1 # let start-up allocations settle before the "before" sample
        run_one "$scenario" "$server" "$server"
        if [ "$scenario" = fanout ] && [ "$server" = ioswarm ] && [ -n "$HAS_REDIS" ]; then
            if [ -n "$REDIS_ADDR" ]; then
                run_one fanout ioswarm ioswarm-redis --publisher redis-emitter --redis "$REDIS_ADDR" --room fanout-redis
            else
                log "ioswarm has --redis-listen but its ready line names no redis= address: skipping the emitter run"
            fi
        fi
        stop_server
    done
done

if [ "${#FILES[@]}" -eq 0 ]; then
    log "no run produced a result"
    exit 1
fi
TITLE="ioswarm benchmarks ($SIZE), $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores shared by the servers and the load clients; scenarios: $SCENARIOS"
echo
"$BENCH" report --title "$TITLE" --out "$OUT/results.json" --md "$OUT/results.md" "${FILES[@]}"
if [ -z "${NO_CHART:-}" ]; then
    if "$VENV/bin/python" bench/chart/chart.py "$OUT/results.json" "$OUT/chart.png"; then
        log "wrote $OUT/chart.png"
    else
        FAILED+=("chart")
    fi
fi
log "results in $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
    log "failed: ${FAILED[*]}"
    exit 1
fi
