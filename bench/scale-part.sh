# The `scale` part of bench/run-cluster.sh (sourced by it: uses its start_cluster, stop,
# wait_line, field, log, PIDS, FAILED, OUT, LOGS, WORK, IOSWARM, BENCH and the SCALE_* knobs).
#
# Runs, each on fresh processes: `single` (one node, SCALE_CLIENTS clients), then for each of
# SCALE_EVENTS a 3-node cluster with SCALE_CLIENTS clients per node where node 3 is killed
# (`kill`, SIGKILL) or stopped (`term`, SIGTERM with the drain settings) after the steady phase.
# Writes scale-<run>.json, scale.md, scale.json and scale.png (clients per node over time).

# scale_run LABEL EVENT TARGETS REDIS ADMIN PIDS NOTE
scale_run() {
    local label=$1 event=$2 targets=$3 redis=$4 admin=$5 pids=$6 note=$7
    log "scale: $label ($note)"
    if "$BENCH" scale --label "$label" --note "$note" --event "$event" --target "$targets" --redis "$redis" \
        --admin "$admin" --server-pid "$pids" --clients-per-node "$SCALE_CLIENTS" \
        --workers-per-node "$SCALE_WORKERS" --sources "$SCALE_SOURCES" --rooms "$SCALE_ROOMS" \
        --emitters "$SCALE_EMITTERS" --emit-rate "$SCALE_RATE" --payload-bytes "$PAYLOAD_BYTES" \
        --steady-secs "$SCALE_STEADY_SECS" --after-secs "$SCALE_AFTER_SECS" \
        --recover-max-secs "$SCALE_RECOVER_MAX_SECS" --drain-max-secs "$DRAIN_MAX_SECS" \
        --drain-quiet-ms "$DRAIN_QUIET_MS" --json-out "$OUT/scale-$label.json" \
        >"$LOGS/scale-$label.result" 2> >(tee "$LOGS/scale-$label.log" >&2); then
        SCALE_FILES+=("$OUT/scale-$label.json")
    else
        FAILED+=("scale/$label")
    fi
}

scale_part() {
    local line pid event extra title note
    SCALE_FILES=()
    if [ -z "${NO_CHART:-}" ] && ! "$ROOT/bench/.venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
        log "installing matplotlib into bench/.venv"
        python3 -m venv "$ROOT/bench/.venv"
        "$ROOT/bench/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$ROOT/bench/chart/requirements.txt"
    fi

    "$IOSWARM" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --redis-listen 127.0.0.1:0 --client-rooms \
        >"$LOGS/ioswarm-scale-single.out" 2>"$LOGS/ioswarm-scale-single.err" &
    pid=$!
    PIDS+=("$pid")
    if line=$(wait_line "$LOGS/ioswarm-scale-single.out" 'ioswarm ready' "$pid" "ioswarm (single)"); then
        scale_run single none "http://$(field socketio "$line")" "$(field redis "$line")" "$(field admin "$line")" \
            "$pid" "one ioswarm node, no cluster; every emitter publishes into it"
    else
        FAILED+=("scale/single (did not start)")
    fi
    stop "$pid"

    for event in $SCALE_EVENTS; do
        extra=()
        case $event in
            kill) note="3 nodes; node 3 killed with SIGKILL after ${SCALE_STEADY_SECS} s" ;;
            term)
                extra=(--drain-ms "$SCALE_DRAIN_MS" --drain-spread-ms "$SCALE_SPREAD_MS" --shutdown-grace-ms "$SCALE_GRACE_MS")
                note="3 nodes with --drain-ms $SCALE_DRAIN_MS --drain-spread-ms $SCALE_SPREAD_MS --shutdown-grace-ms $SCALE_GRACE_MS; node 3 gets SIGTERM after ${SCALE_STEADY_SECS} s" ;;
            *) log "SCALE_EVENTS: unknown event $event (kill, term)"; FAILED+=("scale/$event"); continue ;;
        esac
        if start_cluster "${extra[@]}"; then
            scale_run "cluster-$event" "$event" "${N_SIO[1]},${N_SIO[2]},${N_SIO[3]}" \
                "${N_REDIS[1]},${N_REDIS[2]},${N_REDIS[3]}" "${N_ADMIN[1]},${N_ADMIN[2]},${N_ADMIN[3]}" \
                "${N_PID[1]},${N_PID[2]},${N_PID[3]}" "$note; raft leader node $LEADER"
            stop "${N_PID[1]}" "${N_PID[2]}" "${N_PID[3]}"
        else
            FAILED+=("scale/cluster-$event (cluster did not start)")
            [ "${#PIDS[@]}" -gt 0 ] && stop "${PIDS[@]}"
        fi
    done

    [ "${#SCALE_FILES[@]}" -gt 0 ] || return 0
    title="ioswarm at scale ($SIZE), $(date -u +%Y-%m-%dT%H:%MZ); $(nproc) cores shared by every node and the load clients; ioswarm $BUILT_FROM; load average before: $LOAD_BEFORE"
    echo
    if "$BENCH" scale-report --title "$title" --out "$OUT/scale.json" --md "$OUT/scale.md" "${SCALE_FILES[@]}" \
        >/dev/null; then
        if [ -z "${NO_CHART:-}" ]; then
            if "$ROOT/bench/.venv/bin/python" "$ROOT/bench/chart/scale.py" "$OUT/scale.json" "$OUT/scale.png"; then
                log "wrote $OUT/scale.png"
            else
                FAILED+=("scale chart")
            fi
        fi
    else
        FAILED+=("scale report")
    fi
}
