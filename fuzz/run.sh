#!/usr/bin/env bash
# Runs cargo-fuzz targets for FUZZ_SECONDS each and prints, per target, the executions, the
# corpus size and whether it crashed (a Markdown table at the end, also written to
# fuzz/last-run.md).
#
#   fuzz/run.sh                                   # every target in fuzz_targets/, 30 s each
#   FUZZ_SECONDS=600 fuzz/run.sh                  # 10 minutes each
#   FUZZ_TARGETS="resp_frame emitter_payload" FUZZ_SECONDS=60 fuzz/run.sh
#   fuzz/run.sh -max_len=4096                     # extra arguments go to libFuzzer
#
# cargo-fuzz needs nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. corpus/<target> (ignored by git) grows across runs; seeds/<target> (committed)
# holds hand-written starting inputs and is only read. A crash leaves its input in
# artifacts/<target>/ (reproduce: `cargo fuzz run TARGET artifacts/TARGET/crash-…`) and makes
# the script exit non-zero; turn it into a regression test next to the decoder.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-30}"
if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    targets=()
    for file in fuzz_targets/*.rs; do targets+=("$(basename "$file" .rs)"); done
fi
for target in "${targets[@]}"; do
    [[ -f "fuzz_targets/${target}.rs" ]] || { echo "no fuzz target ${target}" >&2; exit 2; }
done

# Build every target first, so that the seconds below are all fuzzing.
for target in "${targets[@]}"; do
    cargo fuzz build "$target"
done

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
status=0
rows=()
for target in "${targets[@]}"; do
    corpora=("corpus/${target}")
    mkdir -p "corpus/${target}"
    if [[ -d "seeds/${target}" ]]; then
        corpora+=("seeds/${target}")
    fi
    before=$(find "corpus/${target}" -type f | wc -l)
    echo "==> fuzzing ${target} for ${seconds}s"
    result=ok
    if ! cargo fuzz run "$target" "${corpora[@]}" -- -max_total_time="$seconds" -print_final_stats=1 "$@" \
        2> >(tee "$logs/$target.log" >&2); then
        echo "!!! ${target} failed; see fuzz/artifacts/${target}/" >&2
        result="**crashed** (fuzz/artifacts/${target}/)"
        status=1
    fi
    # libFuzzer's final stats: stat::number_of_executed_units, stat::average_exec_per_sec.
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$logs/$target.log" | tail -1)
    rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$logs/$target.log" | tail -1)
    files=$(find "corpus/${target}" -type f | wc -l)
    bytes=$(find "corpus/${target}" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    rows+=("| ${target} | ${seconds} | ${execs:-?} | ${rate:-?} | ${files} (+$((files - before))) | ${bytes} | ${result} |")
done

{
    echo "Fuzzing, $(date -u +%Y-%m-%dT%H:%MZ), ${seconds} s per target (\`FUZZ_SECONDS=${seconds} fuzz/run.sh\`)"
    echo
    echo "| target | seconds | executions | exec/s | corpus files (new) | corpus bytes | result |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
} | tee last-run.md
exit "$status"
