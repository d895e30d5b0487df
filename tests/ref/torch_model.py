"""mpar's layers as a PyTorch model, built from a job spec's "model" section.

One definition for the PyTorch peers: the cross-checks of the serial path
(tests/ref/torch_check.py for MLPs, tests/ref/torch_gpt_check.py for GPTs,
the ground truth) and the training-throughput peer of mpar-bench-train
(bench/torch_train.py), so all run the model that mpar runs.

The GPT layers follow DESIGN.md's text ("Transformers (GPT)", "The math,
exactly"), written out rather than taken from a library: token + position
embedding; GPT-2's pre-LN block with causal attention whose qkv columns are
[Q | K | V], head h at columns [hD, (h+1)D) of each third, the heads' outputs
side by side; LayerNorm eps 1e-5; the head a Linear over the last axis.
Submodules are named so that each layer's named_parameters() are DESIGN.md's
parameter names (attn.qkv.weight, ...).
"""
import math

import torch


class Residual(torch.nn.Module):
    """mlp_block: y = x + gelu(x W1 + b1) W2 + b2."""

    def __init__(self, hidden, ffn):
        super().__init__()
        self.fc1 = torch.nn.Linear(hidden, ffn)
        self.fc2 = torch.nn.Linear(ffn, hidden)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(x)))


class Embedding(torch.nn.Module):
    """h[b, t] = token.weight[id[b, t]] + position.weight[t]; ids [B, T] int64."""

    def __init__(self, vocab, dim, max_seq):
        super().__init__()
        self.token = torch.nn.Embedding(vocab, dim)
        self.position = torch.nn.Embedding(max_seq, dim)

    def forward(self, ids):
        t = ids.shape[1]
        return self.token(ids) + self.position.weight[:t]


class Attention(torch.nn.Module):
    """Causal multi-head self-attention: qkv = u Wqkv + bqkv, columns [Q | K | V]."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, u):
        b, t, c = u.shape
        h, d = self.heads, c // self.heads
        q, k, v = self.qkv(u).split(c, dim=2)
        # head h: columns [h d, (h + 1) d) of each third
        q = q.view(b, t, h, d).transpose(1, 2)
        k = k.view(b, t, h, d).transpose(1, 2)
        v = v.view(b, t, h, d).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d)
        mask = torch.ones(t, t, dtype=torch.bool, device=u.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)  # head h at columns [h d, (h + 1) d)
        return self.proj(y)


class Mlp(torch.nn.Module):
    def __init__(self, dim, ffn):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, ffn)
        self.fc2 = torch.nn.Linear(ffn, dim)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(torch.nn.Module):
    """GPT-2's pre-LN block, no dropout: a = x + attn(ln1 x); y = a + mlp(ln2 a)."""

    def __init__(self, dim, heads, ffn):
        super().__init__()
        self.ln1 = torch.nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads)
        self.ln2 = torch.nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, ffn)

    def forward(self, x):
        a = x + self.attn(self.ln1(x))
        return a + self.mlp(self.ln2(a))


def mpar_params(model):
    """(name as mpar saves it, parameter, transposed?) for every parameter of a
    built model: mpar stores a Linear's weight [in, out], torch [out, in]."""
    out = []
    for i, layer in enumerate(model):
        mods = dict(layer.named_modules())
        for name, p in layer.named_parameters():
            owner = mods[name.rsplit(".", 1)[0]] if "." in name else layer
            tr = isinstance(owner, torch.nn.Linear) and name.endswith("weight")
            out.append((f"{i}.{name}", p, tr))
    return out


def build(spec):
    layers = []
    width = spec["model"].get("input", 1)
    for l in spec["model"]["layers"]:
        t = l["type"]
        if t == "linear":
            layers.append(torch.nn.Linear(width, l["out"]))
            width = l["out"]
        elif t == "gelu":
            layers.append(torch.nn.GELU())
        elif t == "relu":
            layers.append(torch.nn.ReLU())
        elif t == "mlp_block":
            layers.append(Residual(l["hidden"], l["ffn"]))
        elif t == "embedding":
            layers.append(Embedding(l["vocab"], l["dim"], l["max_seq"]))
            width = l["dim"]
        elif t == "layernorm":
            layers.append(torch.nn.LayerNorm(width, eps=1e-5))
        elif t == "transformer_block":
            layers.append(Block(width, l["heads"], l["ffn"]))
        else:
            raise ValueError(t)
    return torch.nn.Sequential(*layers)
