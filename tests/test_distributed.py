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
