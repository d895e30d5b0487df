# shellcheck shell=bash
# daemon_lib.sh - shell helpers of the integration tests that start mpard
# daemons (sourced by control_cluster.sh and engine_daemon_lib.sh): every
# process in PIDS is killed on exit and the mktemp dir T removed (kept with
# KEEP=1); fail prints the daemons' logs; polling, JSON and port helpers;
# expect_exit checks a command's exit code.
# Needs T made by the caller.

PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    for f in "$T"/*.log; do echo "--- $f"; tail -n 40 "$f"; done >&2
    exit 1
}

now_ms() { date +%s%3N; }

# JSON field from stdin: jget EXPR, EXPR is Python over `d`.
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() { # seconds command...: polls until the command succeeds
    local limit=$1
    shift
    local end=$(($(date +%s%3N) + limit * 1000))
    while [ "$(date +%s%3N)" -lt $end ]; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.05
    done
    return 1
}

expect_exit() { # code description command...: runs it (stdout in $T/out, stderr in $T/err)
    local want=$1 what=$2
    shift 2
    set +e
    "$@" >"$T/out" 2>"$T/err"
    local rc=$?
    set -e
    [ $rc = "$want" ] || fail "$what: exit $rc, want $want (stderr: $(cat "$T/err"))"
    echo "ok $what (exit $want): $(head -n 1 "$T/err")"
}
