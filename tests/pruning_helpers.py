"""Helpers for the prune/compress tests: random-init checkpoints and a short prune call."""

from __future__ import annotations

from pathlib import Path

import torch

from prunecli.checkpoint import Checkpoint, save_checkpoint
from prunecli.config import CompressConfig, PruneConfig
from prunecli.data import DatasetSpec
from prunecli.models import ModelSpec, build_model
from prunecli.stages.compress import compress_checkpoint
from prunecli.stages.prune import prune_checkpoint


def make_checkpoint(path: Path, model: str, *, image_size=32, in_channels=3, classes=10, seed=0, dataset=True, **kwargs) -> Path:
    """A randomly initialised checkpoint (the paper tables depend only on the architecture)."""
    spec = ModelSpec(model, in_channels, classes, image_size, kwargs)
    torch.manual_seed(seed)
    m = build_model(spec)
    ds = None
    if dataset:
        ds = DatasetSpec(
            "synthetic", classes, in_channels, image_size, (0.5,) * in_channels, (0.25,) * in_channels,
            options={"image_size": image_size, "num_classes": classes},
        )
    return save_checkpoint(Checkpoint(model=spec, state_dict=m.state_dict(), dataset=ds), path)


def prune(src: Path, out: Path, method="l1", **kw) -> object:
    # the tests' settings run on the CPU, as the paper tables were checked
    return prune_checkpoint(src, PruneConfig(method=method, device=kw.pop("device", "cpu"), **kw), output=out)


def compress(src: Path, out: Path, **kw) -> object:
    """compress without latency (the tests check structure, not speed)."""
    return compress_checkpoint(src, CompressConfig(latency=False, **kw), output=out)
