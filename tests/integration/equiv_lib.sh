# shellcheck shell=bash
# equiv_lib.sh - the checks of "equals the serial run" shared by the
# integration tests that run jobs through daemons (engine_daemon_equiv.sh,
# netns_cluster.sh): saved weights per tensor and loss curves.

# compare DIR_REF DIR_GOT TOL: every .npy of the reference, same shape, close.
compare() {
    python3 - "$@" <<'PY'
import ast, os, struct, sys
ref, got, tol = sys.argv[1], sys.argv[2], float(sys.argv[3])
def load(p):
    b = open(p, "rb").read()
    assert b[:6] == b"\x93NUMPY", p
    hl = struct.unpack("<H", b[8:10])[0]
    h = ast.literal_eval(b[10:10 + hl].decode())
    assert h["descr"] == "<f4" and not h["fortran_order"], (p, h)
    n = 1
    for s in h["shape"]:
        n *= s
    return h["shape"], struct.unpack("<%df" % n, b[10 + hl:10 + hl + 4 * n])
names = sorted(f for f in os.listdir(ref) if f.endswith(".npy"))
if not names or sorted(f for f in os.listdir(got) if f.endswith(".npy")) != names:
    sys.exit("files differ: %s vs %s" % (names, sorted(os.listdir(got))))
worst = 0.0
for f in names:
    sa, a = load(os.path.join(ref, f))
    sb, b = load(os.path.join(got, f))
    if sa != sb:
        sys.exit("%s: shape %s vs %s" % (f, sa, sb))
    m = max(abs(x) for x in a) or 1.0
    e = max(abs(x - y) for x, y in zip(a, b)) / m
    worst = max(worst, e)
    if not e <= tol:
        sys.exit("%s: relative error %.3g > %g" % (f, e, tol))
print("max relative error %.3g over %d tensors" % (worst, len(names)))
PY
}

# losses JOB.json SERIAL.json TOL
losses() {
    python3 - "$@" <<'PY'
import json, sys
a = json.load(open(sys.argv[1])); b = json.load(open(sys.argv[2])); tol = float(sys.argv[3])
la, lb = a["losses"], b["losses"]
if len(la) != len(lb) or not la:
    sys.exit("loss curves: %s vs %s" % (la, lb))
for x, y in zip(la, lb):
    if not abs(x - y) <= tol * max(1.0, abs(y)):
        sys.exit("loss curves differ: %s vs %s" % (la, lb))
PY
}

