#!/usr/bin/env bash
# A cluster across "hosts": the coordinator c0 and the nodes n1, n2 and n3
# (2 CPU devices each; a job of 4 shards leaves one spare) each run in a
# network namespace of their own, linked by veths to a bridge (netns_lib.sh), with a cluster secret, the listener and
# --join on the namespace addresses, and UCX over tcp on eth0 (UCX_TLS=tcp,
# UCX_NET_DEVICES=eth0).  Peers in another network namespace are another
# host to the data plane: their endpoints use UCX's peer error handling and
# no pidfd (transport/ucx.c), which the nodes' debug logs must say for every
# cross-host endpoint and only for those.  Proves:
#  (a) a pp 2 x tp 2 job across both nodes, the feeder and the weight
#      gatherer on c0, equals the serial run (weights within 1e-5, same loss
#      curve);
#  (b) cutting the link of the node that runs stage 1 (ip link set eth0
#      down) mid-job FAILs the job within dead-after + a heartbeat (+ slack),
#      with a reason naming that node; once the link is back the node
#      rejoins, its shards end, and the next job SUCCEEDS across both; the
#      same for kill -9 of that node (which no pidfd watches from the other
#      host: UCX's peer error handling or the lost connection notices);
#  (b2) with dead-after (SIGHUP: 30 s) longer than the data plane's timeout,
#      a cut link FAILs the job when the shards' waits time out, still
#      naming the node, by its late heartbeats;
#  (b3) with train.max_restarts (once the build has it), a cut link puts
#      the job back to PENDING; it resumes from its last checkpoint on the
#      other node and the spare n3 and SUCCEEDS with the weights of an
#      uninterrupted run, bit for bit;
#  (c) a whole job over links with netem delay 2ms loss 1% SUCCEEDS equal to
#      the serial run; where the kernel has no netem, the hosts' packets go
#      through netns_relay.py (TUN devices, the same delay and loss) instead.
# Each line says how long detection took and what the other node's data
# plane saw.  HB, DEAD (ms) and SLACK may be set to measure other timeouts.
# Skips (exit 77) where the machine cannot create namespaces.
#
# usage: netns_cluster.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail

MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-netns.XXXXXX)
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"
# shellcheck source=netns_lib.sh
. "$SRC/tests/integration/netns_lib.sh"

if REASON=$(netns_skip_reason); then
    echo "SKIP: the multi-host test bed cannot be built here: $REASON"
    exit 77
fi

SLACK=${SLACK:-1500}
DATA_TIMEOUT_MS=10400 # daemon/coord_run.c: JOB_DATA_TIMEOUT_MS + FAIL_GRACE_MS
PORT=7070 # in c0's namespace: nothing else listens there
SECRET="$T/secret"
head -c 32 /dev/urandom | base64 >"$SECRET"
chmod 0400 "$SECRET"
export UCX_TLS=tcp UCX_NET_DEVICES=eth0
COMMON=(--heartbeat-ms "$HB" --secret-file "$SECRET" --log-level debug)

netns_host c0 0
netns_host n1 1
netns_host n2 2
netns_host n3 3

# The coordinator's timing is in its config file, so that SIGHUP can change it (b2).
coord_timing() { # dead-after-ms
    printf '[mpard]\nheartbeat-ms = %s\ndead-after-ms = %s\n' "$HB" "$1" >"$T/c0.conf"
}
coord_timing "$DEAD"
ip netns exec "$(ns c0)" "$MPARD" --config "$T/c0.conf" --name c0 --coordinator \
    --listen "$(netns_addr 0):$PORT" --devices none --socket "$T/c0.sock" --state-dir "$T/c0" \
    --secret-file "$SECRET" --log-level debug >>"$T/c0.log" 2>&1 &
PIDS+=($!)
PID_c0=$!
wait_for 5 test -S "$T/c0.sock" || fail "the coordinator did not create its socket"
export MPAR_SOCKET="$T/c0.sock"
start_node() { # name
    ip netns exec "$(ns "$1")" "$MPARD" --name "$1" --join "$(netns_addr 0):$PORT" \
        --socket "$T/$1.sock" --state-dir "$T/$1" --devices cpu:2 "${COMMON[@]}" \
        >>"$T/$1.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$1=$!"
}
start_node n1
start_node n2
start_node n3

wait_alive 3
grep -q "cluster listener on $(netns_addr 0):$PORT" "$T/c0.log" ||
    fail "the coordinator does not listen on its namespace address"
# The secret works over TCP from another host, and no secret is refused.
ns_run n1 "$CLIENT" nodes --connect "$(netns_addr 0):$PORT" --secret-file "$SECRET" >/dev/null ||
    fail "a client on n1 with the secret"
set +e
ns_run n1 "$CLIENT" nodes --connect "$(netns_addr 0):$PORT" >/dev/null 2>&1
RC=$?
set -e
[ $RC = 4 ] || fail "a client without the secret: exit $RC, want 4"
echo "ok 4 hosts: c0 $(netns_addr 0), n1 .. n3 $(netns_addr 1) .. $(netns_addr 3); nodes ALIVE over the secret"

placement_node() { # job.json expr-over-p
    jget "[p[\"node\"] for p in d[\"placement\"] if $2][0]" <"$1"
}

# equal_to_serial NAME STEPS LIMIT_S: submits NAME across the hosts; it must
# SUCCEED on both nodes with the serial run's weights and losses.
equal_to_serial() {
    local name=$1 steps=$2 limit=$3
    spec "$T/$name.json" "$name" 2 2 1 4 1f1b sgd "$steps"
    "$CLIENT" run "$T/$name.json" --serial --save-weights "$T/$name.ref" -o json \
        >"$T/$name.serial.json" 2>/dev/null || fail "$name: serial run"
    set +e
    timeout "$limit" "$CLIENT" submit "$T/$name.json" -f -o json --save-weights "$T/$name.got" \
        >"$T/$name.job.json" 2>"$T/$name.progress"
    local rc=$?
    set -e
    [ $rc = 0 ] || fail "$name: submit -f exit $rc: $(tail -n 5 "$T/$name.progress")"
    [ "$(jget 'd["state"]' <"$T/$name.job.json")" = SUCCEEDED ] || fail "$name: not SUCCEEDED"
    local s0 s1
    s0=$(placement_node "$T/$name.job.json" 'p["stage"]==0')
    s1=$(placement_node "$T/$name.job.json" 'p["stage"]==1')
    [ "$s0" != "$s1" ] || fail "$name: both stages on $s0: not across hosts"
    CMP=$(compare "$T/$name.ref" "$T/$name.got" 1e-5) || fail "$name: weights: $CMP"
    losses "$T/$name.job.json" "$T/$name.serial.json" 1e-5 || fail "$name: losses"
}

# --- (a) a job across the hosts equals the serial run -------------------------------
equal_to_serial across 5 120
S0=$(placement_node "$T/across.job.json" 'p["stage"]==0')
S1=$(placement_node "$T/across.job.json" 'p["stage"]==1')
echo "ok (a) pp 2 x tp 2 across $S0 and $S1, fed and gathered on c0: $CMP"
# Every endpoint between namespaces took the cross-host path, and only those:
# a node's shards reach the other node's shards and c0's feeder and
# gatherer, and their TP peer on the same host.
for n in "$S0" "$S1"; do
    grep -q "xport: rank [0-9]* -> rank [0-9]*: another host" "$T/$n.log" ||
        fail "$n: no cross-host endpoint in its log"
    grep -q "xport: rank [0-9]* -> rank [0-9]*: this host" "$T/$n.log" ||
        fail "$n: its TP peer is not on this host"
done
python3 - "$T/across.job.json" "$T/$S0.log" "$T/$S1.log" <<'PY' || fail "endpoint classification"
import json, re, sys
place = {p["rank"]: p["node"] for p in json.load(open(sys.argv[1]))["placement"]}
for log in sys.argv[2:]:
    for m in re.finditer(r"xport: rank (\d+) -> rank (\d+): (another|this) host", open(log).read()):
        a, b, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        if a not in place:
            continue  # the gatherer's worker
        # Peers that are no shard (feeder, gatherer) live on c0: another host.
        same = b in place and place[b] == place[a]
        assert (kind == "this") == same, (log, m.group(0), place)
PY
echo "ok (a) every endpoint between namespaces uses UCX peer error handling, and only those"

# --- (b) a node's link cut mid-job ---------------------------------------------------
# 20000 steps outlast every case here; not more: the coordinator zeroes its per-step
# records of a job on its loop at the start (56 bytes a step), and a 1M-step job
# stalls it for over a second on a loaded machine, past dead-after.
spec "$T/long.json" long 2 2 1 4 1f1b sgd 20000
steps_past() { [ "$(job_field "$1" 'd["steps"]')" -ge "$2" ]; }
# long_job: submits the long job, waits for its third step; sets JOB, S1
# (the node of stage 1) and the peer lines that S0 logged so far.
long_job() {
    JOB=$("$CLIENT" submit "$T/long.json" -o json | jget 'd["id"]')
    wait_for 60 steps_past "$JOB" 3 || fail "the long job never ran: $("$CLIENT" status "$JOB")"
    S1=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==1][0]')
    S0=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==0][0]')
    S0_LINES=$(wc -l <"$T/$S0.log")
}
failed() { [ "$(job_field "$JOB" 'd["state"]')" = FAILED ]; }
# failed_naming_s1 WHAT T0 BOUND_MS: the job FAILs naming S1 within BOUND_MS
# of T0; sets LATENCY, REASON.
failed_naming_s1() {
    wait_for $(($3 / 1000 + 30)) failed ||
        fail "job not FAILED after $1: $("$CLIENT" status "$JOB")"
    LATENCY=$(($(job_field "$JOB" 'd["finished_unix_ms"]') - $2))
    REASON=$(job_field "$JOB" 'd["reason"]')
    # What S0's data plane saw of its peers on S1 meanwhile (UCX's peer error
    # handling, a timeout, or nothing before the coordinator aborted it).
    SEEN=$(tail -n +"$S0_LINES" "$T/$S0.log" | grep -o "xport: peer rank [0-9]* failed: .*" |
        sort -u | head -n 2 | tr '\n' ';' || true)
    echo "job FAILED $LATENCY ms after $1: $REASON; $S0's data plane: ${SEEN:-no peer error}"
    [ "$LATENCY" -le "$3" ] || fail "FAILED after $LATENCY ms (bound $3 ms)"
    echo "$REASON" | grep -q "node $S1" || fail "reason does not name $S1: $REASON"
}
running_shards() { # node
    "$CLIENT" nodes -o json | jget '[n["running_shards"] for n in d["nodes"] if n["name"]=="'"$1"'"][0]'
}
ended() { "$CLIENT" nodes -o json | jget 'sum(n["running_shards"] for n in d["nodes"])' | grep -qx 0; }
n_alive() { [ "$(alive_count)" = 3 ]; }

long_job
CUT_AT=$(now_ms)
netns_link "$S1" down
failed_naming_s1 "$S1's link went down" "$CUT_AT" $((DEAD + HB + SLACK))
netns_link "$S1" up
wait_for 30 n_alive || fail "$S1 never ALIVE again: $("$CLIENT" nodes)"
wait_for 30 ended || fail "shards did not end: $("$CLIENT" nodes)"
equal_to_serial after_cut 3 120
echo "ok (b) link cut -> FAILED naming $S1 in $LATENCY ms; it rejoined, the next job SUCCEEDED: $CMP"

# --- (b2) the same cut when heartbeats are slower than the data plane's timeout --------
# With dead-after 30 s the shards' waits time out first (UCX over tcp does
# not notice a silent link by itself): the reason still names the node, by
# its late heartbeats.
coord_timing 30000
kill -HUP "$PID_c0"
reloaded() { grep -q "configuration reloaded (heartbeat $HB ms, dead after 30000 ms" "$T/c0.log"; }
wait_for 10 reloaded || fail "the coordinator did not reload dead-after"
long_job
CUT_AT=$(now_ms)
netns_link "$S1" down
failed_naming_s1 "$S1's link went down, dead-after 30 s" "$CUT_AT" $((DATA_TIMEOUT_MS + SLACK))
echo "$REASON" | grep -q "^node $S1 is SUSPECT" || fail "reason does not blame $S1's heartbeats"
netns_link "$S1" up
coord_timing "$DEAD"
kill -HUP "$PID_c0"
wait_for 30 n_alive || fail "$S1 never ALIVE again: $("$CLIENT" nodes)"
wait_for 30 ended || fail "shards did not end: $("$CLIENT" nodes)"
echo "ok (b2) link cut, heartbeats slower than the data timeout -> FAILED in $LATENCY ms: $REASON"

# --- kill -9 of a node across hosts: no pidfd watches it from the other host ---------------
long_job
eval "VICTIM=\$PID_$S1"
KILL_AT=$(now_ms)
kill -9 "$VICTIM"
wait "$VICTIM" 2>/dev/null || true
failed_naming_s1 "kill -9 of $S1" "$KILL_AT" $((DEAD + HB + SLACK))
start_node "$S1"
wait_for 30 n_alive || fail "$S1 never ALIVE again after its restart: $("$CLIENT" nodes)"
wait_for 30 ended || fail "shards did not end: $("$CLIENT" nodes)"
equal_to_serial after_kill 3 120
echo "ok kill -9 -> FAILED naming $S1 in $LATENCY ms; restarted, the next job SUCCEEDED: $CMP"

# --- (b3) a link cut with train.max_restarts: the job restarts on the other hosts ------
# From its last checkpoint (the folder every "host" sees), on S0 and the
# spare, and SUCCEEDS with the weights of an uninterrupted run, bit for bit.
rspec() { # FILE NAME CKDIR STEPS (CKDIR "": no checkpoints)
    spec "$1" "$2" 2 2 1 4 1f1b sgd "$4"
    python3 - "$1" "$3" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["train"]["max_restarts"] = 2
if sys.argv[2]:
    d["checkpoint"] = {"dir": sys.argv[2], "every_steps": 20, "keep": 2}
json.dump(d, open(sys.argv[1], "w"))
PY
}
rspec "$T/probe.json" probe "" 0 # the serial run takes max_restarts, not checkpoints
if "$CLIENT" run "$T/probe.json" --serial -o json >/dev/null 2>"$T/probe.err"; then
    rspec "$T/rref.json" rref "$T/ck-rref" 300
    timeout 180 "$CLIENT" submit "$T/rref.json" -f -o json --save-weights "$T/rref" \
        >"$T/rref.out" 2>"$T/rref.err" || fail "(b3) reference run: $(tail -n 3 "$T/rref.err")"
    rspec "$T/restart.json" restart "$T/ck-restart" 300
    JOB=$("$CLIENT" submit "$T/restart.json" -o json --save-weights "$T/wrestart" | jget 'd["id"]')
    ckpt_past() { [ "$(job_field "$JOB" 'd["checkpoint_step"]')" -ge "$1" ]; }
    wait_for 60 ckpt_past 20 || fail "(b3) no checkpoint: $("$CLIENT" status "$JOB")"
    S1=$(job_field "$JOB" '[p["node"] for p in d["placement"] if p["stage"]==1][0]')
    CUT_AT=$(now_ms)
    netns_link "$S1" down
    job_over() {
        local st
        st=$(job_field "$JOB" 'd["state"]')
        [ "$st" = SUCCEEDED ] || [ "$st" = FAILED ] || [ "$st" = CANCELLED ]
    }
    wait_for 180 job_over || fail "(b3) the job did not end: $("$CLIENT" status "$JOB")"
    netns_link "$S1" up
    [ "$(job_field "$JOB" 'd["state"]')" = SUCCEEDED ] ||
        fail "(b3) not SUCCEEDED: $("$CLIENT" status "$JOB")"
    [ "$(job_field "$JOB" 'd["restarts"]')" -ge 1 ] || fail "(b3) no restart recorded"
    NODES=$(job_field "$JOB" '" ".join(sorted(set(p["node"] for p in d["placement"])))')
    case " $NODES " in *" $S1 "*) fail "(b3) restarted on $S1, whose link is down: $NODES" ;; esac
    compare "$T/rref" "$T/wrestart" 0 >/dev/null || fail "(b3) weights differ from the uninterrupted run"
    BACK=$("$CLIENT" logs "$JOB" -o json | python3 -c '
import json, sys
t = [e["unix_ms"] for e in json.load(sys.stdin)["events"] if "every shard is ready" in e.get("message", "")]
print(t[-1] if t else 0)')
    echo "ok (b3) link cut with max_restarts: SUCCEEDED on $NODES after a restart, resumed from" \
        "step $(job_field "$JOB" 'd["resumed_from_step"]'), weights bit-equal; recovery $((BACK - CUT_AT)) ms"
    wait_for 30 n_alive || fail "$S1 never ALIVE again: $("$CLIENT" nodes)"
    wait_for 30 ended || fail "shards did not end: $("$CLIENT" nodes)"
elif grep -q "train.max_restarts: unknown field" "$T/probe.err"; then
    echo "skip (b3): this build has no train.max_restarts (checkpoints and restarts, issue 11)"
else
    fail "(b3) the spec with max_restarts: $(cat "$T/probe.err")"
fi

# --- (c) a whole job over lossy, slow links ------------------------------------------
# Lost heartbeats wait for TCP's retransmission (200 ms and more): the
# coordinator gives them 5 s here, as by default.
coord_timing 5000
kill -HUP "$PID_c0"
if netns_has_netem; then
    for h in c0 n1 n2 n3; do netns_netem "$h" delay 2ms loss 1%; done
    equal_to_serial lossy 5 240
    echo "ok (c) netem delay 2ms loss 1% on every link: SUCCEEDED, $CMP"
    for h in c0 n1 n2 n3; do tc -n "$(ns "$h")" qdisc del dev eth0 root; done
else
    echo "no netem qdisc in this kernel (sch_netem): the links go through netns_relay.py"
    netns_lossy 2 0.01 c0 n1 n2 n3
    equal_to_serial lossy 5 240
    COUNTS=$(netns_lossy_stop)
    LOST=$(echo "$COUNTS" | sed -n 's/.* lost \([0-9]*\) .*/\1/p')
    [ "${LOST:-0}" -gt 0 ] || fail "(c): the relay lost no packet: $COUNTS"
    echo "ok (c) relay delay 2ms loss 1% between every pair of hosts ($COUNTS): SUCCEEDED, $CMP"
fi

# shellcheck disable=SC2154 # PID_n1 .. PID_n3 are set by start_node through eval
stop_daemons "$PID_n1" "$PID_n2" "$PID_n3" "$PID_c0"
echo "PASS"
