#!/usr/bin/env bash
# Equivalence through real daemons: a coordinator and 2 nodes of 2 CPU
# devices each on loopback run jobs of several grids and schedules (gpipe,
# 1f1b, zero_bubble, interleaved_1f1b with 2 and 3 chunks a stage; linear,
# gelu, relu and mlp_block layers; 5 steps), submitted with -f -o json and
# --save-weights.  Each must end SUCCEEDED with its losses, placement and
# last-step timeline in its record, and its gathered weights must equal
# `mpar-client run --serial --save-weights` per tensor within 1e-5 relative
# (max|a-b| / max|ref|) for SGD with momentum, 1e-3 for AdamW, with the same
# loss curve.  The status socket and `status` show the same record.
#
# usage: engine_daemon_equiv.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-engine-daemon.XXXXXX)
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"

start_coord
export MPAR_SOCKET="$T/c0.sock"
start_node n1 cpu:2
start_node n2 cpu:2
wait_alive 2

# The record of a finished job: every key the lead's run/trace read.
check_record() { # JOB.json NRANKS
    python3 - "$@" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); n = int(sys.argv[2])
for k in ("state", "reason", "steps", "final_loss", "test_accuracy", "samples_per_s",
          "bubble_fraction", "losses", "placement", "timeline"):
    assert k in d, "no %s in %s" % (k, sorted(d))
assert d["state"] == "SUCCEEDED", d["state"]
assert d["steps"] == 5 and len(d["losses"]) == 5, (d["steps"], d["losses"])
assert d["final_loss"] == d["losses"][-1]
assert d["samples_per_s"] > 0 and 0 <= d["bubble_fraction"] < 1
assert d["test_accuracy"] is not None and 0 <= d["test_accuracy"] <= 1
p = d["placement"]
assert len(p) == n and [e["rank"] for e in p] == list(range(n)), p
for e in p:
    assert set(e) == {"rank", "stage", "tp", "dp", "node", "device", "layers"}, e
    assert e["node"] in ("n1", "n2") and e["device"].startswith("cpu:"), e
# A TP group stays inside one node.
groups = {}
for e in p:
    groups.setdefault((e["stage"], e["dp"]), set()).add(e["node"])
assert all(len(v) == 1 for v in groups.values()), groups
# The cut: every stage's layers (chunks under interleaved_1f1b), the same on
# each of its ranks, together the model's 6 layers once each.
cut = {}
for e in p:
    cut.setdefault(e["stage"], set()).add(e["layers"])
assert all(len(v) == 1 for v in cut.values()), cut
held = []
for s in sorted(cut):
    for r in next(iter(cut[s])).split(","):
        a, _, b = r.partition("-")
        held += list(range(int(a), int(b or a) + 1))
assert sorted(held) == list(range(6)), cut
if len(cut) > 1:
    assert 0 <= d["predicted_bubble"] < 1, d.get("predicted_bubble")
t = d["timeline"]
assert t["step"] == 5 and len(t["rows"]) == n, t.keys()
for r in t["rows"]:
    ops = [s["op"] for s in r["spans"]]
    assert "FWD" in ops and "BWD" in ops and "OPT_STEP" in ops, ops
    for s in r["spans"]:
        assert set(s) == {"op", "mb", "chunk", "t0_ns", "t1_ns"}, s
        assert 0 <= s["t0_ns"] <= s["t1_ns"], s
PY
}

run_case() { # name pp tp dp m schedule optimizer tol
    local name=$1 pp=$2 tp=$3 dp=$4 m=$5 sched=$6 opt=$7 tol=$8
    local n=$((pp * tp * dp))
    spec "$T/$name.json" "$name" "$pp" "$tp" "$dp" "$m" "$sched" "$opt" 5
    "$CLIENT" run "$T/$name.json" --serial --save-weights "$T/$name.ref" -o json \
        >"$T/$name.serial.json" 2>/dev/null || fail "$name: serial run"
    set +e
    timeout 120 "$CLIENT" submit "$T/$name.json" -f -o json --save-weights "$T/$name.got" \
        >"$T/$name.job.json" 2>"$T/$name.progress"
    local rc=$?
    set -e
    [ $rc = 0 ] || fail "$name: submit -f exit $rc: $(cat "$T/$name.progress")"
    grep -q "step 5/5" "$T/$name.progress" || fail "$name: no progress line for step 5"
    grep -q "SUCCEEDED" "$T/$name.progress" || fail "$name: no SUCCEEDED event"
    check_record "$T/$name.job.json" "$n" || fail "$name: record"
    local cmp
    cmp=$(compare "$T/$name.ref" "$T/$name.got" "$tol") || fail "$name: weights: $cmp"
    losses "$T/$name.job.json" "$T/$name.serial.json" "$tol" || fail "$name: losses"
    echo "ok $name: pp $pp tp $tp dp $dp m $m $sched $opt: $cmp"
}

run_case g211 2 1 1 3 gpipe sgd 1e-5
run_case f121 1 2 1 4 1f1b sgd 1e-5
run_case f221 2 2 1 4 1f1b sgd 1e-5
run_case g112 1 1 2 1 gpipe sgd 1e-5
run_case f311 3 1 1 3 1f1b sgd 1e-5
run_case g212 2 1 2 3 gpipe sgd 1e-5
run_case a221 2 2 1 4 1f1b adamw 1e-3
run_case z221 2 2 1 4 zero_bubble sgd 1e-5
run_case z212 2 1 2 3 zero_bubble adamw 1e-3
run_case i211 2 1 1 2 interleaved_1f1b:2 sgd 1e-5
run_case i221 2 2 1 4 interleaved_1f1b:2 sgd 1e-5
run_case i212 2 1 2 2 interleaved_1f1b:3 adamw 1e-3

# The same record through the status socket and the human status.
JOB=$(jget 'd["id"]' <"$T/f221.job.json")
printf '{"cmd":"job","id":"%s"}\n' "$JOB" | timeout 5 socat -t 2 - "UNIX-CONNECT:$T/c0.sock" \
    >"$T/sock.json"
python3 - "$T/sock.json" "$T/f221.job.json" <<'PY' || fail "status socket record"
import json, sys
s = json.load(open(sys.argv[1]))["job"]; c = json.load(open(sys.argv[2]))
for k in ("state", "steps", "final_loss", "losses", "placement", "timeline", "bubble_fraction",
          "predicted_bubble"):
    assert s[k] == c[k], k
PY
"$CLIENT" status "$JOB" >"$T/status.txt" || fail "status exit"
grep -q "stage 1, dp 0, layers [0-9,-]*: TP group of 2 on node" "$T/status.txt" || fail "status: $(cat "$T/status.txt")"
# The job list stays small: no per-step results in it.
"$CLIENT" jobs -o json | jget 'all(len(j["losses"]) == 0 and j["timeline"] is None for j in d["jobs"])' |
    grep -q True || fail "job list carries results"
# A relative --save-weights is made absolute by the client; a bad one is refused.
printf '{"cmd":"submit","spec":%s,"save_weights":"rel/dir"}\n' "$(cat "$T/g211.json")" |
    timeout 5 socat -t 2 - "UNIX-CONNECT:$T/c0.sock" | jget 'd["error"]' | grep -q "absolute" ||
    fail "relative save_weights accepted"
echo "ok status socket, status, jobs"

# The timeline of the last step: Chrome trace JSON (one thread per shard,
# forward and backward spans) and the SVG Gantt chart.
"$CLIENT" trace "$JOB" >"$T/trace.json" || fail "trace exit"
python3 - "$T/trace.json" <<'PY' || fail "trace: $(head -c 300 "$T/trace.json")"
import json, sys
d = json.load(open(sys.argv[1]))
ev = [e for e in d["traceEvents"] if e.get("ph") == "X"]
names = {e["name"] for e in ev}
assert len({e["tid"] for e in ev}) == 4, "a row per shard of the 2x2 grid"
assert any(n.startswith("F") for n in names) and any(n.startswith("B") for n in names), names
assert all(e["dur"] >= 0 for e in ev)
PY
"$CLIENT" trace "$JOB" --format svg --file "$T/trace.svg" 2>/dev/null || fail "trace --format svg"
grep -q "<svg" "$T/trace.svg" || fail "trace: no SVG"
"$CLIENT" trace 99999 >/dev/null 2>&1 && fail "trace of a missing job exited 0"
echo "ok trace: Chrome JSON and SVG"

# Every daemon stops cleanly.
stop_daemons "$PID_n1" "$PID_n2" "$PID_c0"
echo "PASS"
