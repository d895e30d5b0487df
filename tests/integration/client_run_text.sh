#!/usr/bin/env bash
# mpar-client run on a text data set (DESIGN.md "Text data"):
#  1. a byte-level GPT on a local cluster (pp=2 x dp=2, 2 micro-batches:
#     every sample carries block_size labels through the feeder, the
#     executors and the results) equals the serial run: loss curve and test
#     loss within 1e-5 relative, the same next-token accuracy; both report
#     test_loss and tokens_per_s = samples_per_s x block_size, and the
#     progress lines show tokens/s;
#  2. a missing, an empty and a too-short text file are refused before
#     anything starts (exit 2), naming data.path and the file, with and
#     without --serial.
# The text is this source tree's README (any file will do).
# usage: client_run_text.sh BUILD_BIN_DIR SOURCE_DIR
set -u
bin=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/mpar-test-text.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
passed=0
failed=0
cleanup() {
  pkill -KILL -f "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ok()   { echo "PASS $*"; passed=$((passed + 1)); }
bad()  { echo "FAIL $*"; failed=$((failed + 1)); }

cd "$work"
head -c 60000 "$src/README.md" > corpus.txt
spec() { # path -> a GPT job spec on corpus-like text
  cat <<JSON
{
  "name": "text-run",
  "model": { "layers": [
      {"type": "embedding", "vocab": 256, "dim": 32, "max_seq": 16},
      {"type": "transformer_block", "heads": 2, "ffn": 64},
      {"type": "layernorm"},
      {"type": "linear", "out": 256} ] },
  "data": { "dataset": "text", "path": "$1", "block_size": 16 },
  "parallel": { "pp": 2, "dp": 2, "micro_batches": 2, "schedule": "1f1b" },
  "train": { "batch_size": 16, "steps": 12, "optimizer": "adamw", "lr": 0.003, "seed": 2 }
}
JSON
}
spec corpus.txt > job.json

# 1. Cluster equals serial.
if "$bin/mpar-client" run job.json --serial -o json > serial.json 2> serial.err; then
  ok "serial run exits 0"
else
  bad "serial run failed: $(cat serial.err)"
fi
if "$bin/mpar-client" run job.json -o json --timeline none > cluster.json 2> cluster.err; then
  ok "local cluster run exits 0"
else
  bad "local cluster run failed: $(tail -5 cluster.err)"
fi
if python3 - serial.json cluster.json <<'PY'
import json, math, sys
s, c = (json.load(open(p)) for p in sys.argv[1:3])
def rel(a, b):
    return abs(a - b) / abs(b)
ok = c["state"] == "SUCCEEDED" and len(s["losses"]) == len(c["losses"]) == 12
worst = max(rel(a, b) for a, b in zip(c["losses"], s["losses"]))
ok = ok and worst <= 1e-5 and rel(c["test_loss"], s["test_loss"]) <= 1e-5
ok = ok and c["test_accuracy"] == s["test_accuracy"]
# Losses are per position: a fresh byte model starts near ln 256.
ok = ok and abs(s["losses"][0] - math.log(256)) < 0.5
for r in (s, c):
    ok = ok and rel(r["tokens_per_s"], 16 * r["samples_per_s"]) <= 1e-6  # 9 printed digits
print(f"worst loss difference {worst:.3g}, test loss {s['test_loss']:.4f} / {c['test_loss']:.4f}, "
      f"first loss {s['losses'][0]:.4f}, tokens/s {s['tokens_per_s']:.0f} / {c['tokens_per_s']:.0f}")
sys.exit(0 if ok else 1)
PY
then ok "the cluster's text run equals the serial run, with test_loss and tokens_per_s"
else bad "the cluster's text run differs from the serial run"; fi
if grep -q "tokens/s" serial.err && grep -q "tokens/s" cluster.err; then
  ok "progress lines show tokens/s"
else
  bad "no tokens/s in the progress lines"
fi

# 2. Files refused before anything starts.
head -c 100 corpus.txt > short.txt
: > empty.txt
for f in missing.txt empty.txt short.txt; do
  spec "$f" > bad.json
  for mode in --serial ""; do
    # shellcheck disable=SC2086
    "$bin/mpar-client" run bad.json $mode > bad.out 2> bad.err
    rc=$?
    if [ "$rc" -eq 2 ] && grep -q "data.path: $f: " bad.err && [ -z "$(ls -A "$TMPDIR")" ]; then
      ok "$f refused (run ${mode:-on a cluster}): $(cat bad.err)"
    else
      bad "$f (run ${mode:-on a cluster}): exit $rc: $(cat bad.err)"
    fi
  done
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
