"""torchrun + DDP on CPU (gloo): two processes train exactly what one process trains."""

from __future__ import annotations

import subprocess
import sys

import torch

from prunecli.checkpoint import load_checkpoint

# lenet300_100 has no BatchNorm, so with the same global batches (DDP averages the two
# half-batch gradients) two processes must reach the weights one process reaches. The 512
# synthetic training images split evenly over 2 ranks and batches of 64: no padding
# sample (with an odd count the last batch would hold one duplicate under DDP).
ARGS = ["train", "--model", "lenet300_100", "--dataset", "synthetic", "--image-size", "8", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--device", "cpu"]


def test_torchrun_two_processes_equal_one(tmp_path):
    one = subprocess.run([sys.executable, "-m", "prunecli", *ARGS, "-o", str(tmp_path / "one.pt")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "prunecli", *ARGS, "-o", str(tmp_path / "two.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == str(tmp_path / "two.pt")  # only rank 0 prints (and writes)
    assert "x2" in two.stderr  # the run says it used two processes
    a, b = load_checkpoint(tmp_path / "one.pt"), load_checkpoint(tmp_path / "two.pt")
    for k in a.state_dict:
        assert torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-5, rtol=1e-4), k
    assert abs(a.metrics["top1"] - b.metrics["top1"]) <= 100 / 128  # at most one of 128 test images flips
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == ["one.best.pt", "one.pt", "two.best.pt", "two.pt"]


SCRIPT = """
import json, sys, torch
from prunecli.config import TrainingOptions
from prunecli.data import get_dataset
from prunecli.engine.distributed import init_distributed, shutdown_distributed
from prunecli.engine.trainer import Callback, Trainer
from prunecli.models import ModelSpec, build_model
from prunecli.models.layers import prunable_layers

class Look(Callback):
    key = "look"
    def __init__(self):
        self.seen = set()
    def after_step(self, state):
        self.seen.add(type(state.model).__name__)
        self.seen.update(n.split(".")[0] for n, _ in state.model.named_parameters())

dist, device = init_distributed("cpu")
try:
    torch.manual_seed(0)
    model = build_model(ModelSpec("lenet300_100", 3, 10, 8))
    name, first = prunable_layers(model)[0]
    mask = torch.ones_like(first.weight, dtype=torch.bool)
    mask[:7] = False
    look = Look()
    cfg = TrainingOptions(epochs=1, batch_size=64, lr=0.05, device="cpu")
    Trainer(cfg, device=device, dist=dist).fit(model, get_dataset("synthetic", image_size=8), [look], masks={name + ".weight": mask})
    out = {"seen": sorted(look.seen), "masked_zero": bool((first.weight[:7] == 0).all()), "sum": float(sum(p.sum() for p in model.parameters()))}
    with open(f"{sys.argv[1]}/rank{dist.rank}.json", "w") as f:
        json.dump(out, f)
finally:
    shutdown_distributed()
"""


def test_callbacks_see_the_unwrapped_model_and_masks_hold_on_every_rank(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        assert "DistributedDataParallel" not in r["seen"] and "module" not in r["seen"], r["seen"]
        assert r["masked_zero"]
    assert ranks[0]["sum"] == ranks[1]["sum"]  # DDP kept the ranks in step


def test_torchrun_pruning_while_training_equals_one_process(tmp_path):
    """prune --epochs under torchrun: rank 0's selection reaches every rank, and two processes
    end with the masks and (to float tolerance) the weights one process ends with."""
    base = tmp_path / "base.pt"
    train = ["train", "--model", "lenet300_100", "--dataset", "synthetic", "--image-size", "8", "--epochs", "1", "--device", "cpu"]
    r = subprocess.run([sys.executable, "-m", "prunecli", *train, "-o", str(base)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    prune = ["prune", str(base), "--method", "l2", "--soft", "--mask-grads", "--rate", "0.4", "--epochs", "2", "--batch-size", "64",
             "--lr", "0.05", "--device", "cpu", "--seed", "0"]
    one = subprocess.run([sys.executable, "-m", "prunecli", *prune, "-o", str(tmp_path / "one.pt")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "prunecli", *prune, "-o", str(tmp_path / "two.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == str(tmp_path / "two.pt") and "x2" in two.stderr
    a, b = load_checkpoint(tmp_path / "one.pt"), load_checkpoint(tmp_path / "two.pt")
    assert a.masks and a.masks.keys() == b.masks.keys()
    for k in a.masks:
        assert torch.equal(a.masks[k], b.masks[k]), k
    for k in a.state_dict:
        assert torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-5, rtol=1e-4), k
