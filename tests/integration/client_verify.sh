#!/usr/bin/env bash
# mpar-client verify: a zero_bubble job on pp=2 x tp=2, an interleaved_1f1b
# job (2 chunks a stage) on pp=2 x tp=2 and an AdamW job on pp=2 x dp=2
# each equal their serial run within the optimizer's tolerance
# (exit 0, "OK", -o json with every tensor's difference at most the
# tolerance); a bad spec (tp 3; interleaved with 3 micro-batches on 2
# stages) is refused with exit 2 naming the field; nothing is
# left behind (no mpard, no temporary folder).
# usage: client_verify.sh BUILD_BIN_DIR
set -u
bin=$(cd "$1" && pwd)
work=$(mktemp -d /tmp/mpar-test-verify.XXXXXX)
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
passed=0
failed=0
cleanup() {
  pkill -KILL -f "$work" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ok()  { echo "PASS $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

job() { # name parallel optimizer
  cat > "$work/$1.json" <<JSON
{"name": "$1", "model": {"input": 24, "layers": [
   {"type": "linear", "out": 32}, {"type": "gelu"},
   {"type": "mlp_block", "hidden": 32, "ffn": 64}, {"type": "relu"},
   {"type": "linear", "out": 5}]},
 "data": {"dataset": "synthetic", "samples": 256, "classes": 5, "seed": 4},
 "parallel": $2,
 "train": {"batch_size": 32, "epochs": 2, "optimizer": "$3", "lr": 0.05, "seed": 2}}
JSON
}
job zb '{"pp": 2, "tp": 2, "micro_batches": 4, "schedule": "zero_bubble"}' sgd
job aw '{"pp": 2, "dp": 2, "micro_batches": 2, "schedule": "1f1b"}' adamw
job il '{"pp": 2, "tp": 2, "micro_batches": 4, "schedule": "interleaved_1f1b", "virtual_stages": 2}' sgd

out=$(timeout 120 "$bin/mpar-client" verify "$work/il.json" --steps 3 2>"$work/il.err")
rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q "(interleaved_1f1b).*tolerance 1e-05 (sgd): OK"; then
  ok "interleaved_1f1b pp2 x tp2, 2 chunks a stage: $out"
else
  bad "interleaved_1f1b verify: rc $rc: $out $(cat "$work/il.err")"
fi
sed 's/"micro_batches": 4/"micro_batches": 3/' "$work/il.json" > "$work/il3.json"
err=$("$bin/mpar-client" verify "$work/il3.json" 2>&1)
rc=$?
if [ $rc -eq 2 ] && echo "$err" | grep -q "parallel.micro_batches: 3 is not a multiple of parallel.pp = 2"; then
  ok "interleaved with 3 micro-batches on 2 stages refused (2): $err"
else
  bad "interleaved m=3: rc $rc: $err"
fi

out=$(timeout 120 "$bin/mpar-client" verify "$work/zb.json" --steps 4 2>"$work/zb.err")
rc=$?
if [ $rc -eq 0 ] && echo "$out" | grep -q "tolerance 1e-05 (sgd): OK"; then
  ok "zero_bubble pp2 x tp2: $out"
else
  bad "zero_bubble verify: rc $rc: $out $(cat "$work/zb.err")"
fi

timeout 120 "$bin/mpar-client" verify "$work/aw.json" -o json >"$work/aw.out" 2>"$work/aw.err"
rc=$?
if [ $rc -eq 0 ] && python3 - "$work/aw.out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ok"] and d["optimizer"] == "adamw" and d["tolerance"] == 1e-3, d
assert d["steps"] == 5 and d["tensors"] == 8 and len(d["per_tensor"]) == 8, d
assert all(t["rel_diff"] is not None and t["rel_diff"] <= 1e-3 for t in d["per_tensor"]), d
assert d["worst_rel_diff"] == max(t["rel_diff"] for t in d["per_tensor"]), d
PY
then
  ok "adamw pp2 x dp2, 5 steps by default, -o json"
else
  bad "adamw verify: rc $rc: $(cat "$work/aw.out" "$work/aw.err")"
fi

sed 's/"tp": 2/"tp": 3/' "$work/zb.json" > "$work/bad.json"
err=$("$bin/mpar-client" verify "$work/bad.json" 2>&1)
rc=$?
if [ $rc -eq 2 ] && echo "$err" | grep -q "parallel.tp"; then
  ok "bad spec refused (2): $err"
else
  bad "bad spec: rc $rc: $err"
fi

left=$(pgrep -f "mpard.*$TMPDIR" | wc -l)
folders=$(find "$TMPDIR" -mindepth 1 -maxdepth 1 | wc -l)
if [ "$left" -eq 0 ] && [ "$folders" -eq 0 ]; then
  ok "no mpard and no temporary folder left"
else
  bad "$left mpard left, $folders entries in TMPDIR: $(ls "$TMPDIR")"
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
