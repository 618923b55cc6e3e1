#!/usr/bin/env bash
# Endurance: churn on a 3-node ioswarm cluster for SOAK_MINUTES, one node restarted every
# SOAK_RESTART_SECS, every node sampled every SOAK_SAMPLE_SECS (RSS, open descriptors, threads,
# CPU, data dir size, its /metrics gauges). Writes soak.md (also printed), soak.json and soak.png
# under bench/results/<UTC timestamp>/; the report says, per node and series, whether it grows
# (a least-squares line over the second half of the run).
#
#   bench/soak.sh                        # 30 minutes
#   SOAK_MINUTES=10 bench/soak.sh
#   SIZE=smoke bench/soak.sh             # ~1.5 minutes, small: the tooling works
#
# Environment (full / smoke defaults):
#   SOAK_MINUTES        30 / 1.5;  SOAK_RESTART_SECS 600 / 25 (0: never);  SOAK_SAMPLE_SECS 10 / 3
#   SOAK_CLIENTS        1500 / 60 long-lived clients (a third per node; they reconnect elsewhere)
#   SOAK_ROOMS          60 / 6;   SOAK_EMITTERS 3;  SOAK_EMIT_RATE 20 / 5 msg/s per emitter
#   SOAK_CHURN          50 / 6 clients connecting, joining, relaying, leaving, disconnecting in a loop
#   SOAK_KV_RATE        50 / 10 writes/s (SET, INCR, PEXPIRE, DEL);  SOAK_KV_KEYS 1000 / 50
#   SOAK_SOURCES        127.0.0.2,…,127.0.0.5
#   SKIP_BUILD          set: use the binaries already built;  NO_CHART: skip the PNG
#   CARGO_TARGET_DIR    (target)
# Loopback only; every process it starts is stopped on exit. Exits non-zero only when the tooling
# fails (a node did not start, no sample was taken, the chart failed): growth is reported, not
# asserted.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SIZE=${SIZE:-full}
case $SIZE in
    smoke) d_min=1.5 d_restart=25 d_sample=3 d_clients=60 d_rooms=6 d_rate=5 d_churn=6 d_kv=10 d_keys=50 ;;
    full) d_min=30 d_restart=600 d_sample=10 d_clients=1500 d_rooms=60 d_rate=20 d_churn=50 d_kv=50 d_keys=1000 ;;
    *) echo "SIZE must be full or smoke" >&2; exit 2 ;;
esac
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TARGET_DIR=$TARGET_DIR
IOSWARM=$TARGET_DIR/release/ioswarm
BENCH=$TARGET_DIR/release/ioswarm-bench
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/bench/results/$STAMP
VENV=$ROOT/bench/.venv
WORK=$(mktemp -d)
export RUST_LIB_BACKTRACE=0 RUST_BACKTRACE=0
trap 'rm -rf "$WORK"' EXIT

log() { printf '[soak] %s\n' "$*" >&2; }

mkdir -p "$OUT/logs"
if [ -z "${SKIP_BUILD:-}" ]; then
    log "building ioswarm and ioswarm-bench (release)"
    cargo build --release -p ioswarm --bin ioswarm -p ioswarm-bench --bin ioswarm-bench
fi
for bin in "$IOSWARM" "$BENCH"; do [ -x "$bin" ] || { log "missing $bin"; exit 1; }; done
if [ -z "${NO_CHART:-}" ] && ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    log "installing matplotlib into bench/.venv"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r bench/chart/requirements.txt
fi

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || commit="$commit + uncommitted changes in src/"
TITLE="ioswarm soak ($SIZE), $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores shared by the nodes and the load; ioswarm built from $commit; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$BENCH" soak --ioswarm "$IOSWARM" --dir "$WORK" --logs "$OUT/logs" --title "$TITLE" \
    --minutes "${SOAK_MINUTES:-$d_min}" --restart-every-secs "${SOAK_RESTART_SECS:-$d_restart}" \
    --sample-secs "${SOAK_SAMPLE_SECS:-$d_sample}" --clients "${SOAK_CLIENTS:-$d_clients}" \
    --rooms "${SOAK_ROOMS:-$d_rooms}" --emitters "${SOAK_EMITTERS:-3}" --emit-rate "${SOAK_EMIT_RATE:-$d_rate}" \
    --churn "${SOAK_CHURN:-$d_churn}" --kv-rate "${SOAK_KV_RATE:-$d_kv}" --kv-keys "${SOAK_KV_KEYS:-$d_keys}" \
    --sources "${SOAK_SOURCES:-127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5}" \
    --json-out "$OUT/soak.json" --md-out "$OUT/soak.md" 2> >(tee "$OUT/logs/soak.log" >&2)
if [ -z "${NO_CHART:-}" ]; then
    "$VENV/bin/python" bench/chart/soak.py "$OUT/soak.json" "$OUT/soak.png"
    log "wrote $OUT/soak.png"
fi
log "results in $OUT"
