#!/usr/bin/env bash
# mpar-client sample and what run shows of a text job:
#  1. run --serial with --save-weights and --curve writes the learning-curve
#     SVG and ends with a sample of the model's text (in -o json: "sample");
#  2. run on a local cluster (pp=2 x tp=2) writes <job>-curve.svg next to
#     the timeline by default and samples from its gathered weights; a
#     sample it prints equals `sample` on the weights it saved;
#  3. sample: --temperature 0 is deterministic; a seed reproduces a sample
#     and another seed changes it; -o json holds prompt and continuation;
#  4. bad arguments exit 2 naming the flag or the file: no --weights, no
#     --prompt, an empty prompt, a bad --temperature/--top-k/--tokens, a
#     weights folder without the files, a file of the wrong shape, a spec
#     that is not a text model.
# usage: client_sample.sh BUILD_BIN_DIR SOURCE_DIR
set -u
bin=$(cd "$1" && pwd)
src=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/mpar-test-sample.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
passed=0
failed=0
trap 'rm -rf "$work"' EXIT
ok()  { echo "PASS $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }
client=$bin/mpar-client

cd "$work"
head -c 40000 "$src/README.md" > corpus.txt
cat > job.json <<'JSON'
{
  "name": "sample-run",
  "model": { "layers": [
      {"type": "embedding", "vocab": 256, "dim": 32, "max_seq": 16},
      {"type": "transformer_block", "heads": 2, "ffn": 64},
      {"type": "layernorm"},
      {"type": "linear", "out": 256} ] },
  "data": { "dataset": "text", "path": "corpus.txt", "block_size": 16 },
  "parallel": { "pp": 2, "tp": 2, "micro_batches": 2, "schedule": "1f1b" },
  "train": { "batch_size": 8, "steps": 12, "optimizer": "adamw", "lr": 0.003, "seed": 2 }
}
JSON

# 1. Serial: curve and sample.
if "$client" run job.json --serial --save-weights w --curve serial.svg -o json \
    > serial.json 2> serial.err; then
  ok "serial run exits 0"
else
  bad "serial run failed: $(cat serial.err)"
fi
if grep -q '<polyline' serial.svg 2>/dev/null && tail -1 serial.svg | grep -q '</svg>'; then
  ok "--curve writes the learning curve"
else
  bad "no learning curve in serial.svg"
fi
/usr/bin/python3 - serial.json <<'PY' && ok "the serial result holds a 241-byte sample and curve_svg" || bad "serial sample/curve_svg missing"
import json, sys
d = json.load(open(sys.argv[1]))
assert len(d["sample"]) == 241 and d["sample"][0] == "\n", d.get("sample")
assert d["curve_svg"] == "serial.svg"
PY

# 2. Local cluster: default curve next to the timeline, sample from the gathered weights.
if "$client" run job.json --save-weights cw --sample 60 > cluster.out 2> cluster.err; then
  ok "cluster run exits 0"
else
  bad "cluster run failed: $(tail -5 cluster.err)"
fi
if [ -s sample-run-curve.svg ] && [ -s sample-run-timeline.svg ] &&
   grep -q 'learning curve: sample-run-curve.svg' cluster.out; then
  ok "the cluster run writes sample-run-curve.svg next to the timeline"
else
  bad "no default curve: $(ls)"
fi
printed=$(sed -n '/the model now writes (60 bytes/,$p' cluster.out | tail -n +2 | sed 's/^    | //')
again=$("$client" sample job.json --weights cw --prompt $'\n' --tokens 60 --temperature 0.5 \
        --seed 1 | tr -c '\n\t -~' '?' | sed '/^$/d')
if [ -n "$printed" ] && [ "$printed" = "$again" ]; then
  ok "run's closing sample equals sample on the gathered weights"
else
  bad "run printed [$printed], sample wrote [$again]"
fi

# 3. Determinism and seeds.
g1=$("$client" sample job.json --weights w --prompt "The " --tokens 50 --temperature 0)
g2=$("$client" sample job.json --weights w --prompt "The " --tokens 50 --temperature 0)
[ -n "$g1" ] && [ "$g1" = "$g2" ] && [ "${g1:0:4}" = "The " ] &&
  ok "greedy sampling is deterministic and starts with the prompt" || bad "greedy: [$g1] [$g2]"
s1=$("$client" sample job.json --weights w --prompt "The " --tokens 50 --temperature 1 --top-k 40 --seed 5 | od -c)
s2=$("$client" sample job.json --weights w --prompt "The " --tokens 50 --temperature 1 --top-k 40 --seed 5 | od -c)
s3=$("$client" sample job.json --weights w --prompt "The " --tokens 50 --temperature 1 --top-k 40 --seed 6 | od -c)
[ "$s1" = "$s2" ] && [ "$s1" != "$s3" ] && ok "a seed reproduces a sample, another seed changes it" ||
  bad "seeded samples: same seed equal? $([ "$s1" = "$s2" ] && echo yes), other seed differs? $([ "$s1" != "$s3" ] && echo yes)"
"$client" sample job.json --weights w --prompt "ab" --tokens 7 --temperature 0 -o json > s.json &&
/usr/bin/python3 - s.json <<'PY' && ok "-o json holds the prompt and a 7-byte continuation" || bad "sample -o json"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["prompt"] == "ab" and len(d["continuation"]) == 7 and d["temperature"] == 0, d
PY
"$client" -o json sample job.json --weights w --prompt "ab" --tokens 7 --temperature 0 > s2.json &&
cmp -s s.json s2.json && ok "sample: -o json before the command gives the same document" ||
  bad "sample -o json before the command: $(cat s2.json)"

# 4. Bad arguments.
refuse() { # want-in-stderr, args...
  local want=$1
  shift
  "$client" sample "$@" > bad.out 2> bad.err
  local rc=$?
  if [ $rc -eq 2 ] && grep -qF -- "$want" bad.err; then
    ok "refused (exit 2): $(head -1 bad.err)"
  else
    bad "sample $*: exit $rc: $(cat bad.err)"
  fi
}
refuse "--weights DIR is required" job.json --prompt x
refuse "--prompt TEXT is required" job.json --weights w
refuse "--prompt: needs at least one byte" job.json --weights w --prompt ""
refuse "--temperature: expected a number >= 0" job.json --weights w --prompt x --temperature -1
refuse "--top-k: expected" job.json --weights w --prompt x --top-k two
refuse "--tokens: expected" job.json --weights w --prompt x --tokens -3
mkdir -p empty
refuse "empty/0.token.weight.npy" job.json --weights empty --prompt x
cp -r w wrong
/usr/bin/python3 - wrong/1.attn.qkv.weight.npy <<'PY'
import sys
import numpy as np
np.save(sys.argv[1], np.zeros((32, 64), dtype=np.float32))
PY
refuse "wrong/1.attn.qkv.weight.npy: shape (32, 64), expected (32, 96)" job.json --weights wrong --prompt x
/usr/bin/python3 - wrong/1.attn.qkv.weight.npy <<'PY'
import sys
import numpy as np
np.save(sys.argv[1], np.zeros((32, 96), dtype=np.float64))
PY
refuse "dtype '<f8', expected '<f4'" job.json --weights wrong --prompt x
refuse "sampling needs a text model" "$src/examples/fashion_mnist.json" --weights w --prompt x

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
