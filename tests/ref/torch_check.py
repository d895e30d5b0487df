#!/usr/bin/python3
"""PyTorch cross-check of mpar's serial path (the ground truth).

For each case: mpar saves its initial weights (steps: 0), PyTorch loads them,
both train for STEPS steps on identical batches (shuffle: false, file order),
and we compare the per-step loss curves (relative 1e-4) and the final weights
(max |a-b| / max |ref| per tensor: 1e-5 for SGD, 1e-3 for AdamW, whose m/sqrt(v)
step magnifies rounding-level gradient differences up to 2*lr).

usage: torch_check.py MPAR_CLIENT [--steps N] [--data DIR]
Prints one line per check and a closing "N passed, N failed" line; exits 1 on
any failure.
"""
import argparse
import gzip
import json
import os
import sys
import tempfile

import numpy as np
import torch

from mpar_run import run_mpar
from torch_model import build

STEPS = 50


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def params_of(model, spec):
    """(name as mpar saves it, tensor, transposed?) for every parameter."""
    out = []
    for i, l in enumerate(spec["model"]["layers"]):
        m = model[i]
        if l["type"] == "linear":
            out += [(f"{i}.weight", m.weight, True), (f"{i}.bias", m.bias, False)]
        elif l["type"] == "mlp_block":
            out += [(f"{i}.fc1.weight", m.fc1.weight, True), (f"{i}.fc1.bias", m.fc1.bias, False),
                    (f"{i}.fc2.weight", m.fc2.weight, True), (f"{i}.fc2.bias", m.fc2.bias, False)]
    return out


def check_case(client, spec, tag, tol_w, data_dir, steps, tmp):
    results = []
    _, w0, _ = run_mpar(client, spec, tmp, tag, 0)
    doc, w1, _ = run_mpar(client, spec, tmp, tag, steps)

    torch.manual_seed(0)
    model = build(spec)
    with torch.no_grad():
        for name, p, tr in params_of(model, spec):
            a = torch.from_numpy(np.load(os.path.join(w0, name + ".npy")))
            p.copy_(a.t() if tr else a)

    tr = spec["train"]
    if tr["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr.get("momentum", 0),
                              dampening=tr.get("dampening", 0),
                              weight_decay=tr.get("weight_decay", 0),
                              nesterov=tr.get("nesterov", False))
    else:
        betas = tuple(tr.get("betas", (0.9, 0.999)))
        opt = torch.optim.AdamW(model.parameters(), lr=tr["lr"], betas=betas,
                                eps=tr.get("eps", 1e-8), weight_decay=tr.get("weight_decay", 0.01))

    x = read_idx(os.path.join(data_dir, "train-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(data_dir, "train-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(255.0))
    y = torch.from_numpy(y.astype(np.int64))
    B = tr["batch_size"]
    per_epoch = x.shape[0] // B
    losses = []
    for s in range(steps):
        k = s % per_epoch
        xb, yb = x[k * B:(k + 1) * B], y[k * B:(k + 1) * B]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())

    ml = np.array(doc["losses"], dtype=np.float64)
    tl = np.array(losses, dtype=np.float64)
    rel = float(np.max(np.abs(ml - tl) / np.abs(tl))) if len(tl) else 0.0
    results.append((f"{tag}: loss curve over {steps} steps, max relative difference {rel:.3g} "
                    f"(limit 1e-4)", len(ml) == steps and rel <= 1e-4))

    worst, worst_name = 0.0, ""
    with torch.no_grad():
        for name, p, trn in params_of(model, spec):
            ref = (p.t() if trn else p).numpy().astype(np.float64)
            got = np.load(os.path.join(w1, name + ".npy")).astype(np.float64)
            if got.shape != ref.shape:
                results.append((f"{tag}: {name} shape {got.shape} != {ref.shape}", False))
                continue
            d = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            if d > worst:
                worst, worst_name = d, name
    results.append((f"{tag}: final weights, worst relative difference {worst:.3g} in "
                    f"{worst_name} (limit {tol_w:g})", worst <= tol_w))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("client")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    torch.set_num_threads(1)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "examples", "fashion_mnist.json")) as f:
        example = json.load(f)
    mixed = {
        "name": "torch-check-mixed",
        "model": {"input": 784, "layers": [
            {"type": "linear", "out": 96}, {"type": "relu"},
            {"type": "mlp_block", "hidden": 96, "ffn": 160}, {"type": "gelu"},
            {"type": "linear", "out": 33}, {"type": "relu"},
            {"type": "linear", "out": 10}]},
        "data": {"dataset": "fashion-mnist", "path": a.data},
        "train": {"batch_size": 64, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                  "weight_decay": 1e-4, "seed": 7},
    }
    nesterov = json.loads(json.dumps(mixed))
    nesterov["train"].update({"nesterov": True, "seed": 3, "lr": 0.02})
    example["data"]["path"] = a.data
    cases = [
        (mixed, "sgd-momentum", 1e-5),
        (nesterov, "sgd-nesterov", 1e-5),
        (example, "adamw-example", 1e-3),
    ]
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for spec, tag, tol in cases:
            try:
                res = check_case(a.client, spec, tag, tol, a.data, a.steps, tmp)
            except Exception as e:  # a crash of either side is a failure, reported
                res = [(f"{tag}: {e}", False)]
            for text, ok in res:
                print(("PASS " if ok else "FAIL ") + text, flush=True)
                passed += ok
                failed += not ok
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
