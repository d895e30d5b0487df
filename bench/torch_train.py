#!/usr/bin/python3
"""Peer for mpar-bench-train: PyTorch CPU training throughput of a job spec's
model (same layers, batch size, optimizer and thread count), batches taken in
file order.  Prints {"samples_per_s": x, "steps": n, "threads": t}."""
import argparse
import gzip
import json
import os
import sys
import time

import numpy as np
import torch

# The model definition is the cross-check's (tests/ref/torch_model.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))
from torch_model import build  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
    spec = json.load(open(a.spec))
    with gzip.open(a.data + "/train-images-idx3-ubyte.gz") as f:
        raw = f.read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    with gzip.open(a.data + "/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    model = build(spec).to(dev)
    tr = spec["train"]
    if tr["optimizer"] == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr.get("momentum", 0))
    B = tr["batch_size"]
    per_epoch = x.shape[0] // B

    def step(k):
        # Each batch goes host -> device every step, as mpar's trainer does.
        xb, yb = x[k * B:(k + 1) * B].to(dev), y[k * B:(k + 1) * B].to(dev)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for k in range(5):  # warm-up, as mpar's first steps include allocation
        step(k)
    sync()
    t0 = time.perf_counter()
    for s in range(a.steps):
        step(s % per_epoch)
    sync()
    dt = time.perf_counter() - t0
    json.dump({"samples_per_s": a.steps * B / dt, "steps": a.steps, "threads": a.threads,
               "device": a.device, "tf32": a.tf32}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
