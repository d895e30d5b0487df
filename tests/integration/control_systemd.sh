#!/usr/bin/env bash
# The systemd unit of mpard: `systemd-analyze verify` accepts it (with
# ExecStart pointed at the built binary, since verify checks that it exists)
# and `systemd-analyze security --offline=true` scores it 5.0 or lower.
#
# usage: control_systemd.sh UNIT_FILE MPARD
set -euo pipefail
UNIT=$1
MPARD=$2
T=$(mktemp -d /tmp/mpar-unit-test.XXXXXX)
trap 'rm -rf "$T"' EXIT

sed "s|^ExecStart=[^ ]*|ExecStart=$MPARD|" "$UNIT" >"$T/mpard.service"
grep -q "^ExecStart=$MPARD " "$T/mpard.service" || { echo "FAIL: no ExecStart to rewrite"; exit 1; }
systemd-analyze verify "$T/mpard.service"
echo "ok systemd-analyze verify"

for key in Type=notify WatchdogSec= RuntimeDirectory=mpar StateDirectory=mpar \
           ConfigurationDirectory=mpar NoNewPrivileges=yes ProtectSystem=strict \
           ProtectHome=yes PrivateTmp=yes DeviceAllow=/dev/nvidiactl; do
    grep -q "^$key" "$UNIT" || { echo "FAIL: the unit lacks $key"; exit 1; }
done

OUT=$(systemd-analyze security --offline=true "$T/mpard.service" 2>&1 | tail -n 1)
echo "$OUT"
SCORE=$(echo "$OUT" | sed -n 's/.*exposure level for mpard.service: \([0-9.]*\).*/\1/p')
[ -n "$SCORE" ] || { echo "FAIL: no score in: $OUT"; exit 1; }
python3 -c "import sys; sys.exit(0 if float('$SCORE') <= 5.0 else 1)" ||
    { echo "FAIL: exposure $SCORE > 5.0"; exit 1; }
echo "ok security exposure $SCORE <= 5.0"
