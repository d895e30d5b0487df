# engine_daemon_lib.sh - shared by the engine_daemon_* integration tests
# (sourced): a coordinator and nodes of mpard on loopback, each with its own
# port, sockets and state dirs under one mktemp dir; every process started
# is killed on exit (daemon_lib.sh); the weights and losses checks come
# from equiv_lib.sh.  Needs MPARD, CLIENT, SRC set and T made by the caller.

HB=${HB:-200}
DEAD=${DEAD:-1000}
# shellcheck source=daemon_lib.sh
. "$SRC/tests/integration/daemon_lib.sh"
# shellcheck source=equiv_lib.sh
. "$SRC/tests/integration/equiv_lib.sh"

PORT=$(free_port)
COMMON=(--heartbeat-ms "$HB" --dead-after-ms "$DEAD" --log-level debug)

start_coord() {
    "$MPARD" --name c0 --coordinator --listen "127.0.0.1:$PORT" --devices none \
        --socket "$T/c0.sock" --state-dir "$T/c0" "${COMMON[@]}" >>"$T/c0.log" 2>&1 &
    PIDS+=($!)
    PID_c0=$!
    wait_for 5 test -S "$T/c0.sock" || fail "the coordinator did not create its socket"
}

start_node() { # name devices
    "$MPARD" --name "$1" --join "127.0.0.1:$PORT" --socket "$T/$1.sock" --state-dir "$T/$1" \
        --devices "$2" "${COMMON[@]}" >>"$T/$1.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$1=$!"
}

alive_count() { "$CLIENT" nodes -o json | jget 'sum(1 for n in d["nodes"] if n["state"]=="ALIVE")'; }

wait_alive() { # count
    local want=$1
    n_alive() { [ "$(alive_count)" = "$want" ]; }
    wait_for 10 n_alive || fail "$want nodes never ALIVE: $("$CLIENT" nodes)"
}

stop_daemons() { # pid...: SIGTERM to each; each must exit within 10 s
    local p
    for p in "$@"; do kill -TERM "$p"; done
    for p in "$@"; do
        timeout 10 tail --pid="$p" -f /dev/null || fail "mpard $p did not stop"
    done
}

job_field() { # id expr (status exits 1 for a FAILED job: the document still comes)
    { "$CLIENT" status "$1" -o json || true; } | jget "$2"
}

# Writes a job spec: spec FILE NAME PP TP DP M SCHEDULE OPTIMIZER STEPS [SAMPLES]
# (SCHEDULE interleaved_1f1b:V: V chunks per stage, parallel.virtual_stages)
spec() {
    python3 - "$@" <<'PY'
import json, sys
f, name, pp, tp, dp, m, sched, opt, steps = sys.argv[1:10]
samples = int(sys.argv[10]) if len(sys.argv) > 10 else 240
train = {"batch_size": 24, "steps": int(steps), "optimizer": opt, "seed": 4, "shuffle": True}
if opt == "sgd":
    train.update({"lr": 0.1, "momentum": 0.9})
else:
    train.update({"lr": 0.01, "weight_decay": 0.01})
d = {"name": name,
     "model": {"input": 12, "layers": [
         {"type": "linear", "out": 16}, {"type": "gelu"},
         {"type": "linear", "out": 16}, {"type": "relu"},
         {"type": "mlp_block", "hidden": 16, "ffn": 32},
         {"type": "linear", "out": 6}], "loss": "softmax_xent"},
     "data": {"dataset": "synthetic", "samples": samples, "test_samples": 30, "classes": 6,
              "seed": 9},
     "parallel": {"pp": int(pp), "tp": int(tp), "dp": int(dp), "micro_batches": int(m),
                  "schedule": sched},
     "train": train}
if ":" in sched:  # "interleaved_1f1b:V": V chunks per stage
    d["parallel"]["schedule"], v = sched.split(":")
    d["parallel"]["virtual_stages"] = int(v)
if "/" in sched:  # "zero_bubble/K": parallel.fuse_w K
    d["parallel"]["schedule"], k = sched.split("/")
    d["parallel"]["fuse_w"] = int(k)
json.dump(d, open(f, "w"))
PY
}

# The text of the GPT specs: Debian's copy of the GPL, on every Debian system.
GPT_TEXT=/usr/share/common-licenses/GPL-3

# Writes a small byte-level GPT spec (embedding, two transformer blocks,
# layernorm, vocab head; 8 windows of 8 bytes a step):
# gpt_spec FILE NAME PP TP DP M SCHEDULE OPTIMIZER [STEPS]
gpt_spec() {
    [ -r "$GPT_TEXT" ] || fail "no $GPT_TEXT"
    python3 - "$1" "$2" "$3" "$4" "$5" "$6" "$7" "$8" "${9:-4}" "$GPT_TEXT" <<'PY'
import json, sys
f, name, pp, tp, dp, m, sched, opt, steps, text = sys.argv[1:11]
train = {"batch_size": 8, "steps": int(steps), "optimizer": opt, "seed": 5, "shuffle": True}
if opt == "sgd":
    train.update({"lr": 0.05, "momentum": 0.9})
else:
    # eps 1e-6: the K third of attn.qkv.bias has a zero gradient in exact
    # arithmetic, and at eps 1e-8 AdamW would move it by ±lr on float noise.
    train.update({"lr": 0.003, "weight_decay": 0.01, "eps": 1e-6})
d = {"name": name,
     "model": {"layers": [
         {"type": "embedding", "vocab": 256, "dim": 16, "max_seq": 12},
         {"type": "transformer_block", "heads": 2, "ffn": 24},
         {"type": "transformer_block", "heads": 2, "ffn": 24},
         {"type": "layernorm"},
         {"type": "linear", "out": 256}], "loss": "softmax_xent"},
     "data": {"dataset": "text", "path": text, "block_size": 8},
     "parallel": {"pp": int(pp), "tp": int(tp), "dp": int(dp), "micro_batches": int(m),
                  "schedule": sched},
     "train": train}
if ":" in sched:  # "interleaved_1f1b:V": V chunks per stage
    d["parallel"]["schedule"], v = sched.split(":")
    d["parallel"]["virtual_stages"] = int(v)
if "/" in sched:  # "zero_bubble/K": parallel.fuse_w K
    d["parallel"]["schedule"], k = sched.split("/")
    d["parallel"]["fuse_w"] = int(k)
json.dump(d, open(f, "w"))
PY
}
