"""mpar's layers as a PyTorch model, built from a job spec's "model" section.

One definition for the two PyTorch peers: the cross-check of the serial path
(tests/ref/torch_check.py, the ground truth) and the training-throughput
peer of mpar-bench-train (bench/torch_train.py), so both always run the
model that mpar runs.
"""
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


def build(spec):
    layers = []
    width = spec["model"]["input"]
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
        else:
            raise ValueError(t)
    return torch.nn.Sequential(*layers)
