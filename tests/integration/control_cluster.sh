#!/usr/bin/env bash
# Integration test of the control plane: a coordinator and 3 nodes on
# loopback, each with its own port, socket and state dir under one mktemp
# dir, and a cluster secret.  Proves: READY=1 only after registration;
# `nodes -o json` shows 3 ALIVE; kill -9 of a node -> DEAD within dead-after
# plus one heartbeat; its restart -> ALIVE again; a bad spec is refused with
# its field path (exit 2), and so is a text job whose file is missing or
# too short (checked off the loop, framed and JSON submits alike); a good
# one queues PENDING with a reason; auth
# failures exit 4; every bad input closes only that connection and mpard
# still answers; metrics pass promtool; SIGHUP keeps the old config on error;
# SIGTERM stops with 0 and the node is LEFT; jobs survive a coordinator
# restart and a RUNNING one becomes FAILED.  Every process it starts is
# killed on exit.
#
# usage: control_cluster.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
HB=200
DEAD=1000
T=$(mktemp -d /tmp/mpar-ctl-test.XXXXXX)
# shellcheck source=daemon_lib.sh
. "$SRC/tests/integration/daemon_lib.sh"

status_req() { # socket -> the status JSON
    printf '{"cmd":"status"}\n' | timeout 5 socat -t 2 - "UNIX-CONNECT:$1"
}

assert_alive_daemon() { # after a bad input: mpard still answers
    local out
    out=$(status_req "$T/c0.sock") || fail "no status reply after $1"
    [ "$(echo "$out" | jget 'd["ok"]')" = True ] || fail "status not ok after $1: $out"
}

notify_listener() { # path log: records every datagram with a timestamp
    python3 - "$1" "$2" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as f:
    while True:
        msg = s.recv(4096).decode(errors="replace")
        for line in msg.split("\n"):
            f.write("%d %s\n" % (int(time.time() * 1000), line))
PY
    PIDS+=($!)
}

SECRET="$T/secret"
head -c 32 /dev/urandom | base64 >"$SECRET"
chmod 0400 "$SECRET"
WRONG="$T/wrong"
head -c 32 /dev/urandom | base64 >"$WRONG"
chmod 0400 "$WRONG"
PORT=$(free_port)
COMMON=(--heartbeat-ms $HB --dead-after-ms $DEAD --secret-file "$SECRET" --log-level debug)

start_node() { # name
    NOTIFY_SOCKET="$T/$1.notify" "$MPARD" --name "$1" --join "127.0.0.1:$PORT" \
        --socket "$T/$1.sock" --state-dir "$T/$1" --devices cpu:1 "${COMMON[@]}" \
        >>"$T/$1.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$1=$!"
}

start_coord() {
    cat >"$T/c0.conf" <<CONF
[mpard]
name = c0
coordinator = true
listen = 127.0.0.1:$PORT
devices = none
socket = $T/c0.sock
state-dir = $T/c0
secret-file = $SECRET
heartbeat-ms = $HB
dead-after-ms = $DEAD
CONF
    NOTIFY_SOCKET="$T/c0.notify" WATCHDOG_USEC=400000 "$MPARD" --config "$T/c0.conf" \
        >>"$T/c0.log" 2>&1 &
    PIDS+=($!)
    PID_c0=$!
}

# --- READY=1 only after the node has registered ------------------------------
notify_listener "$T/n1.notify" "$T/n1.notify.log"
notify_listener "$T/c0.notify" "$T/c0.notify.log"
sleep 0.3
start_node n1
wait_for 5 test -S "$T/n1.sock" || fail "n1 did not create its socket"
sleep 1
grep -q "READY=1" "$T/n1.notify.log" 2>/dev/null && fail "n1 said READY=1 before any coordinator existed"
[ "$(status_req "$T/n1.sock" | jget 'd["node_state"]')" != registered ] || fail "n1 registered with nobody"
COORD_START=$(now_ms)
start_coord
wait_for 5 grep -q "READY=1" "$T/c0.notify.log" || fail "coordinator never said READY=1"
wait_for 5 grep -q "READY=1" "$T/n1.notify.log" || fail "n1 never said READY=1"
READY_AT=$(grep -m1 "READY=1" "$T/n1.notify.log" | cut -d' ' -f1)
[ "$READY_AT" -ge "$COORD_START" ] || fail "n1 READY=1 came before the coordinator started"
grep -q "STATUS=" "$T/n1.notify.log" || fail "no STATUS= line from n1"
echo "ok READY=1 after registration"
wait_for 3 grep -q "WATCHDOG=1" "$T/c0.notify.log" || fail "no WATCHDOG=1 with WATCHDOG_USEC set"
echo "ok WATCHDOG=1"

# --- 3 nodes ALIVE -------------------------------------------------------------
start_node n2
start_node n3
export MPAR_SOCKET="$T/c0.sock"
alive_count() { "$CLIENT" nodes -o json | jget 'sum(1 for n in d["nodes"] if n["state"]=="ALIVE")'; }
three_alive() { [ "$(alive_count)" = 3 ]; }
wait_for 10 three_alive || fail "3 nodes never ALIVE: $("$CLIENT" nodes)"
"$CLIENT" nodes
echo "ok 3 nodes ALIVE"

# --- kill -9: DEAD within dead-after + one heartbeat; restart: ALIVE -----------
KILL_AT=$(now_ms)
kill -9 "$PID_n2"
n2_state() { "$CLIENT" nodes -o json | jget '[n for n in d["nodes"] if n["name"]=="n2"][0]["'"$1"'"]'; }
n2_dead() { [ "$(n2_state state)" = DEAD ]; }
wait_for 10 n2_dead || fail "n2 never DEAD"
DEAD_AT=$(n2_state state_since_unix_ms)
LATENCY=$((DEAD_AT - KILL_AT))
echo "n2 DEAD $LATENCY ms after kill -9 (bound: $DEAD + $HB)"
[ "$LATENCY" -le $((DEAD + HB)) ] || fail "DEAD after $LATENCY ms > dead-after + heartbeat"
start_node n2
n2_alive() { [ "$(n2_state state)" = ALIVE ]; }
wait_for 10 n2_alive || fail "restarted n2 not ALIVE"
[ "$(n2_state registrations)" = 2 ] || fail "n2 registrations != 2"
echo "ok kill -9 -> DEAD, restart -> ALIVE"

# --- jobs ----------------------------------------------------------------------
cat >"$T/bad.json" <<'JSON'
{"name": "bad", "model": {"input": 784, "layers": [
   {"type": "linear", "out": 512}, {"type": "gelu"},
   {"type": "mlp_block", "hidden": 512, "ffn": 2048},
   {"type": "linear", "out": 10}], "loss": "softmax_xent"},
 "data": {"dataset": "synthetic", "samples": 512, "classes": 10, "seed": 5},
 "parallel": {"pp": 1, "tp": 3, "dp": 1},
 "train": {"batch_size": 64, "optimizer": "sgd", "lr": 0.1}}
JSON
set +e
"$CLIENT" submit "$T/bad.json" 2>"$T/bad.err"
RC=$?
set -e
[ $RC = 2 ] || fail "bad spec: exit $RC, want 2"
grep -q "parallel.tp" "$T/bad.err" || fail "bad spec error lacks the field path: $(cat "$T/bad.err")"
echo "ok bad spec refused: $(cat "$T/bad.err")"
"$CLIENT" submit "$SRC/examples/fashion_mnist.json" -o json >"$T/job1.json"
JOB=$(jget 'd["id"]' <"$T/job1.json")
[ "$(jget 'd["state"]' <"$T/job1.json")" = PENDING ] || fail "job not PENDING"
jget 'd["reason"]' <"$T/job1.json" >"$T/reason.txt"
grep -q "needs 4 devices" "$T/reason.txt" || fail "reason: $(jget 'd["reason"]' <"$T/job1.json")"
"$CLIENT" jobs
"$CLIENT" submit "$SRC/examples/fashion_mnist.json" >/dev/null # job 2 stays PENDING
"$CLIENT" cancel "$JOB" >/dev/null
[ "$("$CLIENT" status "$JOB" -o json | jget 'd["state"]')" = CANCELLED ] || fail "cancel"
set +e
"$CLIENT" cancel "$JOB" 2>/dev/null
RC=$?
"$CLIENT" status 999 2>/dev/null
RC2=$?
set -e
[ $RC = 1 ] && [ $RC2 = 1 ] || fail "cancel of an ended job / status of a missing job: exit $RC/$RC2, want 1"
"$CLIENT" logs "$JOB" >"$T/logs.txt"
grep -q "cancelled by" "$T/logs.txt" || fail "logs lack the cancel event"
echo "ok submit/status/cancel/logs"

# --- a node passes client requests on to its coordinator ----------------------------
[ "$("$CLIENT" nodes --socket "$T/n1.sock" -o json | jget 'len(d["nodes"])')" = 3 ] || fail "nodes via n1"
"$CLIENT" submit "$SRC/examples/fashion_mnist.json" --socket "$T/n1.sock" -o json >"$T/job3.json" ||
    fail "submit via n1"
JOB3=$(jget 'd["id"]' <"$T/job3.json")
jget 'd["submitter"]' <"$T/job3.json" >"$T/submitter.txt"
grep -q "via node n1" "$T/submitter.txt" || fail "submitter via n1: $(cat "$T/submitter.txt")"
"$CLIENT" cancel "$JOB3" --socket "$T/n1.sock" >/dev/null || fail "cancel via n1"
"$CLIENT" logs "$JOB3" --socket "$T/n1.sock" >"$T/logs3.txt" || fail "logs via n1"
grep -q "cancelled by" "$T/logs3.txt" || fail "logs via n1 lack the cancel"
printf '{"cmd":"nodes"}\n' | socat -t 2 - "UNIX-CONNECT:$T/n1.sock" >"$T/n1.nodes.json"
[ "$(jget 'len(d["nodes"])' <"$T/n1.nodes.json")" = 3 ] || fail "JSON nodes via n1: $(cat "$T/n1.nodes.json")"
printf '{"cmd":"job","id":"%s"}\n' "$JOB3" | socat -t 2 - "UNIX-CONNECT:$T/n1.sock" >"$T/n1.job.json"
[ "$(jget 'd["job"]["state"]' <"$T/n1.job.json")" = CANCELLED ] || fail "JSON job via n1: $(cat "$T/n1.job.json")"
echo "ok requests through a node"

# 2 devices on 3 one-device nodes, but a TP group of 2 must sit inside one node.
sed 's/"pp": 2, "tp": 2, "dp": 1/"pp": 1, "tp": 2, "dp": 1/' "$SRC/examples/fashion_mnist.json" >"$T/tp2.json"
"$CLIENT" submit "$T/tp2.json" -o json | jget 'd["reason"]' >"$T/tp2.reason"
grep -q "TP group" "$T/tp2.reason" || fail "tp=2 on one-device nodes: $(cat "$T/tp2.reason")"
echo "ok placement reason: $(cat "$T/tp2.reason")"

# A text data set's file is checked at submit, off the loop, before the job is accepted.
text_spec() { # path block_size tp -> a text job spec on stdout
    printf '{"name": "text", "model": {"layers": [{"type": "embedding", "vocab": 256, "dim": 8,
   "max_seq": 16}, {"type": "linear", "out": 256}]},
 "data": {"dataset": "text", "path": "%s", "block_size": %s},
 "parallel": {"tp": %s}, "train": {"batch_size": 8, "optimizer": "sgd", "lr": 0.1}}\n' "$1" "$2" "$3"
}
head -c 100 "$SRC/README.md" >"$T/short.txt"
head -c 4000 "$SRC/README.md" >"$T/long.txt"
text_spec "$T/missing.txt" 16 1 >"$T/text-missing.json"
text_spec "$T/short.txt" 16 1 >"$T/text-short.json"
for c in missing short; do
    set +e
    "$CLIENT" submit "$T/text-$c.json" 2>"$T/text-$c.err"
    RC=$?
    set -e
    [ $RC = 2 ] || fail "text job with a $c file: exit $RC, want 2"
    grep -q "data.path: $T/$c.txt: " "$T/text-$c.err" || fail "text $c: $(cat "$T/text-$c.err")"
done
grep -q "too short for block size 16" "$T/text-short.err" || fail "short text: $(cat "$T/text-short.err")"
printf '{"cmd":"submit","spec":%s}\n' "$(tr -d '\n' <"$T/text-short.json")" |
    socat -t 5 - "UNIX-CONNECT:$T/c0.sock" >"$T/text-short.line"
[ "$(jget 'd["ok"]' <"$T/text-short.line")" = False ] || fail "JSON submit of a short text: $(cat "$T/text-short.line")"
jget 'd["error"]' <"$T/text-short.line" | grep -q "too short" || fail "JSON short text: $(cat "$T/text-short.line")"
# tp=2 cannot be placed on one-device nodes: the accepted job stays PENDING.
text_spec "$T/long.txt" 16 2 >"$T/text-long.json"
"$CLIENT" submit "$T/text-long.json" -o json >"$T/text-long.out" || fail "a good text job was refused"
[ "$(jget 'd["state"]' <"$T/text-long.out")" = PENDING ] || fail "text job: $(cat "$T/text-long.out")"
"$CLIENT" cancel "$(jget 'd["id"]' <"$T/text-long.out")" >/dev/null
echo "ok text data checked at submit: $(cat "$T/text-short.err")"

# --- TCP with the cluster secret ------------------------------------------------
"$CLIENT" nodes --connect "127.0.0.1:$PORT" --secret-file "$SECRET" >/dev/null || fail "TCP client with the secret"
set +e
"$CLIENT" nodes --connect "127.0.0.1:$PORT" --secret-file "$WRONG" 2>/dev/null
RC=$?
"$CLIENT" nodes --connect "127.0.0.1:$PORT" 2>/dev/null
RC2=$?
"$CLIENT" nodes --socket "$T/nowhere.sock" 2>"$T/unreach.err"
RC3=$?
set -e
[ $RC = 4 ] && [ $RC2 = 4 ] || fail "wrong/no secret: exit $RC/$RC2, want 4"
[ $RC3 = 3 ] || fail "no daemon: exit $RC3, want 3"
grep -q "is mpard running" "$T/unreach.err" || fail "unreachable message: $(cat "$T/unreach.err")"
echo "ok auth refused (4), unreachable (3)"

# --- bad inputs: each closes one connection, mpard goes on ------------------------
for c in huge_length zero_length preauth_oversized garbage_frame random_bytes truncated \
         stall idle_before_handshake wrong_version unknown_message out_of_order bad_enum \
         json_malformed json_oversized slow_reader; do
    timeout 30 python3 "$SRC/tests/integration/control_badinput.py" "$c" "127.0.0.1:$PORT" \
        "$T/c0.sock" $DEAD || fail "bad input $c"
    assert_alive_daemon "$c"
done
wait_for 10 three_alive || fail "nodes disturbed by bad inputs"
echo "ok bad inputs"

# --- metrics ---------------------------------------------------------------------
metrics() { # -> $T/metrics.txt
    printf '{"cmd":"metrics"}\n' | socat -t 2 - "UNIX-CONNECT:$T/c0.sock" | jget 'd["metrics"]' >"$T/metrics.txt"
}
metrics
promtool check metrics <"$T/metrics.txt" || fail "promtool refused the metrics"
grep -q '^mpar_build_info{' "$T/metrics.txt" || fail "no mpar_build_info"
grep -q 'mpar_connections_closed_total{reason="slow_reader"} [1-9]' "$T/metrics.txt" || fail "slow reader not counted"
grep -q 'mpar_cluster_nodes{state="alive"} 3' "$T/metrics.txt" || fail "metrics: 3 alive"
echo "ok metrics"

# --- SIGHUP: a bad config is refused and the old one kept -------------------------
echo "bogus-key = 1" >>"$T/c0.conf"
kill -HUP "$PID_c0"
sleep 0.5
assert_alive_daemon "bad reload"
metrics
grep -q '^mpar_config_reload_failures_total 1' "$T/metrics.txt" || fail "bad reload not refused"
sed -i '/bogus-key/d; s/^heartbeat-ms = .*/heartbeat-ms = 150/' "$T/c0.conf"
kill -HUP "$PID_c0"
sleep 0.5
metrics
grep -q '^mpar_config_reloads_total 1' "$T/metrics.txt" || fail "good reload not applied"
grep -q "heartbeat 150 ms" "$T/c0.log" || fail "reload did not apply heartbeat-ms"
echo "ok SIGHUP"

# --- SIGTERM: exit 0, the node is LEFT ----------------------------------------------
kill -TERM "$PID_n3"
set +e
timeout 5 tail --pid="$PID_n3" -f /dev/null
wait "$PID_n3"
RC=$?
set -e
[ $RC = 0 ] || fail "n3 exit $RC after SIGTERM"
n3_left() { [ "$("$CLIENT" nodes -o json | jget '[n["state"] for n in d["nodes"] if n["name"]=="n3"][0]')" = LEFT ]; }
wait_for 5 n3_left || fail "n3 not LEFT after SIGTERM"
grep -q "STOPPING=1" "$T/n1.notify.log" && fail "n1 stopped?"
echo "ok SIGTERM"

# --- coordinator restart: jobs survive, RUNNING -> FAILED ---------------------------
EPOCH1=$(status_req "$T/c0.sock" | jget 'd["epoch"]')
kill -TERM "$PID_c0"
set +e
wait "$PID_c0"
RC=$?
set -e
[ $RC = 0 ] || fail "coordinator exit $RC after SIGTERM"
grep -q "STOPPING=1" "$T/c0.notify.log" || fail "no STOPPING=1"
# Pretend job 2 was running when the coordinator went away.
python3 - "$T/c0/jobs.json" <<'PY'
import json, sys
p = sys.argv[1]
d = json.load(open(p))
for j in d["jobs"]:
    if j["id"] == "2":
        j["state"] = "RUNNING"
json.dump(d, open(p, "w"))
PY
start_coord
wait_for 5 test -S "$T/c0.sock" || fail "coordinator did not come back"
wait_for 5 status_req "$T/c0.sock" || fail "no status after restart"
EPOCH2=$(status_req "$T/c0.sock" | jget 'd["epoch"]')
[ "$EPOCH2" -gt "$EPOCH1" ] || fail "epoch did not advance ($EPOCH1 -> $EPOCH2)"
[ "$("$CLIENT" status "$JOB" -o json | jget 'd["state"]')" = CANCELLED ] || fail "job $JOB lost"
"$CLIENT" status 2 -o json >"$T/job2.json" || true
[ "$(jget 'd["state"]' <"$T/job2.json")" = FAILED ] || fail "running job not FAILED after restart"
[ "$(jget 'd["reason"]' <"$T/job2.json")" = "coordinator restarted" ] || fail "reason"
two_alive() { [ "$(alive_count)" = 2 ]; }
wait_for 10 two_alive || fail "nodes did not rejoin the restarted coordinator"
echo "ok coordinator restart"
echo "PASS"
