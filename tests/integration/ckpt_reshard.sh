#!/usr/bin/env bash
# Checkpoints across grids, on a coordinator and 4 nodes of 2 CPU devices:
# a checkpoint taken at pp 2 x tp 2 (10 of 20 steps, AdamW, at an epoch's
# end) resumed at pp 1 x tp 1 and at pp 4 x dp 2 gives the serial run's
# weights and loss curve within AdamW's tolerance (1e-3); `export` of the
# checkpoint equals the serial run of 10 steps; a relative checkpoint.dir is
# the spec's folder's.  A small GPT's checkpoint taken mid-epoch at pp 2 x tp 2
# (heads and vocab split) resumed at pp 1 x tp 1 and pp 4 x dp 2 equals its
# serial run too, and resumed on its own grid but another cut equals the
# uninterrupted run bit for bit.  Under interleaved_1f1b a stage writes its
# chunks into its one file: a 1f1b checkpoint resumes with 3 chunks a stage
# and a 2-chunk one under 1f1b, equal to serial.  Refused before anything starts (exit 2, naming what
# is wrong): a spec whose model differs (the field), a truncated shard file
# and a manifest naming a missing file (the file).  Serial runs write and
# read the same checkpoints (a grid of one): the pp 2 x tp 2 checkpoints of
# the MLP and the GPT resumed serially equal serial; a serial checkpoint
# taken mid-epoch resumes serially bit for bit and at pp 2 x tp 2 equal to
# serial; the same bad checkpoints are refused by `run --serial` (exit 2).
#
# usage: ckpt_reshard.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-ckpt-reshard.XXXXXX)
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"
export MPAR_SOCKET="$T/c0.sock"

start_coord
for n in n1 n2 n3 n4; do start_node "$n" cpu:2; done
wait_alive 4

# with_ckpt FILE DIR EVERY: adds a checkpoint section to a spec.
with_ckpt() {
    python3 - "$@" <<'PY'
import json, sys
f, d, every = sys.argv[1:4]
s = json.load(open(f))
s["checkpoint"] = {"dir": d, "every_steps": int(every)}
json.dump(s, open(f, "w"))
PY
}

submit_ok() { # label args...: submit -f, must SUCCEED; the document on stdout
    local label=$1
    shift
    set +e
    timeout 120 "$CLIENT" submit "$@" -f -o json 2>"$T/$label.err"
    local rc=$?
    set -e
    [ $rc = 0 ] || fail "$label: exit $rc: $(tail -5 "$T/$label.err")"
}

# --- the checkpoint: pp 2 x tp 2, 10 steps (the first epoch) ------------------------
spec "$T/half.json" half 2 2 1 4 1f1b adamw 10
with_ckpt "$T/half.json" "$T/ck" 5
submit_ok half "$T/half.json" >"$T/half.out"
[ "$(cat "$T/ck/latest")" = step-00000010 ] || fail "latest: $(cat "$T/ck/latest")"

# --- the ground truth: serial, 20 steps and 10 steps --------------------------------
spec "$T/full.json" full 1 1 1 1 1f1b adamw 20
timeout 120 "$CLIENT" run "$T/full.json" --serial -o json --save-weights "$T/ws" >"$T/serial.out" ||
    fail "serial run"
spec "$T/ten.json" ten 1 1 1 1 1f1b adamw 10
timeout 120 "$CLIENT" run "$T/ten.json" --serial --save-weights "$T/ws10" >/dev/null ||
    fail "serial run of 10 steps"

# --- reshards ----------------------------------------------------------------------
# reshards WHAT SPEC_FN CKDIR FROM STEPS REF_WEIGHTS REF_OUT: the checkpoint in
# CKDIR (step FROM) resumed to STEPS at pp 1 x tp 1 and at pp 4 x dp 2 equals
# the serial run (its weights and loss curve) within AdamW's tolerance.
reshards() {
    local what=$1 spec_fn=$2 ck=$3 from=$4 steps=$5 ref=$6 ref_out=$7 grid
    for grid in "1 1 1 1" "4 1 2 2"; do
        set -- $grid
        local n="$what$1$2$3"
        "$spec_fn" "$T/$n.json" "$n" "$1" "$2" "$3" "$4" 1f1b adamw "$steps"
        submit_ok "$n" "$T/$n.json" --resume "$ck" --save-weights "$T/w-$n" >"$T/$n.out"
        [ "$(jget 'd["resumed_from_step"]' <"$T/$n.out")" = "$from" ] ||
            fail "$what pp $1 dp $3: resumed_from_step"
        [ "$(jget 'd["steps"]' <"$T/$n.out")" = "$steps" ] || fail "$what pp $1 dp $3: steps"
        ERR=$(compare "$ref" "$T/w-$n" 1e-3) || fail "$what pp $1 tp $2 dp $3: $ERR"
        losses "$T/$n.out" "$ref_out" 1e-3 || fail "$what pp $1 tp $2 dp $3: loss curve"
        echo "ok $what pp 2 x tp 2 checkpoint (step $from) resumed at pp $1, tp $2, dp $3" \
            "equals serial: $ERR"
    done
}
reshards MLP spec "$T/ck" 10 20 "$T/ws" "$T/serial.out"

# --- interleaved_1f1b: a stage's chunks in its one file, resumed across v -------------
# The pp 2 x tp 2 (1f1b) checkpoint resumed at pp 2 x dp 2 with 3 chunks a stage,
# and a checkpoint written with 2 chunks a stage resumed under 1f1b: the layer
# names map as on any grid.
spec "$T/ri.json" ri 2 1 2 2 interleaved_1f1b:3 adamw 20
submit_ok ri "$T/ri.json" --resume "$T/ck" --save-weights "$T/wri" >"$T/ri.out"
ERR=$(compare "$T/ws" "$T/wri" 1e-3) || fail "interleaved resume: $ERR"
losses "$T/ri.out" "$T/serial.out" 1e-3 || fail "interleaved resume: loss curve"
echo "ok pp 2 x tp 2 (1f1b) checkpoint resumed at pp 2 x dp 2 under interleaved_1f1b (3 chunks) equals serial: $ERR"
spec "$T/ihalf.json" ihalf 2 2 1 4 interleaved_1f1b:2 adamw 10
with_ckpt "$T/ihalf.json" "$T/ick" 10
submit_ok ihalf "$T/ihalf.json" >/dev/null
[ "$(cat "$T/ick/latest")" = step-00000010 ] || fail "interleaved latest: $(cat "$T/ick/latest")"
[ "$(ls "$T/ick/step-00000010" | grep -c safetensors)" = 4 ] ||
    fail "interleaved: expected one file per stage and tp rank: $(ls "$T/ick/step-00000010")"
spec "$T/rf.json" rf 2 1 2 2 1f1b adamw 20
submit_ok rf "$T/rf.json" --resume "$T/ick" --save-weights "$T/wrf" >"$T/rf.out"
ERR=$(compare "$T/ws" "$T/wrf" 1e-3) || fail "resume of an interleaved checkpoint: $ERR"
losses "$T/rf.out" "$T/serial.out" 1e-3 || fail "resume of an interleaved checkpoint: loss curve"
echo "ok pp 2 x tp 2 interleaved_1f1b (2 chunks) checkpoint resumed at pp 2 x dp 2 under 1f1b equals serial: $ERR"

# --- export -----------------------------------------------------------------------
"$CLIENT" export "$T/ck" "$T/x" >/dev/null || fail "export"
ERR=$(compare "$T/ws10" "$T/x" 1e-3) || fail "export: $ERR"
"$CLIENT" export "$T/ck" "$T/xs" --format safetensors >/dev/null || fail "export safetensors"
python3 - "$T/xs/model.safetensors" <<'PY' || fail "export: not safetensors"
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
assert h["4.fc1.weight"]["shape"] == [16, 32] and h["5.bias"]["shape"] == [6], h
assert max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__") == len(b) - 8 - n
PY
echo "ok export equals the serial run of 10 steps: $ERR"
# -o json before or after the command: the same document, the same tensors.
"$CLIENT" -o json export "$T/ck" "$T/xa" >"$T/xa.json" || fail "export, -o json before"
"$CLIENT" export "$T/ck" "$T/xb" -o json >"$T/xb.json" || fail "export, -o json after"
python3 - "$T/xa.json" "$T/xb.json" <<'PY' || fail "export -o json differs by the option's place"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["step"] == b["step"] == 10, (a, b)
assert {k: v for k, v in a.items() if k not in ("out", "dir", "files", "path")} == \
    {k: v for k, v in b.items() if k not in ("out", "dir", "files", "path")}, (a, b)
PY
compare "$T/xa" "$T/xb" 0 >/dev/null || fail "export in both orders: tensors differ"
echo "ok export -o json in both orders"

# --- a relative checkpoint.dir is the spec's folder's -----------------------------------
mkdir -p "$T/sub"
spec "$T/sub/rel.json" rel 2 2 1 4 1f1b adamw 5
with_ckpt "$T/sub/rel.json" relck 5
(cd / && submit_ok rel "$T/sub/rel.json" >/dev/null)
[ -f "$T/sub/relck/latest" ] || fail "relative checkpoint.dir: nothing in $T/sub/relck"
echo "ok a relative checkpoint.dir is under the spec's folder"

# --- a GPT: heads and vocab split at tp 2, resumed mid-epoch on other grids ----------------
stages() { # FILE STAGES: parallel.stages = STAGES (comma-separated)
    python3 - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["parallel"]["stages"] = [int(x) for x in sys.argv[2].split(",")]
json.dump(s, open(sys.argv[1], "w"))
PY
}
gpt_spec "$T/g-half.json" g-half 2 2 1 2 1f1b adamw 4
stages "$T/g-half.json" 2,3
with_ckpt "$T/g-half.json" "$T/gck" 4
submit_ok g-half "$T/g-half.json" >/dev/null
[ "$(cat "$T/gck/latest")" = step-00000004 ] || fail "GPT latest: $(cat "$T/gck/latest")"
gpt_spec "$T/g-full.json" g-full 1 1 1 1 1f1b adamw 8
timeout 120 "$CLIENT" run "$T/g-full.json" --serial -o json --save-weights "$T/gws" \
    >"$T/g-serial.out" || fail "GPT serial run"
reshards GPT gpt_spec "$T/gck" 4 8 "$T/gws" "$T/g-serial.out"

# --- the same grid, another cut: bit for bit --------------------------------------------
# The checkpoint's cut 2 | 3 against 3 | 2:
# a layer's arithmetic does not depend on its stage, so the resumed run
# equals the uninterrupted one on that grid exactly.
gpt_spec "$T/g-cut.json" g-cut 2 2 1 2 1f1b adamw 8
stages "$T/g-cut.json" 3,2
submit_ok g-cut "$T/g-cut.json" --resume "$T/gck" --save-weights "$T/gwcut" >/dev/null
gpt_spec "$T/g-whole.json" g-whole 2 2 1 2 1f1b adamw 8
submit_ok g-whole "$T/g-whole.json" --save-weights "$T/gwwhole" >/dev/null
compare "$T/gwwhole" "$T/gwcut" 0 >/dev/null || fail "GPT resumed on another cut: not bit-equal"
echo "ok GPT resumed at pp 2 x tp 2 on another cut (3 | 2) equals the uninterrupted run bit for bit"

# --- refusals ------------------------------------------------------------------------
refused() { # label needle args...: submit exits 2 and says needle
    local label=$1 needle=$2
    shift 2
    set +e
    "$CLIENT" submit "$@" >"$T/$label.out" 2>"$T/$label.err"
    local rc=$?
    set -e
    [ $rc = 2 ] || fail "$label: exit $rc, not 2: $(cat "$T/$label.err")"
    grep -qF -- "$needle" "$T/$label.err" || fail "$label: '$needle' not in: $(cat "$T/$label.err")"
    echo "ok $label refused: $(cat "$T/$label.err")"
}
python3 - "$T/MLP111.json" "$T/bigger.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
s["model"]["layers"][4]["ffn"] = 64
json.dump(s, open(sys.argv[2], "w"))
PY
refused "a different model" "model.layers[4].ffn: 64" "$T/bigger.json" --resume "$T/ck"
cp -r "$T/ck" "$T/ck-cut"
F="$T/ck-cut/step-00000010/shard-s01-t00.safetensors"
truncate -s -5 "$F"
refused "a truncated shard file" "$F" "$T/MLP111.json" --resume "$T/ck-cut"
cp -r "$T/ck" "$T/ck-gone"
F="$T/ck-gone/step-00000010/shard-s00-t01.safetensors"
rm "$F"
refused "a manifest naming a missing file" "$F" "$T/MLP111.json" --resume "$T/ck-gone"
refused "no checkpoint" "no committed checkpoint" "$T/MLP111.json" --resume "$T/sub"

# --- serial runs write and read the same checkpoints ------------------------------------
serial_ok() { # label args...: run --serial, must SUCCEED; the document on stdout
    local label=$1
    shift
    set +e
    timeout 120 "$CLIENT" run "$@" --serial -o json 2>"$T/$label.err"
    local rc=$?
    set -e
    [ $rc = 0 ] || fail "$label: exit $rc: $(tail -5 "$T/$label.err")"
}
# The pp 2 x tp 2 checkpoint (step 10) resumed by a serial run: the serial run's weights.
serial_ok s-res "$T/full.json" --resume "$T/ck" --save-weights "$T/w-sres" >"$T/s-res.out"
[ "$(jget 'd["resumed_from_step"]' <"$T/s-res.out")" = 10 ] || fail "serial resume: resumed_from_step"
ERR=$(compare "$T/ws" "$T/w-sres" 1e-3) || fail "serial resume of pp 2 x tp 2: $ERR"
losses "$T/s-res.out" "$T/serial.out" 1e-3 || fail "serial resume of pp 2 x tp 2: loss curve"
echo "ok pp 2 x tp 2 checkpoint (step 10) resumed by a serial run equals serial: $ERR"
# A serial run's checkpoints, mid-epoch (every 5 of 7 steps: step 5 is the latest), on a
# grid of one: resumed serially the run equals the uninterrupted one bit for bit, and
# resumed at pp 2 x tp 2 it equals serial.
spec "$T/s-half.json" s-half 2 2 1 4 1f1b adamw 7
with_ckpt "$T/s-half.json" "$T/sck" 5
serial_ok s-half "$T/s-half.json" >"$T/s-half.out"
[ "$(cat "$T/sck/latest")" = step-00000005 ] || fail "serial latest: $(cat "$T/sck/latest")"
[ "$(jget 'd["checkpoints"]' <"$T/s-half.out")" = 1 ] || fail "serial: checkpoints committed"
[ "$(ls "$T/sck/step-00000005")" = "$(printf 'manifest.json\nshard-s00-t00.safetensors')" ] ||
    fail "serial checkpoint files: $(ls "$T/sck/step-00000005")"
[ "$(jget '[d["grid"][k] for k in ("pp", "tp", "dp")]' <"$T/sck/step-00000005/manifest.json")" = \
    "[1, 1, 1]" ] || fail "serial checkpoint: grid"
serial_ok s-again "$T/full.json" --resume "$T/sck" --save-weights "$T/w-sagain" >"$T/s-again.out"
compare "$T/ws" "$T/w-sagain" 0 >/dev/null || fail "serial checkpoint resumed serially: not bit-equal"
losses "$T/s-again.out" "$T/serial.out" 0 || fail "serial checkpoint resumed serially: loss curve"
echo "ok a serial checkpoint (step 5 of 7, mid-epoch) resumed serially equals the uninterrupted run bit for bit"
spec "$T/s-grid.json" s-grid 2 2 1 4 1f1b adamw 20
submit_ok s-grid "$T/s-grid.json" --resume "$T/sck" --save-weights "$T/w-sgrid" >"$T/s-grid.out"
[ "$(jget 'd["resumed_from_step"]' <"$T/s-grid.out")" = 5 ] || fail "cluster resume of serial: step"
ERR=$(compare "$T/ws" "$T/w-sgrid" 1e-3) || fail "serial checkpoint resumed at pp 2 x tp 2: $ERR"
losses "$T/s-grid.out" "$T/serial.out" 1e-3 || fail "serial checkpoint at pp 2 x tp 2: loss curve"
echo "ok a serial checkpoint resumed at pp 2 x tp 2 equals serial: $ERR"
# A write that fails (the folder's parent is a file) is a warning: the run goes on.
touch "$T/a-file"
spec "$T/s-bad.json" s-bad 1 1 1 1 1f1b adamw 10
with_ckpt "$T/s-bad.json" "$T/a-file/ck" 5
serial_ok s-bad "$T/s-bad.json" >"$T/s-bad.out"
[ "$(jget '(d["checkpoints"], d["checkpoint_failures"])' <"$T/s-bad.out")" = "(0, 2)" ] ||
    fail "serial failed writes: $(cat "$T/s-bad.out")"
grep -q "the checkpoint of step 5: .*a-file.*training goes on" "$T/s-bad.err" ||
    fail "serial failed write: no warning naming the folder: $(cat "$T/s-bad.err")"
echo "ok a serial checkpoint that cannot be written is a warning: $(grep -m1 'step 5' "$T/s-bad.err")"
# The GPT's pp 2 x tp 2 checkpoint (heads and vocab split, mid-epoch) resumed serially.
serial_ok g-sres "$T/g-full.json" --resume "$T/gck" --save-weights "$T/gw-sres" >"$T/g-sres.out"
ERR=$(compare "$T/gws" "$T/gw-sres" 1e-3) || fail "GPT serial resume: $ERR"
losses "$T/g-sres.out" "$T/g-serial.out" 1e-3 || fail "GPT serial resume: loss curve"
echo "ok GPT pp 2 x tp 2 checkpoint (step 4) resumed by a serial run equals serial: $ERR"
# Refused before anything trains, as a submit is.
serial_refused() { # label needle args...: run --serial exits 2 and says needle
    local label=$1 needle=$2
    shift 2
    set +e
    "$CLIENT" run "$@" --serial >"$T/$label.out" 2>"$T/$label.err"
    local rc=$?
    set -e
    [ $rc = 2 ] || fail "serial $label: exit $rc, not 2: $(cat "$T/$label.err")"
    grep -qF -- "$needle" "$T/$label.err" ||
        fail "serial $label: '$needle' not in: $(cat "$T/$label.err")"
    echo "ok serial $label refused: $(cat "$T/$label.err")"
}
serial_refused "a different model" "model.layers[4].ffn: 64" "$T/bigger.json" --resume "$T/ck"
serial_refused "no checkpoint" "no committed checkpoint" "$T/full.json" --resume "$T/sub"
serial_refused "a truncated shard file" "$T/ck-cut/step-00000010/shard-s01-t00.safetensors" \
    "$T/full.json" --resume "$T/ck-cut"
spec "$T/short.json" short 1 1 1 1 1f1b adamw 3
serial_refused "a run that ends before the checkpoint" "train.steps" "$T/short.json" --resume "$T/ck"

stop_daemons "$PID_c0" "$PID_n1" "$PID_n2" "$PID_n3" "$PID_n4"
echo "PASS"
