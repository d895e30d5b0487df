#!/usr/bin/env bash
# A running job's live view (mpar-client status and waits, the per-job and
# per-node series of the metrics) and its wait-for graph when a node stops:
# a job across 2 nodes (pp 2, one stage each); while it trains, `status`
# shows its live step, loss and samples/s and `waits` finds nobody
# blocking; then the node of stage 1 is SIGSTOPped, and `waits` names that
# node's shard as `blocking` within a few seconds while stage 0 waits on
# it; after SIGCONT the job finishes.
#
# usage: engine_daemon_waits.sh MPARD CLIENT SRC
set -euo pipefail
MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d)
# Heartbeats every 200 ms; a stopped node must not be declared DEAD (which
# fails its jobs) while it is stopped.
HB=200
DEAD=30000
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"
export MPAR_SOCKET=$T/c0.sock

start_coord
start_node n1 cpu:1
start_node n2 cpu:1
wait_alive 2

STEPS=30000
spec "$T/job.json" waits 2 1 1 4 1f1b sgd $STEPS
"$CLIENT" submit "$T/job.json" >/dev/null
running() { [ "$(job_field 1 'd["state"]')" = RUNNING ] && [ "$(job_field 1 'd["steps"]')" -gt 20 ]; }
wait_for 30 running || fail "job 1 never trained: $("$CLIENT" status 1)"

# status: the live step, loss and throughput of the running job.
doc=$("$CLIENT" status 1 -o json)
echo "$doc" | jget '0 < d["steps"] < d["total_steps"] and d["total_steps"] == '$STEPS' and d["final_loss"] is not None and d["samples_per_s"] > 0 and d["state"] == "RUNNING"' |
    grep -qx True || fail "status of the running job: $doc"
text=$("$CLIENT" status 1)
echo "$text" | grep -Eq "step: +[0-9]+ of $STEPS" || fail "status text: $text"
echo "$text" | grep -Eq "^  loss: +[0-9.]+" || fail "status text has no live loss: $text"
echo "ok status shows the live step, loss and samples/s"

# The per-job and per-node series.
# socat waits up to 10 s for the reply after its input ends (-t; 0.5 s by
# default, too short on a loaded machine).
metrics() { echo '{"cmd":"metrics"}' | socat -t 10 - UNIX-CONNECT:"$T/c0.sock" | jget 'd["metrics"]'; }
m=$(metrics)
for re in '^mpar_job_step\{job_id="1",job_name="waits"\} [1-9][0-9]*$' \
    '^mpar_job_loss\{job_id="1",job_name="waits"\} [0-9.e+-]+$' \
    '^mpar_job_samples_per_second\{job_id="1",job_name="waits"\} [1-9]' \
    '^mpar_job_bubble_fraction\{job_id="1",job_name="waits"\} 0\.[0-9]+' \
    '^mpar_job_restarts\{job_id="1",job_name="waits"\} 0$' \
    '^mpar_job_failures\{job_id="1",job_name="waits"\} 0$' \
    '^mpar_node_shards_running\{node="n1"\} 1$' '^mpar_node_shards_running\{node="n2"\} 1$' \
    '^mpar_node_shard_sent_bytes_total\{node="n1"\} [1-9][0-9]*$' \
    '^mpar_node_shard_received_bytes_total\{node="n2"\} [1-9][0-9]*$'; do
    echo "$m" | grep -Eq "$re" || fail "no series matching $re in the metrics:
$(echo "$m" | grep -E 'mpar_(job|node)_')"
done
echo "ok the per-job and per-node series"

# A healthy job: the waits are short hand-offs, nobody blocks.
w=$("$CLIENT" waits 1 -o json)
echo "$w" | jget 'd["state"] == "RUNNING" and d["blocking"] == [] and not d["cycle"] and len(d["shards"]) == 2' |
    grep -qx True || fail "waits of a healthy job: $w"
echo "ok waits of the healthy job: $(echo "$w" | jget 'd["verdict"]')"

# Stop the node of stage 1: stage 0 waits on it, and waits names it.
node1=$(job_field 1 '[p["node"] for p in d["placement"] if p["stage"] == 1][0]')
eval "victim=\$PID_$node1"
kill -STOP "$victim"
stopped=$(now_ms)
blocking() {
    "$CLIENT" waits 1 -o json | jget '[(b["rank"], b["node"]) for b in d["blocking"]] == [(1, "'"$node1"'")]' |
        grep -qx True
}
if ! wait_for 8 blocking; then
    kill -CONT "$victim"
    fail "waits did not name rank 1 on $node1 as blocking: $("$CLIENT" waits 1)"
fi
found=$(($(now_ms) - stopped))
w=$("$CLIENT" waits 1 -o json)
text=$("$CLIENT" waits 1)
kill -CONT "$victim"
echo "$w" | jget '[s for s in d["shards"] if s["rank"] == 1][0]["stale"] and not d["cycle"]' |
    grep -qx True || fail "the stopped rank is not shown silent: $w"
echo "$text" | grep -q "^blocking: rank 1 (stage 1, tp 0, dp 0) on $node1: node $node1 has not reported" ||
    fail "waits text: $text"
echo "ok waits named rank 1 on $node1 as blocking $found ms after SIGSTOP:"
echo "$text" | sed 's/^/    /'

done_() { [ "$(job_field 1 'd["state"]')" = SUCCEEDED ]; }
wait_for 120 done_ || fail "job 1 did not finish after SIGCONT: $("$CLIENT" status 1)"
[ "$(job_field 1 'd["steps"]')" = $STEPS ] || fail "job 1 ran $(job_field 1 'd["steps"]') steps"
echo "ok after SIGCONT the job finished ($STEPS steps)"
stop_daemons "$PID_n1" "$PID_n2" "$PID_c0"
echo PASS
