#!/usr/bin/env bash
# mpar-client run on a throwaway local cluster:
#  1. a grid larger than one node (pp=2, tp=2, dp=2: 4 nodes of 2 shards)
#     equals the serial run (weights within 1e-5 relative per tensor),
#     writes its timeline SVG, and leaves no mpard process or folder behind;
#  2. Ctrl-C (SIGINT to the client's process group) during a run stops the
#     cluster: exit 130, no mpard left, the temporary folder removed.
# usage: client_run_local.sh BUILD_BIN_DIR
set -u
bin=$(cd "$1" && pwd)
work=$(mktemp -d /tmp/mpar-test-run.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
passed=0
failed=0
cleanup() {
  # Anything of ours still running is a failure already counted; do not leak it.
  pkill -KILL -f "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ok()   { echo "PASS $*"; passed=$((passed + 1)); }
bad()  { echo "FAIL $*"; failed=$((failed + 1)); }
daemons_left() { pgrep -f "mpard.*$TMPDIR" | wc -l; }

cat > "$work/job.json" <<'JSON'
{
  "name": "run-local",
  "model": { "input": 24, "layers": [
      {"type": "linear", "out": 32}, {"type": "gelu"},
      {"type": "mlp_block", "hidden": 32, "ffn": 64},
      {"type": "relu"},
      {"type": "linear", "out": 5} ] },
  "data": { "dataset": "synthetic", "samples": 480, "test_samples": 96, "classes": 5, "seed": 3 },
  "parallel": { "pp": 2, "tp": 2, "dp": 2, "micro_batches": 3, "schedule": "1f1b" },
  "train": { "batch_size": 48, "steps": 5, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "seed": 4 }
}
JSON

cd "$work"
if timeout 180 "$bin/mpar-client" run job.json --save-weights "$work/par" -o json > run.json 2> run.err; then
  ok "run on a local cluster of 4 nodes exits 0"
else
  bad "run on a local cluster exited $?"; cat run.err
fi
"$bin/mpar-client" run job.json --serial --save-weights "$work/ser" -o json > serial.json 2>/dev/null
if /usr/bin/python3 - "$work/par" "$work/ser" run.json serial.json <<'PY'
import glob, json, os, sys
import numpy as np
par, ser = sys.argv[1], sys.argv[2]
names = sorted(os.path.basename(p) for p in glob.glob(ser + "/*.npy"))
worst = 0.0
for n in names:
    a, b = np.load(os.path.join(par, n)), np.load(os.path.join(ser, n))
    assert a.shape == b.shape, (n, a.shape, b.shape)
    worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(b))))
r, s = json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
lr = max(abs(x - y) / abs(y) for x, y in zip(r["losses"], s["losses"]))
print(f"{len(names)} tensors, worst weight difference {worst:.3g}, loss curve {lr:.3g}")
sys.exit(0 if names and worst <= 1e-5 and lr <= 1e-5 and r["state"] == "SUCCEEDED" else 1)
PY
then ok "the cluster's weights and losses equal the serial run's"
else bad "the cluster's weights or losses differ from the serial run's"; fi
if [ -s run-local-timeline.svg ] && grep -q "<svg" run-local-timeline.svg; then
  ok "timeline SVG written next to the result"
else
  bad "no timeline SVG"
fi
n=$(daemons_left)
if [ "$n" -eq 0 ] && [ -z "$(ls -A "$TMPDIR")" ]; then
  ok "no mpard and no temporary folder left after the run"
else
  bad "$n mpard left, $TMPDIR holds: $(ls "$TMPDIR")"
fi

# 2. Ctrl-C: a long job, interrupted once it is running.
sed -e 's/"steps": 5/"steps": 100000/' job.json > long.json
setsid "$bin/mpar-client" run long.json > long.out 2> long.err &
pid=$!
for _ in $(seq 1 300); do
  grep -q "step " long.err 2>/dev/null && break
  sleep 0.1
done
if [ "$(daemons_left)" -gt 0 ]; then ok "the long job's cluster is up"; else bad "the long job's cluster never came up"; cat long.err; fi
kill -INT -- -"$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
  bad "mpar-client still running 10 s after Ctrl-C"
  kill -KILL "$pid"
fi
wait "$pid"
rc=$?
if [ "$rc" -eq 130 ]; then ok "Ctrl-C exits 130"; else bad "Ctrl-C exit status $rc"; cat long.err; fi
sleep 0.5
n=$(daemons_left)
if [ "$n" -eq 0 ] && [ -z "$(ls -A "$TMPDIR")" ]; then
  ok "no mpard and no temporary folder left after Ctrl-C"
else
  bad "$n mpard left after Ctrl-C; $TMPDIR holds: $(ls "$TMPDIR")"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
