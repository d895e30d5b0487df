#!/usr/bin/env python3
"""bench_pipeline_json.py BIN_DIR: mpar-bench-pipeline --quick --only bubble -o json
writes DESIGN.md's benchmark document, and its bubble results hold together.

Checks the shape (every result has test, unit and mpar; a bubble result
its p, m, schedule, measured, theory, predicted, last_step and replayed;
at p = 2 the median of 3 rounds within their range, zero_bubble's and
interleaved's ratio to 1f1b's),
that each theory is its schedule's formula, that the replay of the last
step (the same action times, messages at once) is never slower than the
step itself and was computed (not -1), and the activation slots 1F1B and
GPipe promise.  No timing is asserted: the fractions only have to be
fractions.
"""
import json
import subprocess
import sys


def fail(msg):
    print("bench_pipeline_json: FAIL: " + msg)
    sys.exit(1)


def theory(schedule, p, m):
    if schedule in ("gpipe", "1f1b"):
        return (p - 1) / (m + p - 1)
    if schedule == "zero_bubble":
        return (p - 1) / (3 * m + p - 1)
    if schedule == "interleaved_1f1b":
        return (p - 1) / (2 * m + p - 1)  # the benchmark's 2 chunks a stage
    fail("unknown schedule " + schedule)


def main():
    bench = sys.argv[1] + "/mpar-bench-pipeline"
    out = subprocess.run([bench, "--quick", "--only", "bubble", "-o", "json"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        fail("exit %d: %s" % (out.returncode, out.stderr[-2000:]))
    doc = json.loads(out.stdout)
    if doc.get("bench") != "pipeline" or not doc.get("results"):
        fail("not a pipeline benchmark document: %.200s" % out.stdout)
    bubbles = 0
    for r in doc["results"]:
        for k in ("test", "unit", "mpar"):
            if k not in r:
                fail("a result without %s: %s" % (k, r))
        if r["test"] == "bubble":
            bubbles += 1
            for k in ("p", "m", "schedule", "measured", "theory", "predicted",
                      "last_step", "replayed"):
                if k not in r:
                    fail("a bubble without %s: %s" % (k, r))
            what = "%s p=%d m=%d" % (r["schedule"], r["p"], r["m"])
            if abs(r["theory"] - theory(r["schedule"], r["p"], r["m"])) > 1e-9:
                fail("%s: theory %g is not its formula's" % (what, r["theory"]))
            for k in ("measured", "predicted", "last_step", "replayed"):
                if not 0.0 <= r[k] < 1.0:
                    fail("%s: %s %g is not a fraction (-1: the spans did not match the "
                         "schedule)" % (what, k, r[k]))
            rounds = r.get("rounds", 0)
            if rounds != (3 if r["p"] == 2 else 1):
                fail("%s: %s rounds, expected 3 at p = 2 (--quick) and 1 at p = 4" %
                     (what, rounds))
            if not r["measured_min"] <= r["measured"] <= r["measured_max"]:
                fail("%s: the median %g is outside its rounds' range %g-%g" %
                     (what, r["measured"], r["measured_min"], r["measured_max"]))
            if r["p"] == 2 and r["schedule"] in ("zero_bubble", "interleaved_1f1b") and \
                    not 0.0 <= r.get("of_1f1b", -1.0):
                fail("%s: no ratio to 1f1b's bubble" % what)
            if r["replayed"] > r["last_step"] + 1e-3:
                fail("%s: the replay with instant messages (%g) is slower than the step "
                     "it replays (%g)" % (what, r["replayed"], r["last_step"]))
        elif r["test"] == "peak_activation":
            p, m, s = r["p"], r["m"], r["stage"]
            if r["schedule"] == "1f1b" and r["slots"] > min(p - s, m):
                fail("1f1b p=%d m=%d stage %d holds %d slots, more than p - s" %
                     (p, m, s, r["slots"]))
            if r["schedule"] == "gpipe" and r["slots"] != m:
                fail("gpipe p=%d m=%d stage %d holds %d slots, not m" % (p, m, s, r["slots"]))
    if bubbles != 24:
        fail("%d bubble results, expected 24 (p 2, 4 x m 4, 8, 16 x 4 schedules)" % bubbles)
    print("bench_pipeline_json: %d bubble results hold together" % bubbles)


main()
