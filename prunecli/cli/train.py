"""`prunecli train`: train a model from scratch (the "pretrain" step)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from prunecli.cli._common import emit_path, output_next_to
from prunecli.cli._options import config_from, given_options, options_from
from prunecli.config import TrainConfig


def default_output(model: str, dataset: str) -> Path:
    model_tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.rsplit(":", 1)[-1] if ":" in model and not model.startswith("tv:") else model)
    return Path("runs") / f"{model_tag}_{dataset}" / "train.pt"


@options_from(TrainConfig)
def train(ctx: typer.Context, **options) -> None:
    """Train a model from scratch; write its checkpoint (and .best.pt, .metrics.jsonl, .config.yaml beside it).

    Runs under torchrun for several processes: torchrun --nproc_per_node=N -m prunecli train ...
    """
    from prunecli.stages import train as stage

    given = given_options(ctx, options)
    if given.get("resume") is not None:
        overrides = {k: v for k, v in given.items() if k not in ("resume", "output")}
        emit_path(stage.resume(Path(given["resume"]), overrides, output=given.get("output")))
        return
    cfg = config_from(ctx, TrainConfig, options)
    if cfg.arch_from is not None:  # a scratch baseline: beside the architecture it retrains (small.scratch.pt)
        emit_path(stage.train(cfg, output=output_next_to(Path(cfg.arch_from), "scratch", cfg.output)))
        return
    emit_path(stage.train(cfg, output=Path(cfg.output) if cfg.output else default_output(cfg.model, cfg.dataset)))
