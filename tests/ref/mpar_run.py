"""Runs mpar's serial path for the PyTorch cross-checks (torch_check.py,
torch_gpt_check.py): the spec with train.steps = steps and shuffle off,
written under tmp, trained by `mpar-client run --serial`, its weights saved."""
import json
import os
import subprocess


def run_mpar(client, spec, tmp, tag, steps):
    """Returns (the result document, the weights folder, the spec file)."""
    s = json.loads(json.dumps(spec))
    s["train"]["steps"] = steps
    s["train"]["shuffle"] = False
    path = os.path.join(tmp, f"{tag}-{steps}.json")
    with open(path, "w") as f:
        json.dump(s, f)
    wdir = os.path.join(tmp, f"{tag}-w{steps}")
    r = subprocess.run([client, "run", path, "--serial", "-o", "json", "--quiet",
                        "--save-weights", wdir], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"mpar-client run failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout), wdir, path
