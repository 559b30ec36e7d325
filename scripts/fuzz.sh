#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60) on the nightly toolchain, one
# after the other, and prints per target how long it ran, how many inputs it tried and whether
# it found anything. Installs what it needs when missing: the nightly toolchain (rustup) and
# cargo-fuzz (into ~/.cargo). New inputs go to fuzz/corpus/<target>/, crashes to
# fuzz/artifacts/<target>/ (see fuzz/README.md to replay and shrink one).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Exit status: 0 when no target found anything, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]  (SECONDS a positive integer)" >&2
    exit 2
fi

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "==> installing the nightly toolchain (cargo fuzz needs it)"
    rustup toolchain install nightly --profile minimal || exit 2
fi
if ! cargo fuzz --version > /dev/null 2>&1; then
    echo "==> installing cargo-fuzz into ~/.cargo"
    cargo install cargo-fuzz || exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

log_dir="fuzz/logs"
mkdir -p "$log_dir"
# Built first, so that each target's time is fuzzing only.
echo "==> building the targets"
if ! cargo +nightly fuzz build --fuzz-dir fuzz --sanitizer none --debug-assertions \
    > "$log_dir/build.log" 2>&1; then
    tail -30 "$log_dir/build.log" >&2
    exit 2
fi
results=()
found=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    before=$(find "fuzz/artifacts/$target" -type f | wc -l)
    log="$log_dir/$target.log"
    echo "==> $target for ${seconds}s (log: $log)"
    start=$(date +%s)
    # Debug assertions on, so that an arithmetic overflow is a finding; the code under test is
    # safe Rust, so AddressSanitizer would only slow it down.
    cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer none --debug-assertions "$target" \
        "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- -max_total_time="$seconds" -print_final_stats=1 > "$log" 2>&1
    status=$?
    elapsed=$(( $(date +%s) - start ))
    after=$(find "fuzz/artifacts/$target" -type f | wc -l)
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]*')
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    if [ "$status" -eq 0 ] && [ "$after" -eq "$before" ]; then
        verdict="nothing found"
    else
        verdict="FOUND SOMETHING (exit $status; new artifacts: $((after - before)) in fuzz/artifacts/$target)"
        found=1
        tail -30 "$log" >&2
    fi
    results+=("$target: ran ${elapsed}s, ${runs:-?} inputs, corpus $corpus, $verdict")
done

echo
echo "==> summary (${seconds}s per target)"
for line in "${results[@]}"; do
    echo "$line"
done
exit "$found"
