#!/usr/bin/python3
"""Peer for mpar-bench-train: PyTorch CPU training throughput of a job spec's
model (same layers, batch size, optimizer and thread count), batches taken in
file order.  Prints {"samples_per_s": x, "steps": n, "threads": t,
"arrangement": name, "tried": {name: samples_per_s, ...}}.

PyTorch runs in its best arrangement of exactly N threads: Debian's torch
does its GEMMs in OpenBLAS, which ignores torch.set_num_threads and reads
OPENBLAS_NUM_THREADS once, when it is loaded.  So every arrangement runs in a
fresh interpreter with the environment set before torch is imported, and
the fastest is the peer:
  matched    torch.set_num_threads(N), OMP/OpenBLAS/MKL threads N
  blas       the BLAS at N threads, torch's own ops at 1
  omp        torch's ops at N threads, the BLAS at 1
(at N = 1 the three are the same, and only "matched" runs).  --arrangement
runs one of them, in this process."""
import argparse
import gzip
import json
import os
import subprocess
import sys
import time

ARRANGEMENTS = {
    # name: (torch intra-op threads, BLAS threads) as functions of N
    "matched": (lambda n: n, lambda n: n),
    "blas": (lambda n: 1, lambda n: n),
    "omp": (lambda n: n, lambda n: 1),
}

# The model definition is the cross-check's (tests/ref/torch_model.py),
# imported (with torch) only once the threads are set.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "ref"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--arrangement", choices=sorted(ARRANGEMENTS))
    a = ap.parse_args()
    if a.arrangement is None and a.device == "cpu":
        return best_of(a)
    name = a.arrangement or "matched"
    intra, blas = (f(a.threads) for f in ARRANGEMENTS[name])
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(blas)
    os.environ["OMP_NUM_THREADS"] = str(intra)
    global np, torch
    import numpy as np
    import torch
    from torch_model import build
    torch.set_num_threads(intra)
    torch.set_num_interop_threads(1)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
    spec = json.load(open(a.spec))
    x, y = load_data(spec, a.data)
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
        logits = model(xb)
        # A sequence model's loss is the mean over every position.
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          yb.reshape(-1)).backward()
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
               "device": a.device, "tf32": a.tf32, "arrangement": name,
               "torch_threads": intra, "blas_threads": blas}, sys.stdout)
    print()


def load_data(spec, data_dir):
    """The training samples mpar takes: Fashion-MNIST pixels / 255, or a text
    data set's windows (DESIGN.md "Text data": the first 90% of the bytes,
    sample i = bytes[iT, iT+T) with the next bytes as labels)."""
    d = spec["data"]
    if d["dataset"] in ("text", "kjv"):
        if d["dataset"] == "kjv":
            raw = subprocess.run(["/usr/bin/bible", "gen1:1-rev22:21"], capture_output=True,
                                 check=True).stdout
        else:
            raw = open(d["path"], "rb").read()
        b = np.frombuffer(raw[:int(0.9 * len(raw))], np.uint8)
        T = d["block_size"]
        n = (len(b) - 1) // T
        x = b[:n * T].reshape(n, T).astype(np.int64)
        y = b[1:n * T + 1].reshape(n, T).astype(np.int64)
        return x, y
    with gzip.open(data_dir + "/train-images-idx3-ubyte.gz") as f:
        raw = f.read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 784).astype(np.float32) / 255.0
    with gzip.open(data_dir + "/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    return x, y


def best_of(a):
    """Runs every arrangement of a.threads threads in its own interpreter; prints the fastest."""
    names = ["matched"] if a.threads == 1 else sorted(ARRANGEMENTS)
    tried, best = {}, None
    for name in names:
        cmd = [sys.executable, os.path.abspath(__file__), a.spec, "--threads", str(a.threads),
               "--steps", str(a.steps), "--data", a.data, "--arrangement", name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            continue
        r = json.loads(out.stdout)
        tried[name] = r["samples_per_s"]
        if best is None or r["samples_per_s"] > best["samples_per_s"]:
            best = r
    if best is None:
        sys.exit("torch_train: no arrangement ran")
    best["tried"] = tried
    json.dump(best, sys.stdout)
    print()


if __name__ == "__main__":
    main()
