#!/usr/bin/env bash
# A real Prometheus server (Debian's `prometheus`) scrapes mpard's GET
# /metrics (--metrics-listen) on loopback, with a configuration this test
# writes: its HTTP query API shows up = 1 for the target, the coordinator's
# ALIVE node count (2), and a running job's step increasing from one scrape
# to a later one.  Skipped, saying why, when prometheus is not installed.
#
# usage: metrics_prometheus.sh MPARD CLIENT SRC
set -euo pipefail
MPARD=$1
CLIENT=$2
SRC=$3
PROMETHEUS=${PROMETHEUS:-$(command -v prometheus || true)}
if [ -z "$PROMETHEUS" ]; then
    echo "SKIP: prometheus is not installed (Debian package prometheus; deploy/install-deps.sh)"
    exit 77
fi
T=$(mktemp -d)
HB=200
DEAD=5000
# shellcheck source=engine_daemon_lib.sh
. "$SRC/tests/integration/engine_daemon_lib.sh"
export MPAR_SOCKET=$T/c0.sock
MPORT=$(free_port)
PPORT=$(free_port)
NODE_FLAGS=("${COMMON[@]}")
COMMON+=(--metrics-listen "127.0.0.1:$MPORT") # the coordinator's only
start_coord
COMMON=("${NODE_FLAGS[@]}")
start_node n1 cpu:1
start_node n2 cpu:1
wait_alive 2

cat >"$T/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: mpar
    static_configs:
      - targets: ["127.0.0.1:$MPORT"]
EOF
"$PROMETHEUS" --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/tsdb" \
    --web.listen-address="127.0.0.1:$PPORT" --log.level=warn >"$T/prometheus.log" 2>&1 &
PIDS+=($!)
PROM_PID=$!

# One instant query: prints the value of the first sample, or nothing.
query() {
    python3 - "$PPORT" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
port, q = sys.argv[1], sys.argv[2]
url = "http://127.0.0.1:%s/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": q}))
try:
    d = json.load(urllib.request.urlopen(url, timeout=5))
except Exception:
    sys.exit(0)
r = d.get("data", {}).get("result", [])
if d.get("status") == "success" and r:
    print(r[0]["value"][1])
PY
}
is_value() { [ "$(query "$1")" = "$2" ]; }

wait_for 60 is_value 'up{job="mpar",instance="127.0.0.1:'"$MPORT"'"}' 1 ||
    fail "Prometheus never saw the target up: up = '$(query up)'; $(tail -5 "$T/prometheus.log")"
echo "ok up = 1 for 127.0.0.1:$MPORT"
wait_for 30 is_value 'mpar_cluster_nodes{state="alive"}' 2 ||
    fail "ALIVE nodes in Prometheus: '$(query 'mpar_cluster_nodes{state="alive"}')'"
echo "ok mpar_cluster_nodes{state=\"alive\"} = 2"

spec "$T/job.json" scraped 2 1 1 4 1f1b sgd 40000
"$CLIENT" submit "$T/job.json" >/dev/null
step_seen() { local v; v=$(query 'mpar_job_step{job_id="1"}'); [ -n "$v" ] && [ "$v" -gt 0 ]; }
wait_for 60 step_seen || fail "no step of job 1 in Prometheus: $("$CLIENT" status 1)"
first=$(query 'mpar_job_step{job_id="1"}')
later() { local v; v=$(query 'mpar_job_step{job_id="1"}'); [ -n "$v" ] && [ "$v" -gt "$first" ]; }
wait_for 30 later || fail "job 1's step stayed at $first in Prometheus"
second=$(query 'mpar_job_step{job_id="1"}')
loss=$(query 'mpar_job_loss{job_id="1"}')
echo "ok mpar_job_step{job_id=\"1\"} went from $first to $second (loss $loss)"
"$CLIENT" cancel 1 >/dev/null
kill "$PROM_PID"
stop_daemons "$PID_n1" "$PID_n2" "$PID_c0"
echo PASS
