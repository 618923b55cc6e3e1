#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/fuzz_targets for FUZZ_SECONDS (default 30) each.
# cargo-fuzz needs nightly flags (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain
# accept them. Extra arguments go to libFuzzer, e.g. `fuzz/run.sh -max_len=4096`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

seconds="${FUZZ_SECONDS:-30}"
status=0
for file in fuzz_targets/*.rs; do
    target="$(basename "$file" .rs)"
    # corpus/<target> (ignored by git) grows across runs; seeds/<target> (committed) holds
    # hand-written starting inputs and is only read.
    corpora=("corpus/${target}")
    mkdir -p "corpus/${target}"
    if [[ -d "seeds/${target}" ]]; then
        corpora+=("seeds/${target}")
    fi
    echo "==> fuzzing ${target} for ${seconds}s"
    if ! cargo fuzz run "$target" "${corpora[@]}" -- -max_total_time="$seconds" "$@"; then
        echo "!!! ${target} failed; see fuzz/artifacts/${target}/" >&2
        status=1
    fi
done
exit "$status"
