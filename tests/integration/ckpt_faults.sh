#!/usr/bin/env bash
# The fault matrix of checkpoints and restarts (DESIGN.md "Checkpoints and
# restarts"): a pp 2 x tp 2 job with checkpoints every 10 steps and
# train.max_restarts 3 (20 steps apart), on a coordinator and 3 nodes of 2 CPU devices each
# (one spare).  Each case ends SUCCEEDED with final weights equal bit for
# bit to an uninterrupted run on the same grid:
#   - kill -9 of a node mid-job (the job restarts on the spare);
#   - a node killed inside a checkpoint write, after its first file
#     (MPAR_FAULT=after_first_file), restarted as systemd would;
#   - the coordinator killed before it writes the manifest, and before it
#     renames `latest` (MPAR_FAULT=before_manifest|before_latest), then
#     restarted: `latest` still names a complete checkpoint (export reads it);
#   - kill -9 of the coordinator mid-job, then restarted;
#   - the coordinator stopped (SIGTERM) mid-job: the state file keeps the job
#     PENDING, and the restarted coordinator resumes it; with max_restarts 1
#     that resume is no failure, so the job then survives a node's kill -9 too.
# Every case checks the job's restarts (every resume) and failures (only
# those count against max_restarts); a job with max_restarts 0 that was
# resumed after a coordinator stop still FAILs at its first failure.
# It prints each case's recovery time (failure -> training again).
#
# usage: ckpt_faults.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-ckpt-faults.XXXXXX)
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"
export MPAR_SOCKET="$T/c0.sock"

# A job of several seconds: pp 2 x tp 2, AdamW, 1000 steps, checkpoints every 20.  The
# kills below land once step 40 is committed, while the job runs: at 300 steps a job
# could end before them (since the executor's waits wake on the message, 300 steps
# take about 2 s here, the test's polls a good part of that), and a job that ends
# first records no restart.
ckspec() { # FILE NAME CKDIR [MAX_RESTARTS (3)]
    python3 - "$@" <<'PY'
import json, sys
f, name, ck = sys.argv[1:4]
restarts = int(sys.argv[4]) if len(sys.argv) > 4 else 3
json.dump({"name": name,
           "model": {"input": 64, "layers": [
               {"type": "linear", "out": 128}, {"type": "gelu"},
               {"type": "mlp_block", "hidden": 128, "ffn": 512},
               {"type": "linear", "out": 10}], "loss": "softmax_xent"},
           "data": {"dataset": "synthetic", "samples": 4096, "classes": 10, "seed": 5},
           "parallel": {"pp": 2, "tp": 2, "dp": 1, "micro_batches": 4, "schedule": "1f1b",
                        "partition": "uniform"},
           "train": {"batch_size": 64, "steps": 1000, "optimizer": "adamw", "lr": 0.002,
                     "seed": 1, "max_restarts": restarts},
           "checkpoint": {"dir": ck, "every_steps": 20, "keep": 2}}, open(f, "w"))
PY
}

start_all() { # env for the nodes...
    start_coord
    for n in n1 n2 n3; do
        env "$@" "$MPARD" --name "$n" --join "127.0.0.1:$PORT" --socket "$T/$n.sock" \
            --state-dir "$T/$n" --devices cpu:2 "${COMMON[@]}" >>"$T/$n.log" 2>&1 &
        PIDS+=($!)
        eval "PID_$n=$!"
    done
    wait_alive 3
}

# Restarts every node that died (as systemd would), without fault injection.
revive_nodes() {
    for n in n1 n2 n3; do
        eval "p=\$PID_$n"
        if ! kill -0 "$p" 2>/dev/null; then
            rm -f "$T/$n.sock"
            start_node "$n" cpu:2
        fi
    done
}

ckpt_past() { # job step
    [ "$(job_field "$1" 'd["checkpoint_step"]')" -ge "$2" ]
}

# The job's counts in -o json: every resume in restarts, only the failed runs
# in failures.
check_counts() { # label job restarts failures
    local got
    got=$(job_field "$2" '"%d %d" % (d["restarts"], d["failures"])')
    [ "$got" = "$3 $4" ] || fail "$1: restarts failures = $got, want $3 $4: $("$CLIENT" status "$2")"
}

# kill -9 of the node that runs the job's stage 1 (the spare then takes it);
# sets S1 (its name) and FAIL_AT.
kill_stage1_node() { # job
    local victim
    S1=$(job_field "$1" '[p["node"] for p in d["placement"] if p["stage"]==1][0]')
    eval "victim=\$PID_$S1"
    FAIL_AT=$(now_ms)
    kill -9 "$victim"
}

# SIGTERM to the coordinator, as `systemctl restart` does: the state file
# keeps the job PENDING; then the coordinator starts again.
restart_coord_graceful() { # label job
    kill -TERM "$PID_c0"
    timeout 10 tail --pid="$PID_c0" -f /dev/null || fail "$1: the coordinator did not stop"
    python3 - "$T/c0/jobs.json" "$2" <<'PY' || fail "$1: the job was not kept PENDING"
import json, sys
jobs = json.load(open(sys.argv[1]))["jobs"]
j = [j for j in jobs if j["id"] == sys.argv[2]][0]
assert j["state"] == "PENDING" and "coordinator stopped" in j["reason"], j["state"] + ": " + j["reason"]
assert "not a failure" in j["reason"] and j["failures"] == 0, j["reason"]
PY
    rm -f "$T/c0.sock"
    start_coord
}

# When the job's last run after AFTER_MS (unix ms) was ready to train: its
# "every shard is ready" event; 0 if none.
ready_after() { # job after_ms
    "$CLIENT" logs "$1" -o json 2>/dev/null | python3 -c '
import json, sys
evs = json.load(sys.stdin)["events"]
t = [e["unix_ms"] for e in evs
     if "every shard is ready" in e.get("message", "") and e["unix_ms"] > int(sys.argv[1])]
print(t[-1] if t else 0)' "$2" 2>/dev/null || echo 0
}

# The job's end, its weights against the reference bit for bit; prints the
# recovery time: from FAIL_AT to the last "every shard is ready: training".
check_case() { # label job weights
    local label=$1 job=$2 w=$3
    ended() {
        local s
        s=$(job_field "$job" 'd["state"]')
        [ "$s" = SUCCEEDED ] || [ "$s" = FAILED ] || [ "$s" = CANCELLED ]
    }
    local end=$(($(now_ms) + 180000))
    while ! ended; do
        [ "$(now_ms)" -lt $end ] || fail "$label: job $job did not end: $("$CLIENT" status "$job")"
        if [ "${REVIVE:-0}" = 1 ]; then revive_nodes; fi
        sleep 0.2
    done
    [ "$(job_field "$job" 'd["state"]')" = SUCCEEDED ] ||
        fail "$label: job $job: $("$CLIENT" status "$job")"
    local restarts
    restarts=$(job_field "$job" 'd["restarts"]')
    [ "$restarts" -ge 1 ] || fail "$label: no restart recorded"
    compare "$T/ref" "$w" 0 >/dev/null || fail "$label: weights differ from the uninterrupted run"
    local back
    back=$(ready_after "$job" 0)
    local from
    from=$(job_field "$job" 'd["resumed_from_step"]')
    echo "ok $label: SUCCEEDED after $restarts restart(s), resumed from step $from, weights bit-equal;" \
        "recovery $((back - FAIL_AT)) ms"
}

# --- the reference: the same job, uninterrupted ------------------------------------
start_all
ckspec "$T/ref.json" ref "$T/ck-ref"
timeout 180 "$CLIENT" submit "$T/ref.json" -f -o json --save-weights "$T/ref" >"$T/ref.out" \
    2>"$T/ref.err" || fail "reference run: $(cat "$T/ref.err")"
[ "$(jget 'd["checkpoint_step"]' <"$T/ref.out")" = 1000 ] || fail "reference: last checkpoint"
[ "$(jget '"%d %d" % (d["restarts"], d["failures"])' <"$T/ref.out")" = "0 0" ] ||
    fail "reference restarted"
ls "$T/ck-ref" | grep -c '^step-' | grep -qx 2 || fail "keep 2: $(ls "$T/ck-ref")"
echo "ok reference: 1000 steps, checkpoints kept: $(ls "$T/ck-ref" | tr '\n' ' ')"

# --- kill -9 a node mid-job -------------------------------------------------------
ckspec "$T/a.json" a "$T/ck-a"
JOB=$("$CLIENT" submit "$T/a.json" -o json --save-weights "$T/wa" | jget 'd["id"]')
JOB_A=$JOB
wait_for 60 ckpt_past "$JOB" 40 || fail "node kill: no checkpoint: $("$CLIENT" status "$JOB")"
kill_stage1_node "$JOB"
check_case "kill -9 node $S1" "$JOB" "$T/wa"
check_counts "kill -9 node" "$JOB" 1 1
revive_nodes
wait_alive 3

# --- the coordinator killed mid-job -------------------------------------------------
ckspec "$T/e.json" e "$T/ck-e"
JOB=$("$CLIENT" submit "$T/e.json" -o json --save-weights "$T/we" | jget 'd["id"]')
wait_for 60 ckpt_past "$JOB" 40 || fail "coordinator kill: no checkpoint"
FAIL_AT=$(now_ms)
kill -9 "$PID_c0"
wait "$PID_c0" 2>/dev/null || true
rm -f "$T/c0.sock"
start_coord
check_case "kill -9 coordinator" "$JOB" "$T/we"
check_counts "kill -9 coordinator" "$JOB" 1 0
wait_alive 3

# --- the coordinator stopped (SIGTERM, as `systemctl restart` does) mid-job, then ---
# a node killed: with max_restarts 1 the stop's resume is no failure, so the job
# survives the kill as its one failure.
ckspec "$T/s.json" s "$T/ck-s" 1
JOB=$("$CLIENT" submit "$T/s.json" -o json --save-weights "$T/ws" | jget 'd["id"]')
wait_for 60 ckpt_past "$JOB" 40 || fail "coordinator stop: no checkpoint"
FAIL_AT=$(now_ms)
restart_coord_graceful "coordinator stop" "$JOB"
STOPPED_AT=$(job_field "$JOB" 'd["checkpoint_step"]')
# Training again (a checkpoint after the one it resumed from), then the kill.
wait_for 60 ckpt_past "$JOB" $((STOPPED_AT + 20)) ||
    fail "coordinator stop: the job did not resume: $("$CLIENT" status "$JOB")"
check_counts "coordinator stop" "$JOB" 1 0
echo "ok coordinator stopped (SIGTERM): resumed, recovery $(($(ready_after "$JOB" "$FAIL_AT") - FAIL_AT)) ms"
kill_stage1_node "$JOB"
check_case "coordinator stopped (SIGTERM), then kill -9 node $S1" "$JOB" "$T/ws"
check_counts "coordinator stop, then a node kill" "$JOB" 2 1
"$CLIENT" logs "$JOB" -o json | python3 -c '
import json, sys
m = [e.get("message", "") for e in json.load(sys.stdin)["events"]]
assert any("coordinator stopped" in x and "restart 1, not a failure" in x for x in m), m
assert any("failure 1 (max_restarts 1): " in x and "restart 2, resuming" in x for x in m), m
' || fail "coordinator stop, then a node kill: the events do not say why each restart happened"
revive_nodes
wait_alive 3

# --- max_restarts 0: a coordinator stop resumes the job, its first failure FAILs it ------
ckspec "$T/z.json" z "$T/ck-z" 0
JOB=$("$CLIENT" submit "$T/z.json" -o json | jget 'd["id"]')
JOB_Z=$JOB
wait_for 60 ckpt_past "$JOB" 40 || fail "max_restarts 0: no checkpoint"
restart_coord_graceful "max_restarts 0" "$JOB"
STOPPED_AT=$(job_field "$JOB" 'd["checkpoint_step"]')
wait_for 60 ckpt_past "$JOB" $((STOPPED_AT + 20)) ||
    fail "max_restarts 0: the job did not resume after the stop: $("$CLIENT" status "$JOB")"
kill_stage1_node "$JOB"
job_failed() { [ "$(job_field "$JOB" 'd["state"]')" = FAILED ]; }
wait_for 60 job_failed || fail "max_restarts 0: the node kill did not FAIL it: $("$CLIENT" status "$JOB")"
check_counts "max_restarts 0" "$JOB" 1 1
# The status socket's job list has both counts too.
echo '{"cmd":"jobs"}' | socat -t 10 - UNIX-CONNECT:"$T/c0.sock" |
    jget '[(j["restarts"], j["failures"]) for j in d["jobs"] if j["id"] == "'"$JOB"'"] == [(1, 1)] or sys.exit(1)' \
    >/dev/null || fail "max_restarts 0: {\"cmd\":\"jobs\"} has not restarts 1, failures 1"
echo "ok max_restarts 0: resumed after a coordinator stop, FAILED at its first failure (kill -9 $S1)"
revive_nodes
wait_alive 3

# --- the coordinator killed inside a commit -----------------------------------------
for point in before_manifest before_latest; do
    kill -TERM "$PID_c0"
    wait "$PID_c0" 2>/dev/null || true
    if [ "$point" = before_manifest ]; then
        # The counts survive in the state file; one without "failures" (an
        # older coordinator's) reads as 0: job a's entry loses the field.
        python3 - "$T/c0/jobs.json" "$JOB_A" <<'PY' || fail "the state file has no failures for job a"
import json, sys
st = json.load(open(sys.argv[1]))
[j for j in st["jobs"] if j["id"] == sys.argv[2]][0].pop("failures")
json.dump(st, open(sys.argv[1], "w"))
PY
    fi
    rm -f "$T/c0.sock"
    # The 4th commit kills it: three are committed (steps 20, 40 and 60, or a
    # later step when the shards' files of two steps are in while a commit
    # runs: the next commit takes the newest), the 4th's is cut.
    MPAR_FAULT=$point:4 start_coord
    wait_alive 3
    if [ "$point" = before_manifest ]; then
        check_counts "the state file read back: job z" "$JOB_Z" 1 1
        check_counts "a state file without failures: job a" "$JOB_A" 1 0
        echo "ok the state file keeps restarts and failures; without failures it reads 0"
    fi
    ckspec "$T/$point.json" "$point" "$T/ck-$point"
    JOB=$("$CLIENT" submit "$T/$point.json" -o json --save-weights "$T/w-$point" | jget 'd["id"]')
    coord_dead() { ! kill -0 "$PID_c0" 2>/dev/null; }
    wait_for 90 coord_dead || fail "$point: the coordinator did not die at its fault point"
    FAIL_AT=$(now_ms)
    wait "$PID_c0" 2>/dev/null || true
    # latest names a complete checkpoint that loads, the third commit's (step
    # 60 or later); the cut commit's folder is newer, with a manifest only
    # when the cut came after it (before_latest).
    "$CLIENT" export "$T/ck-$point" "$T/x-$point" -o json >"$T/x-$point.json" ||
        fail "$point: the committed checkpoint does not load"
    LATEST=$(jget 'd["step"]' <"$T/x-$point.json")
    python3 - "$T/ck-$point" "$point" "$LATEST" <<'PY' || fail "$point: latest is step $LATEST: $(ls "$T/ck-$point")"
import os, re, sys
d, point, latest = sys.argv[1], sys.argv[2], int(sys.argv[3])
assert latest >= 60 and latest % 20 == 0, "three commits come before the cut one"
later = [int(m.group(1)) for m in (re.fullmatch(r"step-(\d{8})", n) for n in os.listdir(d))
         if m and int(m.group(1)) > latest]
assert later, "no folder of the cut commit beyond latest"
manifests = [s for s in later if os.path.exists("%s/step-%08d/manifest.json" % (d, s))]
assert bool(manifests) == (point == "before_latest"), "manifests beyond latest: %s" % manifests
PY
    rm -f "$T/c0.sock"
    start_coord
    check_case "coordinator killed $point" "$JOB" "$T/w-$point"
    check_counts "coordinator killed $point" "$JOB" 1 0
    [ "$(job_field "$JOB" 'd["resumed_from_step"]')" = "$LATEST" ] ||
        fail "$point: did not resume from latest (step $LATEST)"
done
wait_alive 3

# --- a node killed inside a checkpoint write, after its first file ------------------------
kill -TERM "$PID_c0" "$PID_n1" "$PID_n2" "$PID_n3"
for p in "$PID_c0" "$PID_n1" "$PID_n2" "$PID_n3"; do wait "$p" 2>/dev/null || true; done
rm -f "$T"/*.sock
# Each node writes 2 files per checkpoint: its 5th file is the first of step 60's.
start_all MPAR_FAULT=after_first_file:5
ckspec "$T/f.json" f "$T/ck-f"
JOB=$("$CLIENT" submit "$T/f.json" -o json --save-weights "$T/wf" | jget 'd["id"]')
some_node_dead() {
    for n in n1 n2 n3; do
        eval "p=\$PID_$n"
        kill -0 "$p" 2>/dev/null || return 0
    done
    return 1
}
wait_for 90 some_node_dead || fail "after_first_file: no node died"
FAIL_AT=$(now_ms)
# Every node that dies is restarted without the fault, as systemd would.
REVIVE=1 check_case "node killed after its first checkpoint file" "$JOB" "$T/wf"
# Each node's fault may kill it once: one failure or more, each one a restart.
job_field "$JOB" 'd["failures"] >= 1 and d["restarts"] == d["failures"] or sys.exit(1)' >/dev/null ||
    fail "after_first_file: restarts $(job_field "$JOB" 'd["restarts"]'), failures $(job_field "$JOB" 'd["failures"]')"

stop_daemons "$PID_c0" "$PID_n1" "$PID_n2" "$PID_n3"
echo "PASS"
