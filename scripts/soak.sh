#!/usr/bin/env bash
# The whole-system simulation (tests/sim.rs) over SEEDS seeds (default 10,000), in release
# mode, sharded over every core. The last line reads `N seeds, F failures`; each failing seed
# is printed with the command that replays it.
#
#   scripts/soak.sh [SEEDS] [START] [WORLD]
#
# WORLD: `fixed` (default: nodes with fixed accounts) or `healing` (every node can host any
# account: dead nodes' accounts move, nodes that come back take a share).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_INCREMENTAL=0

seeds=${1:-10000}
start=${2:-0}
world=${3:-fixed}
case $world in
fixed) test=seeds_keep_every_invariant ;;
healing) test=healing_seeds_keep_every_invariant ;;
*)
    echo "unknown world '$world': give fixed or healing (e.g. scripts/soak.sh 10000 0 healing)" >&2
    exit 2
    ;;
esac
jobs=$(nproc)
if ! [[ $seeds =~ ^[0-9]+$ && $start =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/soak.sh [SEEDS] [START]  (numbers of seeds, e.g. scripts/soak.sh 10000)" >&2
    exit 2
fi

# COHORT_SIM_BINARY: a test binary built already (a copy, say, while the tree changes).
binary=${COHORT_SIM_BINARY:-}
if [[ -z $binary ]]; then
    cargo test --release --test sim --no-run
    # The test's own executable: the JSON lists the `cohort` binary the tests use too.
    binary=$(cargo test --release --test sim --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\/deps\/sim-[^"]*\)".*/\1/p' | tail -1)
    if [[ -z $binary ]]; then
        echo "cannot find the simulation's test executable" >&2
        exit 1
    fi
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
began=$(date +%s)
per=$(((seeds + jobs - 1) / jobs))
pids=()
for ((j = 0; j < jobs; j++)); do
    from=$((start + j * per))
    count=$((seeds - j * per))
    ((count > per)) && count=$per
    ((count <= 0)) && break
    COHORT_SIM_START=$from COHORT_SIM_SEEDS=$count COHORT_SIM_THREADS=1 \
        "$binary" "$test" --exact --nocapture >"$logs/$j.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || true
done
elapsed=$(($(date +%s) - began))

grep -h -E '^(seed [0-9]+ failed|replay:)' "$logs"/*.log || true
ran=0
failed=0
for log in "$logs"/*.log; do
    line=$(grep -E '^[0-9]+ seeds, [0-9]+ failures$' "$log" || true)
    if [[ -z $line ]]; then
        echo "a shard did not finish: $(tail -5 "$log")" >&2
        failed=$((failed + 1))
        continue
    fi
    ran=$((ran + $(cut -d' ' -f1 <<<"$line")))
    failed=$((failed + $(cut -d' ' -f3 <<<"$line")))
done
echo "ran $world on $jobs cores in ${elapsed}s"
echo "$ran seeds, $failed failures"
((failed == 0))
