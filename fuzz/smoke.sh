#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 60) from the committed seeds
# in fuzz/seeds/<target>, two at a time. A crash, a panic, a timeout (FUZZ_TIMEOUT seconds for
# one input, default 20) or an allocation over libFuzzer's limit (2 GiB) fails the run; the
# input that did it is left in fuzz/artifacts/<target>/. New corpus entries go to a scratch
# directory, never into the seeds. Needs cargo-fuzz (`cargo install cargo-fuzz`). An exploratory
# campaign, run by hand whenever a parser changes; the test suite replays the committed seeds
# (tests/it/fuzz_replay.rs), and CI runs only that.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
timeout="${FUZZ_TIMEOUT:-20}"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

cargo fuzz build -s none
run_one() {
    local target=$1
    mkdir -p "$scratch/$target"
    if cargo fuzz run -s none "$target" "$scratch/$target" "seeds/$target" -- \
        -max_total_time="$2" -timeout="$3" -print_final_stats=1 \
        > "$scratch/$target.log" 2>&1; then
        echo "fuzz $target: ok, $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$') executions in $2 s"
    else
        echo "fuzz $target: FAILED"
        # The panic message sits above a long backtrace, so it is printed before the log's tail.
        grep -m 1 -A 1 "panicked at" "$scratch/$target.log" || true
        tail -n 60 "$scratch/$target.log"
        return 1
    fi
}
export -f run_one
export scratch
cargo fuzz list | xargs -P 2 -I{} bash -c 'run_one "$@"' _ {} "$seconds" "$timeout"
