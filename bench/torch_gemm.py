#!/usr/bin/env python3
"""torch_gemm.py - the peer of mpar-bench-gemm: torch.matmul GFLOP/s on one
CUDA device for the same row-major cases (m, n, k, ta, tb), strict fp32 and
TF32, timed like the C side: warm-up, a loop sized to ~100 ms (30 ms with
--quick), median of 5 (3) repetitions, CUDA events.  A transposed operand is
a transposed view (torch hands cuBLAS the flag; nothing is copied).  Prints
one JSON document: {"torch": version, "device": name, "results": [{"test":
"gemm_fp32"|"gemm_tf32", "m", "n", "k", "ta", "tb", "gflops"}]}.
"""
import argparse
import json
import sys

import torch

DEFAULT_CASES = ("256,512,784,N,N;256,784,512,N,T;784,512,256,T,N;"
                 "256,2048,512,N,N;256,512,2048,N,T;512,2048,256,T,N;"
                 "256,512,2048,N,N;256,2048,512,N,T;2048,512,256,T,N;"
                 "4096,4096,4096,N,N")


def set_tf32(on):
    """TF32 for fp32 matmuls on or off: the fp32_precision API of recent torch
    (which refuses to be mixed with the old flag), else allow_tf32."""
    mm = torch.backends.cuda.matmul
    if hasattr(mm, "fp32_precision"):
        mm.fp32_precision = "tf32" if on else "ieee"
    else:
        mm.allow_tf32 = on


def operand(rows, cols, trans, dev):
    """A [rows, cols] operand; transposed ones are views of a [cols, rows] tensor."""
    if trans == "T":
        return (torch.rand(cols, rows, device=dev) * 2 - 1).t()
    return torch.rand(rows, cols, device=dev) * 2 - 1


def time_case(m, n, k, ta, tb, dev, quick):
    a = operand(m, k, ta, dev)
    b = operand(k, n, tb, dev)
    c = torch.empty(m, n, device=dev)
    target_ms = 30.0 if quick else 100.0
    reps = 3 if quick else 5
    start = torch.cuda.Event(enable_timing=True)
    stop = torch.cuda.Event(enable_timing=True)
    iters = 3
    out = []
    for p in range(2 + reps):
        start.record()
        for _ in range(iters):
            torch.matmul(a, b, out=c)
        stop.record()
        stop.synchronize()
        ms = start.elapsed_time(stop)
        if p == 1:
            per = ms / iters
            want = target_ms / per if per > 0 else 10000
            iters = int(min(max(want, 3), 10000))
        elif p >= 2:
            out.append(2.0 * m * n * k * iters / (ms * 1e-3) / 1e9)
    out.sort()
    return out[len(out) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_gemm.py: torch sees no CUDA device", file=sys.stderr)
        return 1
    dev = torch.device("cuda", args.device)
    torch.cuda.set_device(dev)
    results = []
    for test, tf32 in (("gemm_fp32", False), ("gemm_tf32", True)):
        set_tf32(tf32)
        for case in args.cases.split(";"):
            m, n, k, ta, tb = case.split(",")
            m, n, k = int(m), int(n), int(k)
            g = time_case(m, n, k, ta, tb, dev, args.quick)
            results.append({"test": test, "m": m, "n": n, "k": k, "ta": ta, "tb": tb,
                            "gflops": g})
    json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(dev),
               "results": results}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
