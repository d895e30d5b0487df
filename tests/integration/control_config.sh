#!/usr/bin/env bash
# mpard's configuration and mpar-client's usage errors, and the status
# socket's permissions: flags and INI keys, what is refused at start (exit 2,
# or 1 for an unsafe secret file), a flag winning over the file, loopback
# only without a secret, and SO_PEERCRED: a member of the socket's group may
# read but not submit.
#
# usage: control_config.sh MPARD MPAR_CLIENT SOURCE_DIR
set -euo pipefail
MPARD=$1
CLIENT=$2
SRC=$3
T=$(mktemp -d /tmp/mpar-ctl-config.XXXXXX)
# shellcheck source=daemon_lib.sh
. "$SRC/tests/integration/daemon_lib.sh"

expect_exit 0 "mpard --help" "$MPARD" --help
expect_exit 2 "unknown flag" "$MPARD" --frobnicate
expect_exit 2 "bad devices" "$MPARD" --coordinator --devices cpu:0
expect_exit 2 "bad cuda list" "$MPARD" --coordinator --devices cuda:0,0
expect_exit 2 "missing --config" "$MPARD" --config "$T/none.conf"
expect_exit 2 "node without --join" "$MPARD" --config /dev/null
expect_exit 2 "dead-after <= heartbeat" "$MPARD" --coordinator --heartbeat-ms 500 --dead-after-ms 500
printf '[mpard]\ncoordinator = true\nfrobnicate = 1\n' >"$T/bad.conf"
expect_exit 2 "unknown INI key" "$MPARD" --config "$T/bad.conf"
grep -q "line 3" "$T/err" || fail "the INI error does not name its line"
printf 'a-long-enough-cluster-secret\n' >"$T/secret"
chmod 0644 "$T/secret"
expect_exit 1 "world-readable secret" "$MPARD" --coordinator --secret-file "$T/secret" \
    --socket "$T/x.sock" --state-dir "$T/x"
grep -q "chmod 0400" "$T/err" || fail "the secret error does not say how to fix it"

expect_exit 2 "client without a command" "$CLIENT" nodes extra
expect_exit 2 "client -o yaml" "$CLIENT" nodes -o yaml
expect_exit 2 "client status without JOB" "$CLIENT" status
expect_exit 2 "client submit of a missing file" "$CLIENT" submit "$T/none.json"
expect_exit 2 "client --secret-file without --connect" "$CLIENT" nodes --secret-file "$T/secret"

# A flag wins over the file; without a secret the listener stays on loopback.
chmod 0755 "$T"
printf '[mpard]\nname = from-file\ncoordinator = true\nlisten = 0.0.0.0:0\ndevices = none\nsocket = %s\nstate-dir = %s\n' \
    "$T/c.sock" "$T/state" >"$T/c.conf"
"$MPARD" --config "$T/c.conf" --name from-flag >"$T/c.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$T/c.sock" ] && break; sleep 0.05; done
STATUS=$(printf '{"cmd":"status"}\n' | socat -t 2 - "UNIX-CONNECT:$T/c.sock")
[ "$(echo "$STATUS" | jget 'd["name"]')" = from-flag ] || fail "the flag did not win: $STATUS"
echo "$STATUS" | jget 'd["listen"]' | grep -q '^127\.0\.0\.1:' || fail "no secret, yet not loopback: $STATUS"
grep -q "loopback only" "$T/c.log" || fail "mpard did not say it bound loopback only"
[ "$(stat -c %a "$T/c.sock")" = 660 ] || fail "socket mode $(stat -c %a "$T/c.sock"), want 660"
echo "ok flag over file, loopback only without a secret, socket 0660"

# A corrupt state file is moved aside, and the coordinator still starts.
mkdir -p "$T/cs"
echo '{"version": 1, "jobs": [' >"$T/cs/jobs.json"
"$MPARD" --coordinator --devices none --listen 127.0.0.1:0 --socket "$T/cs.sock" \
    --state-dir "$T/cs" >"$T/cs.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$T/cs.sock" ] && break; sleep 0.05; done
printf '{"cmd":"status"}\n' | socat -t 2 - "UNIX-CONNECT:$T/cs.sock" | grep -q '"ok":true' ||
    fail "coordinator with a corrupt state file did not start: $(cat "$T/cs.log")"
ls "$T/cs"/jobs.json.corrupt-* >/dev/null 2>&1 || fail "the corrupt state file was not kept aside"
echo "ok corrupt state file moved aside"

# SO_PEERCRED: the socket's group reads, only root and mpard's user change jobs.
if command -v runuser >/dev/null && id nobody >/dev/null 2>&1 &&
    runuser -u nobody -- test -x "$CLIENT" 2>/dev/null; then
    chgrp "$(id -gn nobody)" "$T/c.sock"
    runuser -u nobody -- "$CLIENT" nodes --socket "$T/c.sock" >/dev/null || fail "group member cannot read"
    set +e
    runuser -u nobody -- "$CLIENT" submit "$SRC/examples/fashion_mnist.json" --socket "$T/c.sock" 2>"$T/err"
    RC=$?
    set -e
    [ $RC = 4 ] || fail "group member submit: exit $RC, want 4"
    grep -q "permission denied" "$T/err" || fail "no permission message: $(cat "$T/err")"
    OUT=$(printf '{"cmd":"cancel","id":"1"}\n' | runuser -u nobody -- socat -t 2 - "UNIX-CONNECT:$T/c.sock")
    echo "$OUT" | grep -q "permission denied" || fail "JSON cancel by a group member: $OUT"
    "$CLIENT" submit "$SRC/examples/fashion_mnist.json" --socket "$T/c.sock" >/dev/null || fail "root cannot submit"
    echo "ok group reads, only root and mpard's user change jobs"
else
    echo "skip peer-credential check (no runuser, no user nobody, or nobody cannot run $CLIENT)"
fi
echo "PASS"
