#!/usr/bin/env bash
# The bad-input cases of issue 13's probe, each against real daemons on
# loopback: a diverging job FAILs at its step with a reason and stays in
# every JSON surface and across a coordinator restart (non-finite numbers in
# the state file are read back, not dropped); --save-weights and data-set
# sizes are checked at submit (exit 2); a FIFO as data.path, or in its
# folder, is refused; a stop does not hang on a thread blocked opening a
# FIFO; status-socket
# readers are capped per listener (refusal logged and counted, TCP still
# served) and idle ones closed.  Every process it starts is killed on exit.
#
# usage: control_probe.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail
MPARD=$1
CLIENT=$2
SRC=$3
HB=200
DEAD=1000 # idle status-socket readers close after 6 x DEAD
T=$(mktemp -d /tmp/mpar-probe-test.XXXXXX)
# shellcheck source=daemon_lib.sh
. "$SRC/tests/integration/daemon_lib.sh"


spec() { # name lr samples batch [data-json]
    cat <<JSON
{ "name": "$1",
  "model": { "input": 8, "layers": [ {"type": "linear", "out": 16}, {"type": "relu"},
                                      {"type": "linear", "out": 4} ], "loss": "softmax_xent" },
  "data": ${5:-{ \"dataset\": \"synthetic\", \"samples\": $3, \"classes\": 4, \"seed\": 1 \}},
  "parallel": { "pp": 1, "tp": 1, "dp": 1, "micro_batches": 1 },
  "train": { "batch_size": $4, "steps": 6, "optimizer": "sgd", "lr": $2, "seed": 1 } }
JSON
}
spec nan 1e308 64 16 >"$T/nan.json"
spec ok 0.1 64 16 >"$T/ok.json"
spec big 0.1 64 128 >"$T/big.json"
# A data set in Fashion-MNIST's form (64 training images, 16 test ones):
# $T/fm; the same with its training images a FIFO: $T/fmfifo.
python3 - "$T" <<'PY'
import gzip, os, random, struct, sys
t = sys.argv[1]
r = random.Random(1)
def write(d, prefix, n):
    os.makedirs(d, exist_ok=True)
    with gzip.open(f"{d}/{prefix}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + bytes(r.randrange(256) for _ in range(n * 784)))
    with gzip.open(f"{d}/{prefix}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, n) + bytes(r.randrange(10) for _ in range(n)))
for d in ("fm", "fmfifo"):
    write(f"{t}/{d}", "train", 64)
    write(f"{t}/{d}", "t10k", 16)
os.unlink(f"{t}/fmfifo/train-images-idx3-ubyte.gz")
os.mkfifo(f"{t}/fmfifo/train-images-idx3-ubyte.gz")
PY
fm() { echo "{ \"dataset\": \"fashion-mnist\", \"path\": \"$1\" }"; }
spec fmbig 0.1 64 128 "$(fm "$T/fm")" >"$T/fmbig.json"
spec fmfifo 0.1 64 16 "$(fm "$T/fmfifo")" >"$T/fmfifo.json"
mkfifo "$T/fifo"
spec fifo 0.1 64 16 "$(fm "$T/fifo")" >"$T/fifo.json"
sed -i 's/"out": 4/"out": 10/; s/"input": 8/"input": 784/' "$T/fmbig.json" "$T/fmfifo.json" "$T/fifo.json"
# Two pipeline stages on a cluster of one device: PENDING until a second
# node comes, its training images then swapped for a FIFO.
cp -r "$T/fm" "$T/fmswap"
spec swap 0.1 64 16 "$(fm "$T/fmswap")" | sed 's/"input": 8/"input": 784/; s/"out": 4/"out": 10/;
    s/"pp": 1/"pp": 2/' >"$T/swap.json"

# --- serial: the same checks before anything trains -------------------------------
expect_exit 1 "serial run whose loss diverges" "$CLIENT" run "$T/nan.json" --serial
grep -q "loss is NaN at step 2" "$T/err" || fail "serial NaN reason: $(cat "$T/err")"
sed 's/"pp": 1/"pp": 2/' "$T/nan.json" >"$T/nanpp2.json"
TMPDIR=$T expect_exit 1 "local-cluster run (pp 2) whose loss diverges" "$CLIENT" run "$T/nanpp2.json" --timeline none \
    --curve none
grep -q "rank 1 (stage 1, tp 0, dp 0): loss is NaN at step 2" "$T/out" "$T/err" ||
    fail "the last stage does not name the NaN: $(cat "$T/out" "$T/err")"
touch "$T/afile"
expect_exit 2 "serial --save-weights onto a file" "$CLIENT" run "$T/ok.json" --serial --save-weights "$T/afile"
grep -q "not a folder" "$T/err" || fail "no reason: $(cat "$T/err")"
expect_exit 2 "serial --save-weights where nothing can be made" "$CLIENT" run "$T/ok.json" --serial \
    --save-weights /proc/mpar-no/such
expect_exit 0 "serial --save-weights into a missing deep folder" "$CLIENT" run "$T/ok.json" --serial \
    --quiet --save-weights "$T/deep/er/w"
[ -f "$T/deep/er/w/0.weight.npy" ] || fail "the deep folder holds no weights"
expect_exit 2 "cluster run --save-weights onto a file" "$CLIENT" run "$T/ok.json" --save-weights "$T/afile"

# --- a coordinator and one node -------------------------------------------------------
PORT=$(free_port)
S="$T/c.sock"
start_coord() {
    "$MPARD" --name c --coordinator --devices none --listen "127.0.0.1:$PORT" --socket "$S" \
        --state-dir "$T/c" --heartbeat-ms $HB --dead-after-ms $DEAD --log-level info \
        >>"$T/c.log" 2>&1 &
    PID_c=$!
    PIDS+=($!)
    wait_for 10 test -S "$S" || fail "the coordinator did not create its socket"
}
start_coord
"$MPARD" --name n1 --join "127.0.0.1:$PORT" --socket "$T/n1.sock" --state-dir "$T/n1" \
    --devices cpu:1 --heartbeat-ms $HB --dead-after-ms $DEAD >>"$T/n1.log" 2>&1 &
PIDS+=($!)
export MPAR_SOCKET="$S"
one_alive() { [ "$("$CLIENT" nodes -o json | jget 'sum(n["state"]=="ALIVE" for n in d["nodes"])')" = 1 ]; }
wait_for 10 one_alive || fail "n1 never ALIVE"

# --- 1. a diverging job FAILs at its step and is never dropped ------------------------
expect_exit 1 "submit -f of a job whose loss diverges" "$CLIENT" submit "$T/nan.json" -f
NAN_ID=$("$CLIENT" jobs -o json | jget '[j["id"] for j in d["jobs"] if j["name"]=="nan"][0]')
"$CLIENT" status "$NAN_ID" -o json >"$T/nan.out" || true
REASON=$(jget 'd["reason"]' <"$T/nan.out") || fail "status -o json printed no job: $(cat "$T/nan.out")"
echo "$REASON" | grep -Eq "loss is (NaN|[+-]Inf) at step [0-9]+" || fail "reason: $REASON"
[ "$(jget 'd["state"]' <"$T/nan.out")" = FAILED ] || fail "state: $(cat "$T/nan.out")"
printf '{"cmd":"jobs"}\n' | socat -t 2 - "UNIX-CONNECT:$S" | jget "[j['id'] for j in d['jobs']].index('$NAN_ID')" >/dev/null ||
    fail "the JSON status socket's jobs lack job $NAN_ID"
echo "ok the diverged job FAILED ($REASON) and shows everywhere"

# --- 3, 4. checks made at submit -------------------------------------------------------
expect_exit 2 "submit with batch_size larger than the data set" "$CLIENT" submit "$T/big.json"
grep -q "train.batch_size: 128 is larger than the 64 training samples" "$T/err" || fail "reason: $(cat "$T/err")"
expect_exit 2 "submit --save-weights onto a file" "$CLIENT" submit "$T/ok.json" --save-weights "$T/afile"
grep -q "save_weights: .* not a folder" "$T/err" || fail "reason: $(cat "$T/err")"
expect_exit 0 "submit --save-weights into a missing deep folder" "$CLIENT" submit "$T/ok.json" \
    --save-weights "$T/sub/deep/w"
[ -d "$T/sub/deep/w" ] || fail "submit did not make the folder"
expect_exit 2 "submit with a FIFO as data.path" "$CLIENT" submit "$T/fifo.json"
grep -q "data.path: $T/fifo is a FIFO, not a folder" "$T/err" || fail "reason: $(cat "$T/err")"
expect_exit 2 "submit with a FIFO in the data.path folder" "$CLIENT" submit "$T/fmfifo.json"
grep -q "train-images-idx3-ubyte.gz is a FIFO, not a regular file" "$T/err" ||
    fail "reason: $(cat "$T/err")"
expect_exit 2 "submit with batch_size larger than a Fashion-MNIST set" "$CLIENT" submit "$T/fmbig.json"
grep -q "train.batch_size: 128 is larger than the 64 training samples" "$T/err" ||
    fail "reason: $(cat "$T/err")"
expect_exit 2 "serial run with batch_size larger than the data set" "$CLIENT" run "$T/fmbig.json" --serial
grep -q "train.batch_size: 128 is larger than the 64 training samples" "$T/err" ||
    fail "reason: $(cat "$T/err")"
printf '{"cmd":"submit","spec":%s}\n' "$(cat "$T/big.json" | tr -d '\n')" |
    socat -t 5 - "UNIX-CONNECT:$S" >"$T/json.out"
grep -q "is larger than the 64 training samples" "$T/json.out" || fail "JSON submit: $(cat "$T/json.out")"
echo "ok the JSON submit is refused with the same reason"

# --- 2. status-socket readers: idle ones close ---------------------------------------------
python3 - "$S" $((DEAD * 6)) <<'PY' || fail "idle readers"
import socket, sys, time
path, idle_ms = sys.argv[1], int(sys.argv[2])
conns = []
for _ in range(20):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(b"\n"); conns.append(s)
time.sleep(idle_ms / 1000 + 1.5)
for s in conns:
    s.settimeout(2)
    assert s.recv(1) == b"", "an idle reader was not closed"
PY
grep -q "idle status-socket reader" "$T/c.log" || fail "the idle close is not logged"
echo "ok idle status-socket readers are closed after $((DEAD * 6)) ms"

# --- 6. a coordinator whose own loop was starved does not call live nodes DEAD ---------
kill -STOP "$PID_c"
sleep $((DEAD * 3 / 1000))
kill -CONT "$PID_c"
sleep 1
one_alive || fail "n1 is not ALIVE after the coordinator's stall: $("$CLIENT" nodes)"
grep -q "n1: .*-> DEAD" "$T/c.log" && fail "a stalled coordinator declared the live n1 DEAD"
grep -q "event loop ran [0-9]* ms late" "$T/c.log" || fail "the stall is not logged"
echo "ok a starved coordinator reads the waiting heartbeats before judging nodes"

# --- 5. a stop does not wait on a thread blocked opening a FIFO ------------------------------
# The checks at submit pass; the FIFO comes after, as a file on a hung mount
# would: the feeder's open() blocks, and nothing can interrupt it.
SWAP_ID=$("$CLIENT" submit "$T/swap.json" -o json | jget 'd["id"]') || fail "swap job not submitted"
rm "$T/fmswap/train-images-idx3-ubyte.gz"
mkfifo "$T/fmswap/train-images-idx3-ubyte.gz"
"$MPARD" --name n2 --join "127.0.0.1:$PORT" --socket "$T/n2.sock" --state-dir "$T/n2" \
    --devices cpu:1 --heartbeat-ms $HB --dead-after-ms $DEAD >>"$T/n2.log" 2>&1 &
PIDS+=($!)
swap_running() { [ "$("$CLIENT" status "$SWAP_ID" -o json | jget 'd["state"]')" = RUNNING ]; }
wait_for 20 swap_running || fail "the swap job never ran: $("$CLIENT" status "$SWAP_ID")"
sleep 1
STOP_AT=$(now_ms)
kill -TERM "$PID_c"
wait_for 15 bash -c "! kill -0 $PID_c 2>/dev/null" || fail "the coordinator hangs on a blocked thread"
echo "ok the coordinator stopped in $(($(now_ms) - STOP_AT)) ms with a thread blocked on a FIFO"
grep -q "exiting without them" "$T/c.log" || fail "the bounded stop is not logged"
# The next coordinator would block on it again: the file comes back.
rm "$T/fmswap/train-images-idx3-ubyte.gz"
cp "$T/fm/train-images-idx3-ubyte.gz" "$T/fmswap/"

# --- 1 (again). restart: the diverged job is still there; non-finite numbers load back -------
start_coord
"$CLIENT" status "$NAN_ID" -o json >"$T/nan2.out" || true
[ "$(jget 'd["state"]' <"$T/nan2.out")" = FAILED ] || fail "after a restart: $(cat "$T/nan2.out")"
kill -TERM "$PID_c"
wait_for 10 bash -c "! kill -0 $PID_c 2>/dev/null" || fail "the coordinator did not stop"
python3 - "$T/c/jobs.json" "$NAN_ID" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
j = [j for j in st["jobs"] if j["id"] == sys.argv[2]][0]
j["final_loss"] = "NaN"
j["losses"] = [1.5, "Infinity", "-Infinity", "NaN"]
json.dump(st, open(sys.argv[1], "w"))
PY
start_coord
"$CLIENT" status "$NAN_ID" -o json >"$T/nan3.out" || true
python3 - "$T/nan3.out" <<'PY' || fail "non-finite numbers after a reload: $(cat "$T/nan3.out")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["final_loss"] == "NaN", d["final_loss"]
assert d["losses"] == [1.5, "Infinity", "-Infinity", "NaN"], d["losses"]
PY
"$CLIENT" jobs -o json | jget "[j['id'] for j in d['jobs']].index('$NAN_ID')" >/dev/null ||
    fail "jobs -o json drops the job with non-finite numbers"
echo "ok non-finite numbers survive the state file as \"NaN\"/\"Infinity\" strings"

# --- 2. the cap on one listener: refused, logged, counted; TCP still served ------------------
kill -TERM "$PID_c"
wait_for 10 bash -c "! kill -0 $PID_c 2>/dev/null" || fail "the coordinator did not stop"
(ulimit -n 256 && exec "$MPARD" --name c --coordinator --devices none --listen "127.0.0.1:$PORT" \
    --socket "$S" --state-dir "$T/c" --heartbeat-ms $HB --dead-after-ms $DEAD) >>"$T/c.log" 2>&1 &
PID_c=$!
PIDS+=($!)
wait_for 10 test -S "$S" || fail "the coordinator did not come back"
# A user who may only read holds a share of the socket (a cap of 32 here:
# 8), not all of it; blank lines are no requests and keep no reader open.
if command -v runuser >/dev/null && id nobody >/dev/null 2>&1 && chmod 0755 "$T" &&
    runuser -u nobody -- python3 -c 1 2>/dev/null; then
    chgrp "$(id -gn nobody)" "$S"
    runuser -u nobody -- python3 - "$S" $((DEAD * 6)) >"$T/nobody.out" 2>&1 <<'PY' &
import socket, sys, time
path, idle_ms = sys.argv[1], int(sys.argv[2])
conns = [socket.socket(socket.AF_UNIX) for _ in range(20)]
for s in conns:
    s.connect(path)
    try:
        s.sendall(b"\n")
    except OSError:
        pass
time.sleep(0.5)
open_ = []
for s in conns:
    s.setblocking(False)
    try:
        s.recv(1)  # a closed one reads b"" (or a reset)
    except BlockingIOError:
        open_.append(s)
    except OSError:
        pass
print("open", len(open_))
assert len(open_) == 8, len(open_)
end = time.time() + idle_ms / 1000 + 1.5  # blank lines the whole time
while time.time() < end and open_:
    for s in list(open_):
        try:
            s.sendall(b"\n")
        except OSError:
            open_.remove(s)
    time.sleep(0.5)
print("left", len(open_))
assert not open_, "blank lines kept a reader open"
PY
    NOBODY=$!
    sleep 1
    "$CLIENT" nodes >/dev/null || fail "root cannot use the socket while nobody floods it"
    wait "$NOBODY" || fail "nobody's share: $(cat "$T/nobody.out")"
    grep -q "holds 8 status-socket connections, its share" "$T/c.log" ||
        fail "the share's refusal is not logged"
    echo "ok one reading user holds 8 of the socket's connections; root still gets in; blank lines keep none"
else
    echo "skip the per-user share (no runuser or user nobody)"
fi
python3 - "$S" "127.0.0.1:$PORT" "$CLIENT" <<'PY' || fail "capped listener"
import json, socket, subprocess, sys, time
path, tcp, client = sys.argv[1:]
conns = []
refused = 0
for _ in range(200):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)  # the kernel's backlog takes it; mpard decides after
    try:
        s.sendall(b"\n")
    except OSError:
        refused += 1
    conns.append(s)
time.sleep(0.5)
# Nodes and clients over TCP are not starved by the socket's readers.
r = subprocess.run([client, "--connect", tcp, "-o", "json", "nodes"], capture_output=True, timeout=20)
assert r.returncode == 0, r.stderr
for s in conns:
    s.close()
time.sleep(0.5)
s = socket.socket(socket.AF_UNIX); s.connect(path); s.sendall(b'{"cmd":"metrics"}\n')
buf = b""
while not buf.endswith(b"\n"):
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
m = json.loads(buf)["metrics"]
line = [l for l in m.splitlines() if l.startswith('mpar_connections_refused_total{listener="unix"}')]
assert line and float(line[0].split()[-1]) >= 100, line
print("refused:", line[0])
PY
grep -q "listener at its cap" "$T/c.log" || fail "the refusal is not logged"
echo "ok the Unix socket's readers are capped (logged, counted), TCP still served"
echo PASS
