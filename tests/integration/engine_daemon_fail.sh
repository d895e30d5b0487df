#!/usr/bin/env bash
# Failure and cancel of jobs on a cluster of mpard daemons: a coordinator
# and 3 nodes of 2 CPU devices each on loopback.  kill -9 of a node that
# runs a stage of a long job FAILs the job, with a reason naming the node,
# within dead-after + one heartbeat (+ slack for a loaded machine); the
# surviving node's shard threads end (its heartbeats say 0 running shards);
# the next job on the remaining nodes SUCCEEDS.  A node that stops
# answering (SIGSTOP) is DEAD after dead-after and FAILs its job the same
# way; once it runs again its shards end and it rejoins.  A shard whose
# run fails by itself (fault injection) FAILs its job with a reason naming
# its node, rank, stage, tp and dp ranks.  `cancel` of a running job
# makes it CANCELLED, every shard ends, and the next job SUCCEEDS.  Every
# daemon still stops cleanly on SIGTERM.
#
# usage: engine_daemon_fail.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-engine-daemon-fail.XXXXXX)
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"
SLACK=1500

start_coord
export MPAR_SOCKET="$T/c0.sock"
# Shard rank 2 of jobs named "faulty" fails by itself at step 3.
export MPARD_FAULT_SHARD=faulty:2:3
start_node n1 cpu:2
start_node n2 cpu:2
start_node n3 cpu:2
wait_alive 3

# A job that runs for minutes unless stopped: pp 2 x tp 2.
python3 - "$T/long.json" <<'PY'
import json, sys
json.dump({"name": "long",
           "model": {"input": 64, "layers": [
               {"type": "linear", "out": 128}, {"type": "gelu"},
               {"type": "mlp_block", "hidden": 128, "ffn": 512},
               {"type": "linear", "out": 10}], "loss": "softmax_xent"},
           "data": {"dataset": "synthetic", "samples": 4096, "classes": 10, "seed": 5},
           "parallel": {"pp": 2, "tp": 2, "dp": 1, "micro_batches": 4, "schedule": "1f1b"},
           "train": {"batch_size": 64, "steps": 1000000, "optimizer": "sgd", "lr": 0.05,
                     "seed": 1}}, open(sys.argv[1], "w"))
PY
spec "$T/short.json" short 2 2 1 4 1f1b sgd 5

running_shards() { # node
    "$CLIENT" nodes -o json | jget '[n["running_shards"] for n in d["nodes"] if n["name"]=="'"$1"'"][0]'
}
shards_ended() { [ "$(running_shards "$1")" = 0 ]; }
steps_past() { # job n
    [ "$(job_field "$1" 'd["steps"]')" -ge "$2" ]
}
short_job_succeeds() { # label
    set +e
    timeout 120 "$CLIENT" submit "$T/short.json" -f -o json >"$T/short.$1.json" 2>"$T/short.$1.err"
    local rc=$?
    set -e
    [ $rc = 0 ] || fail "$1: the next job: exit $rc: $(cat "$T/short.$1.err")"
    [ "$(jget 'd["state"]' <"$T/short.$1.json")" = SUCCEEDED ] || fail "$1: next job not SUCCEEDED"
    jget '" ".join(sorted(set(p["node"] for p in d["placement"])))' <"$T/short.$1.json"
}

# --- a shard's own error ------------------------------------------------------------
spec "$T/faulty.json" faulty 2 2 1 4 1f1b sgd 20
set +e
timeout 60 "$CLIENT" submit "$T/faulty.json" -f -o json >"$T/faulty.out" 2>"$T/faulty.err"
RC=$?
set -e
[ $RC = 1 ] || fail "a failing job: submit -f exit $RC"
[ "$(jget 'd["state"]' <"$T/faulty.out")" = FAILED ] || fail "faulty job not FAILED"
S1=$(jget '[p["node"] for p in d["placement"] if p["rank"]==2][0]' <"$T/faulty.out")
S0=$(jget '[p["node"] for p in d["placement"] if p["rank"]==0][0]' <"$T/faulty.out")
REASON=$(jget 'd["reason"]' <"$T/faulty.out")
echo "$REASON" | grep -q "^node $S1: rank 2 (stage 1, tp 0, dp 0): " ||
    fail "reason does not name the failing shard on $S1: $REASON"
[ "$(jget 'd["steps"]' <"$T/faulty.out")" -lt 20 ] || fail "the faulty job ran to its end"
wait_for 30 shards_ended "$S0" || fail "$S0's shards did not end after the shard error"
wait_for 30 shards_ended "$S1" || fail "$S1's shards did not end after the shard error"
short_job_succeeds fault >/dev/null
echo "ok shard error -> FAILED: $REASON; shards ended; next job SUCCEEDED"

# --- kill -9 a node mid-job ------------------------------------------------------
JOB=$("$CLIENT" submit "$T/long.json" -o json | jget 'd["id"]')
wait_for 60 steps_past "$JOB" 3 || fail "the long job never ran: $("$CLIENT" status "$JOB")"
[ "$(job_field "$JOB" 'd["state"]')" = RUNNING ] || fail "long job not RUNNING"
# Which node runs which stage depends on the order the nodes registered.
S0=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==0][0]')
S1=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==1][0]')
[ "$S0" != "$S1" ] || fail "both stages on $S0"
OTHER=$(printf '%s\n' n1 n2 n3 | grep -v -x -e "$S0" -e "$S1")
eval "VICTIM_PID=\$PID_$S1"
KILL_AT=$(now_ms)
kill -9 "$VICTIM_PID"
failed() { [ "$(job_field "$JOB" 'd["state"]')" = FAILED ]; }
wait_for 10 failed || fail "job not FAILED after kill -9 of $S1: $("$CLIENT" status "$JOB")"
FAILED_AT=$(job_field "$JOB" 'd["finished_unix_ms"]')
LATENCY=$((FAILED_AT - KILL_AT))
REASON=$(job_field "$JOB" 'd["reason"]')
echo "job FAILED $LATENCY ms after kill -9 of $S1: $REASON"
[ "$LATENCY" -le $((DEAD + HB + SLACK)) ] || fail "FAILED after $LATENCY ms"
echo "$REASON" | grep -q "node $S1" || fail "reason does not name $S1: $REASON"
wait_for 30 shards_ended "$S0" || fail "$S0's shards did not end: $(running_shards "$S0")"
"$CLIENT" logs "$JOB" | grep -q "FAILED: node $S1" || fail "logs lack the failure"
NODES=$(short_job_succeeds kill)
[ "$NODES" = "$(printf '%s\n' "$S0" "$OTHER" | sort | tr '\n' ' ' | sed 's/ $//')" ] ||
    fail "next job placed on $NODES"
echo "ok kill -9 -> FAILED naming $S1, shards ended, next job on $NODES SUCCEEDED"

# --- a node that stops answering (SIGSTOP): DEAD by heartbeat timeout -------------------
JOB=$("$CLIENT" submit "$T/long.json" -o json | jget 'd["id"]')
wait_for 60 steps_past "$JOB" 3 || fail "the long job never ran on $S0 and $OTHER"
S1=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==1][0]')
S0=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==0][0]')
eval "VICTIM_PID=\$PID_$S1"
STOP_AT=$(now_ms)
kill -STOP "$VICTIM_PID"
wait_for 10 failed || fail "job not FAILED after SIGSTOP of $S1: $("$CLIENT" status "$JOB")"
LATENCY=$(($(job_field "$JOB" 'd["finished_unix_ms"]') - STOP_AT))
REASON=$(job_field "$JOB" 'd["reason"]')
kill -CONT "$VICTIM_PID"
echo "job FAILED $LATENCY ms after SIGSTOP of $S1: $REASON"
[ "$LATENCY" -le $((DEAD + HB + SLACK)) ] || fail "FAILED after $LATENCY ms"
echo "$REASON" | grep -q "node $S1 is DEAD" || fail "reason does not say $S1 is DEAD: $REASON"
wait_for 30 shards_ended "$S0" || fail "$S0's shards did not end after $S1 died"
wait_alive 2
wait_for 30 shards_ended "$S1" || fail "$S1's shards did not end after it came back"
short_job_succeeds stop >/dev/null
echo "ok SIGSTOP -> DEAD -> FAILED naming $S1, shards ended on both, next job SUCCEEDED"

# --- cancel mid-job ----------------------------------------------------------------
JOB=$("$CLIENT" submit "$T/long.json" -o json | jget 'd["id"]')
wait_for 60 steps_past "$JOB" 3 || fail "the second long job never ran"
"$CLIENT" cancel "$JOB" >/dev/null || fail "cancel exit"
[ "$(job_field "$JOB" 'd["state"]')" = CANCELLED ] || fail "not CANCELLED"
wait_for 30 shards_ended "$S0" || fail "$S0's shards did not end after cancel"
wait_for 30 shards_ended "$S1" || fail "$S1's shards did not end after cancel"
grep -q "job $JOB: every shard of this node has ended" "$T/$S1.log" || fail "$S1 log"
short_job_succeeds cancel >/dev/null
echo "ok cancel -> CANCELLED, shards ended, next job SUCCEEDED"

# --- submit -f of a job that is cancelled exits 1 ----------------------------------------
"$CLIENT" submit "$T/long.json" -f -o json >"$T/f.json" 2>"$T/f.err" &
FPID=$!
PIDS+=($FPID)
running_job() { "$CLIENT" jobs -o json | jget '[j["id"] for j in d["jobs"] if j["state"]=="RUNNING"][0]'; }
wait_for 30 running_job || fail "no running job for -f"
JOB=$(running_job)
wait_for 60 steps_past "$JOB" 2 || fail "the -f job never ran"
"$CLIENT" cancel "$JOB" >/dev/null
set +e
timeout 15 tail --pid="$FPID" -f /dev/null
wait "$FPID"
RC=$?
set -e
[ $RC = 1 ] || fail "submit -f of a cancelled job: exit $RC"
[ "$(jget 'd["state"]' <"$T/f.json")" = CANCELLED ] || fail "submit -f -o json document"
grep -q "step 1/" "$T/f.err" || fail "no progress on stderr: $(cat "$T/f.err")"
echo "ok submit -f: progress on stderr, final document, exit 1 when CANCELLED"

eval "P0=\$PID_$S0 P1=\$PID_$S1"
stop_daemons "$P0" "$P1" "$PID_c0"
echo "PASS"
