#!/usr/bin/env bash
# Runs the libFuzzer harness for a bounded time: writes the seed corpus, then
# fuzzes from it (new inputs go to a scratch corpus under WORKDIR).  Fails
# on any crash, leak, sanitizer report or timeout the fuzzer finds.
#
# usage: run_fuzz.sh FUZZ_BIN SEEDS_BIN WORKDIR SECONDS
set -euo pipefail
FUZZ=$1
SEEDS=$2
WORK=$3
SECONDS_=$4
rm -rf "$WORK"
mkdir -p "$WORK/seeds" "$WORK/corpus" "$WORK/artifacts"
"$SEEDS" "$WORK/seeds"
[ "$(ls "$WORK/seeds" | wc -l)" -ge 30 ] || { echo "FAIL: too few seeds"; exit 1; }
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "$FUZZ" -max_total_time="$SECONDS_" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$WORK/artifacts/" "$WORK/corpus" "$WORK/seeds" 2>&1 |
    tail -n 25
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ] || [ -n "$(ls "$WORK/artifacts")" ]; then
    echo "FAIL: the fuzzer found a problem (exit $status); inputs in $WORK/artifacts"
    exit 1
fi
echo "ok fuzzed for $SECONDS_ s"
