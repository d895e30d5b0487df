#!/usr/bin/python3
"""PyTorch cross-check of mpar's serial GPT (the ground truth for text models).

A GPT written from DESIGN.md's text (tests/ref/torch_model.py) loads the
weights mpar saved at step 0 (steps: 0, --save-weights); both train STEPS
steps with shuffle false on the same windows of a text file this script
writes (DESIGN.md "Text data": the first floor(0.9 n) bytes train; sample i
is bytes [iT, iT + T) -> the next bytes), and we compare:

- the per-step loss curves: relative 1e-5 (SGD and AdamW);
- the final weights, max |a - b| / max |ref| per tensor: 1e-5 with SGD,
  1e-3 with AdamW.  One tensor is held to an absolute bound instead: the K
  third of attn.qkv.bias has a zero true gradient (a bias on every key adds
  the same q.b_k to all of a query's scores, which softmax ignores), so its
  gradient is rounding noise of either side, which AdamW's m / sqrt(v) step
  turns into moves of up to lr each; both sides stay within 2 * lr * steps
  of their common start;
- greedy generation: `mpar-client sample --temperature 0` from mpar's final
  weights equals PyTorch's greedy continuation from the same weights (PyTorch
  feeds the unpadded context, so this also proves mpar's padding), and a
  seeded sample at temperature 1 is the same on two runs.

usage: torch_gpt_check.py MPAR_CLIENT [--steps N]
Prints one line per check and a closing "N passed, N failed"; exits 1 on any
failure.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

import numpy as np
import torch

from mpar_run import run_mpar
from torch_model import build, mpar_params

STEPS = 30

WORDS = ("and the of to in that he shall unto for i his a lord they be is him not them it "
         "with all thou thy was which my me said but ye their have will thee from as are "
         "when this out were upon man by you israel king son up there hath then people "
         "came had house on into one god land").split()


def write_corpus(path, n_bytes, seed=5):
    """Seeded pseudo-verses: enough structure for the loss to fall."""
    rng = random.Random(seed)
    out, size, verse = [], 0, 1
    while size < n_bytes:
        line = f"{verse}:{rng.randint(1, 40)} " + " ".join(
            rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + ".\n"
        out.append(line)
        size += len(line)
        verse += 1
    data = "".join(out).encode()[:n_bytes]
    with open(path, "wb") as f:
        f.write(data)
    return data


def windows(data, T):
    """DESIGN.md "Text data": the training split's samples, x and y [n, T]."""
    split = data[: (9 * len(data)) // 10]
    n = (len(split) - 1) // T
    a = np.frombuffer(split, dtype=np.uint8).astype(np.int64)
    x = np.stack([a[i * T: i * T + T] for i in range(n)])
    y = np.stack([a[i * T + 1: i * T + T + 1] for i in range(n)])
    return torch.from_numpy(x), torch.from_numpy(y)


def load_into(model, wdir):
    with torch.no_grad():
        for name, p, tr in mpar_params(model):
            a = torch.from_numpy(np.load(os.path.join(wdir, name + ".npy")))
            a = a.t() if tr else a
            if tuple(a.shape) != tuple(p.shape):
                raise RuntimeError(f"{name}.npy: shape {tuple(a.shape)} where PyTorch has "
                                   f"{tuple(p.shape)}")
            p.copy_(a)


def optimizer(model, tr):
    if tr["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=tr["lr"], momentum=tr.get("momentum", 0),
                               weight_decay=tr.get("weight_decay", 0),
                               nesterov=tr.get("nesterov", False))
    betas = tuple(tr.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(model.parameters(), lr=tr["lr"], betas=betas,
                             eps=tr.get("eps", 1e-8), weight_decay=tr.get("weight_decay", 0.01))


def greedy_torch(model, prompt, n, T):
    ctx = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids = torch.tensor([ctx[-T:]], dtype=torch.long)
            logits = model(ids)[0, -1, :256]
            top = torch.topk(logits, 2).values
            ctx.append(int(torch.argmax(logits)))
            yield ctx[-1], float(top[0] - top[1])


def check_case(client, spec, tag, data, steps, tmp):
    res = []
    tr = spec["train"]
    sgd = tr["optimizer"] == "sgd"
    T = spec["data"]["block_size"]
    _, w0, _ = run_mpar(client, spec, tmp, tag, 0)
    doc, w1, spec_path = run_mpar(client, spec, tmp, tag, steps)

    torch.manual_seed(0)
    model = build(spec)
    load_into(model, w0)
    opt = optimizer(model, tr)
    x, y = windows(data, T)
    B = tr["batch_size"]
    per_epoch = x.shape[0] // B
    losses = []
    for s in range(steps):
        k = s % per_epoch
        xb, yb = x[k * B:(k + 1) * B], y[k * B:(k + 1) * B]
        opt.zero_grad()
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 yb.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())

    ml = np.array(doc.get("losses", []), dtype=np.float64)
    tl = np.array(losses, dtype=np.float64)
    lim = 1e-5
    rel = float(np.max(np.abs(ml - tl) / np.abs(tl))) if len(ml) == len(tl) else float("inf")
    res.append((f"{tag}: loss curve over {steps} steps ({tl[0]:.4f} -> {tl[-1]:.4f}), max "
                f"relative difference {rel:.3g} (limit {lim:g})", rel <= lim))

    lim_w = 1e-5 if sgd else 1e-3
    bound_k = 2 * tr["lr"] * steps
    worst, worst_name, k_diff = 0.0, "", 0.0
    with torch.no_grad():
        for name, p, trn in mpar_params(model):
            ref = (p.t() if trn else p).numpy().astype(np.float64)
            got = np.load(os.path.join(w1, name + ".npy")).astype(np.float64)
            if got.shape != ref.shape:
                res.append((f"{tag}: {name} shape {got.shape} != {ref.shape}", False))
                continue
            if not sgd and name.endswith("attn.qkv.bias"):
                C = ref.shape[0] // 3
                k_diff = max(k_diff, float(np.max(np.abs(got[C:2 * C] - ref[C:2 * C]))))
                got = np.concatenate([got[:C], got[2 * C:]])
                ref = np.concatenate([ref[:C], ref[2 * C:]])
            d = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            if d > worst:
                worst, worst_name = d, name
    res.append((f"{tag}: final weights, worst relative difference {worst:.3g} in {worst_name} "
                f"(limit {lim_w:g})", worst <= lim_w))
    if not sgd:
        res.append((f"{tag}: K third of attn.qkv.bias (zero true gradient), max |difference| "
                    f"{k_diff:.3g} (bound 2 * lr * steps = {bound_k:g})", k_diff <= bound_k))

    # Greedy generation from mpar's final weights, on both sides.
    prompt = b"12:7 And the"  # shorter than T: the first steps pad
    n = 2 * T
    load_into(model, w1)
    picks = list(greedy_torch(model, prompt, n, T))
    want = bytes(b for b, _ in picks)
    r = subprocess.run([client, "sample", spec_path, "--weights", w1, "--prompt",
                        prompt.decode(), "--tokens", str(n), "--temperature", "0"],
                       capture_output=True, timeout=300)
    got = r.stdout[len(prompt):len(prompt) + n] if r.returncode == 0 else b""
    same = r.returncode == 0 and r.stdout[:len(prompt)] == prompt and got == want
    margin = min(m for _, m in picks)
    res.append((f"{tag}: greedy sample of {n} bytes (beyond the {T}-byte window) equals "
                f"PyTorch's, smallest top-2 logit margin {margin:.3g}: {want!r}"
                + ("" if same else f" vs mpar {got!r} (rc {r.returncode}: "
                                   f"{r.stderr.decode().strip()})"), same))
    outs = []
    for _ in range(2):
        r = subprocess.run([client, "sample", spec_path, "--weights", w1, "--prompt",
                            prompt.decode(), "--tokens", "40", "--temperature", "1",
                            "--top-k", "20", "--seed", "9"], capture_output=True, timeout=300)
        outs.append((r.returncode, r.stdout))
    res.append((f"{tag}: a seeded sample (temperature 1, top-k 20, seed 9) is reproducible",
                outs[0][0] == 0 and outs[0] == outs[1]))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("client")
    ap.add_argument("--steps", type=int, default=STEPS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        data = write_corpus(corpus, 24000)
        base = {
            "model": {"layers": [
                {"type": "embedding", "vocab": 256, "dim": 48, "max_seq": 20},
                {"type": "transformer_block", "heads": 3, "ffn": 80},
                {"type": "transformer_block", "heads": 3, "ffn": 80},
                {"type": "layernorm"},
                {"type": "linear", "out": 256}],
                "loss": "softmax_xent"},
            "data": {"dataset": "text", "path": corpus, "block_size": 16},
        }
        sgd = json.loads(json.dumps(base))
        sgd["name"] = "torch-gpt-sgd"
        sgd["train"] = {"batch_size": 8, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                        "seed": 3}
        adamw = json.loads(json.dumps(base))
        adamw["name"] = "torch-gpt-adamw"
        adamw["train"] = {"batch_size": 8, "optimizer": "adamw", "lr": 3e-3, "seed": 4}
        for spec, tag in ((sgd, "gpt-sgd"), (adamw, "gpt-adamw")):
            try:
                res = check_case(a.client, spec, tag, data, a.steps, tmp)
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
