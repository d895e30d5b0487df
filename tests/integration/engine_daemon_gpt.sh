#!/usr/bin/env bash
# GPT equivalence through real daemons: a coordinator and 2 nodes of 2 CPU
# devices each on loopback train a small byte-level GPT (embedding, two
# transformer blocks, layernorm, vocab head) on a real text file for 4
# steps on the grids (pp, tp, dp) = (1,2,1), (2,2,1), (1,1,2), (2,1,1),
# (4,1,1) under gpipe and 1f1b with 1, 2 and 4 micro-batches, one grid
# with AdamW, zero_bubble (the blocks' B and W halves apart; SGD on tp 2,
# AdamW on dp 2; and with parallel.fuse_w 3 and 2: the W's of several
# micro-batches as one GEMM per weight) and interleaved_1f1b (2 chunks a stage: the 5 layers cut
# into 4 chunks, stage 0 holding chunks 0 and 2; SGD on tp 2, AdamW on
# dp 2).  Every run's gathered weights must equal
# `mpar-client run --serial` per tensor within 1e-5 relative for SGD with
# momentum (1e-3 for AdamW), with the same loss curve.
#
# usage: engine_daemon_gpt.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-engine-gpt.XXXXXX)
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"

start_coord
export MPAR_SOCKET="$T/c0.sock"
start_node n1 cpu:2
start_node n2 cpu:2
wait_alive 2

run_case() { # name pp tp dp m schedule optimizer tol
    local name=$1 pp=$2 tp=$3 dp=$4 m=$5 sched=$6 opt=$7 tol=$8
    gpt_spec "$T/$name.json" "$name" "$pp" "$tp" "$dp" "$m" "$sched" "$opt"
    "$CLIENT" run "$T/$name.json" --serial --save-weights "$T/$name.ref" -o json \
        >"$T/$name.serial.json" 2>"$T/$name.serial.err" ||
        fail "$name: serial run: $(cat "$T/$name.serial.err")"
    set +e
    timeout 150 "$CLIENT" submit "$T/$name.json" -f -o json --save-weights "$T/$name.got" \
        >"$T/$name.job.json" 2>"$T/$name.progress"
    local rc=$?
    set -e
    [ $rc = 0 ] || fail "$name: submit -f exit $rc: $(tail -5 "$T/$name.progress")"
    jget 'd["state"]' <"$T/$name.job.json" | grep -q SUCCEEDED || fail "$name: not SUCCEEDED"
    local cmp
    cmp=$(compare "$T/$name.ref" "$T/$name.got" "$tol") || fail "$name: weights: $cmp"
    losses "$T/$name.job.json" "$T/$name.serial.json" "$tol" || fail "$name: losses"
    echo "ok $name: pp $pp tp $tp dp $dp m $m $sched $opt: $cmp"
}

run_case t121 1 2 1 1 gpipe sgd 1e-5
run_case t221 2 2 1 2 1f1b sgd 1e-5
run_case t112 1 1 2 1 gpipe sgd 1e-5
run_case t211 2 1 1 4 gpipe sgd 1e-5
run_case t411 4 1 1 4 1f1b sgd 1e-5
run_case a221 2 2 1 2 1f1b adamw 1e-3
run_case z221 2 2 1 4 zero_bubble sgd 1e-5
run_case z212 2 1 2 2 zero_bubble adamw 1e-3
run_case f221 2 2 1 4 zero_bubble/3 sgd 1e-5
run_case f212 2 1 2 2 zero_bubble/2 adamw 1e-3
run_case i221 2 2 1 2 interleaved_1f1b:2 sgd 1e-5
run_case i212 2 1 2 2 interleaved_1f1b:2 adamw 1e-3

stop_daemons "$PID_n1" "$PID_n2" "$PID_c0"
echo "PASS"
