#!/usr/bin/env bash
# mpar-client's conventions (DESIGN.md "Interfaces"): every command takes
# the global options (--socket, --connect, -o json) before or after its name
# with the same result; every command has --help (and `help CMD`); the exit
# codes are as documented (2 usage, 1 no such job, 3 unreachable, 4
# permission), and permission denied on the socket says so rather than
# "is mpard running?".  Runs a coordinator without devices (jobs stay
# PENDING, nothing trains but two serial steps).
#
# usage: client_cli.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail
MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-cli-test.XXXXXX)
# shellcheck source=daemon_lib.sh
. "$SRC/tests/integration/daemon_lib.sh"


PORT=$(free_port)
S="$T/c.sock"
"$MPARD" --name c --coordinator --devices none --listen "127.0.0.1:$PORT" --socket "$S" \
    --state-dir "$T/c" >"$T/c.log" 2>&1 &
PIDS+=($!)
wait_for 10 test -S "$S" || fail "the coordinator did not create its socket"

cat >"$T/job.json" <<'JSON'
{ "name": "cli-job",
  "model": { "input": 8, "layers": [ {"type": "linear", "out": 4} ], "loss": "softmax_xent" },
  "data": { "dataset": "synthetic", "samples": 64, "classes": 4, "seed": 1 },
  "parallel": { "pp": 1, "tp": 1, "dp": 1, "micro_batches": 1 },
  "train": { "batch_size": 16, "steps": 2, "optimizer": "sgd", "lr": 0.1, "seed": 1 } }
JSON

# --- --help on every command, and `help CMD` ---------------------------------
for cmd in run verify sample export nodes jobs submit status waits logs cancel trace; do
    expect_exit 0 "$cmd --help" "$CLIENT" "$cmd" --help
    grep -q "usage: mpar-client $cmd" "$T/out" || fail "$cmd --help: $(cat "$T/out")"
    expect_exit 0 "help $cmd" "$CLIENT" help "$cmd"
    grep -q "usage: mpar-client $cmd" "$T/out" || fail "help $cmd: $(cat "$T/out")"
done
expect_exit 0 "--help" "$CLIENT" --help
grep -q "before or after the command" "$T/out" || fail "--help does not describe global options"

# --- both orders give the same document ----------------------------------------
same() { # description, then the two command lines separated by --
    local what=$1 a=() b=() seen=0
    shift
    for x in "$@"; do
        if [ "$x" = -- ] && [ $seen = 0 ]; then seen=1; continue; fi
        if [ $seen = 0 ]; then a+=("$x"); else b+=("$x"); fi
    done
    set +e
    "$CLIENT" "${a[@]}" >"$T/a.out" 2>"$T/a.err"
    local ra=$?
    "$CLIENT" "${b[@]}" >"$T/b.out" 2>"$T/b.err"
    local rb=$?
    set -e
    [ $ra = $rb ] || fail "$what: exit $ra before, $rb after ($(cat "$T/a.err" "$T/b.err"))"
    cmp -s "$T/a.out" "$T/b.out" || fail "$what: outputs differ: $(cat "$T/a.out") VS $(cat "$T/b.out")"
    echo "ok $what: same in both orders (exit $ra)"
}
same "nodes" --socket "$S" -o json nodes -- nodes --socket "$S" -o json
same "nodes joined forms" --socket="$S" -ojson nodes -- nodes -o json --socket="$S"
same "nodes over TCP" --connect "127.0.0.1:$PORT" -o json nodes -- nodes -o json --connect "127.0.0.1:$PORT"
"$CLIENT" --socket "$S" -o json submit "$T/job.json" >"$T/s1.json" || fail "submit, options before"
"$CLIENT" submit "$T/job.json" --socket "$S" -o json >"$T/s2.json" || fail "submit, options after"
J1=$(jget 'd["id"]' <"$T/s1.json")
J2=$(jget 'd["id"]' <"$T/s2.json")
[ "$(jget 'd["state"]' <"$T/s1.json")" = PENDING ] || fail "submit: $(cat "$T/s1.json")"
[ "$J1" != "$J2" ] || fail "two submits, one id"
echo "ok submit in both orders: jobs $J1 and $J2"
same "jobs" --socket "$S" -o json jobs -- jobs -o json --socket "$S"
same "status" --socket "$S" -o json status "$J1" -- status "$J1" --socket "$S" -o json
same "logs" -o json --socket "$S" logs "$J1" -- logs "$J1" -o json --socket "$S"
same "waits (a pending job)" --socket "$S" -o json waits "$J1" -- waits "$J1" --socket "$S" -o json
same "verify" -o json verify "$T/job.json" --steps 1 -- verify "$T/job.json" --steps 1 -o json
same "trace (no timeline yet)" --socket "$S" trace "$J1" -- trace "$J1" --socket "$S"
grep -q "no timeline" "$T/a.err" || fail "trace of a pending job: $(cat "$T/a.err")"
"$CLIENT" --socket "$S" -o json cancel "$J1" >"$T/c1.json" || fail "cancel, options before"
"$CLIENT" cancel "$J2" --socket "$S" -o json >"$T/c2.json" || fail "cancel, options after"
[ "$(jget 'd["state"]' <"$T/c1.json")" = CANCELLED ] || fail "cancel: $(cat "$T/c1.json")"
[ "$(jget 'd["state"]' <"$T/c2.json")" = CANCELLED ] || fail "cancel: $(cat "$T/c2.json")"
echo "ok cancel in both orders"
"$CLIENT" -o json run "$T/job.json" --serial --quiet >"$T/r1.json" || fail "run, -o before"
"$CLIENT" run "$T/job.json" --serial --quiet -o json >"$T/r2.json" || fail "run, -o after"
python3 - "$T/r1.json" "$T/r2.json" <<'PY' || fail "run -o json differs by the option's place"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:])
assert a["state"] == b["state"] == "SUCCEEDED", (a, b)
assert a["losses"] == b["losses"], (a["losses"], b["losses"])
PY
echo "ok run -o json in both orders"

# --- exit codes --------------------------------------------------------------------
expect_exit 2 "unknown command" "$CLIENT" frobnicate
expect_exit 2 "unknown command after globals" "$CLIENT" --socket "$S" frobnicate
expect_exit 2 "unknown global option" "$CLIENT" --frobnicate nodes
expect_exit 2 "unknown command option" "$CLIENT" nodes --frobnicate --socket "$S"
expect_exit 2 "globals and no command" "$CLIENT" --socket "$S"
expect_exit 2 "-o yaml before" "$CLIENT" -o yaml nodes --socket "$S"
expect_exit 2 "status without JOB" "$CLIENT" --socket "$S" status
expect_exit 2 "run with --socket" "$CLIENT" --socket "$S" run "$T/job.json"
grep -q "submit" "$T/err" || fail "run --socket does not point to submit: $(cat "$T/err")"
expect_exit 1 "status of no such job" "$CLIENT" --socket "$S" status 999
expect_exit 3 "unreachable socket" "$CLIENT" --socket "$T/none.sock" nodes
grep -q "is mpard running" "$T/err" || fail "unreachable: $(cat "$T/err")"
expect_exit 3 "unreachable TCP" "$CLIENT" --connect "127.0.0.1:1" nodes

# A grid this machine cannot hold is refused before any daemon starts.
python3 - "$T/job.json" "$T/huge.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["model"]["layers"] = [{"type": "linear", "out": 64} for _ in range(64)] + [{"type": "linear", "out": 4}]
d["parallel"] = {"pp": 64, "tp": 64, "dp": 1, "micro_batches": 1}
d["train"]["batch_size"] = 16
json.dump(d, open(sys.argv[2], "w"))
PY
START=$(now_ms)
expect_exit 2 "run on a grid the machine cannot hold" "$CLIENT" run "$T/huge.json"
grep -q "pp=64 x tp=64 x dp=1 needs 65 daemons" "$T/err" || fail "capacity refusal: $(cat "$T/err")"
grep -q "core" "$T/err" || fail "the refusal does not say what the machine has: $(cat "$T/err")"
[ $(($(now_ms) - START)) -lt 10000 ] || fail "the refusal took $(($(now_ms) - START)) ms"
echo "ok capacity: $(cat "$T/err")"

# Permission: a user outside the socket's group gets told so (exit 4).
if command -v runuser >/dev/null && id nobody >/dev/null 2>&1 &&
    runuser -u nobody -- test -x "$CLIENT" 2>/dev/null; then
    chmod 0755 "$T"
    chgrp root "$S"
    chmod 0660 "$S"
    expect_exit 4 "permission denied on the socket" runuser -u nobody -- "$CLIENT" --socket "$S" jobs
    grep -q "permission denied" "$T/err" || fail "no permission message: $(cat "$T/err")"
    grep -q "is mpard running" "$T/err" && fail "permission error blames the daemon: $(cat "$T/err")"
    echo "ok the permission hint names the cause"
else
    echo "skip permission hint (no runuser, no user nobody, or nobody cannot run $CLIENT)"
fi
echo PASS
