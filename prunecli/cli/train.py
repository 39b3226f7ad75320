"""`prunecli train`: train a model from scratch (the "pretrain" step)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli import _train_options as T
from prunecli.cli._common import (
    PANEL_MODEL,
    BatchSizeOpt,
    ConfigOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DownloadOpt,
    ImageSizeOpt,
    NumClassesOpt,
    OutputOpt,
    SeedOpt,
    WorkersOpt,
    emit_path,
    explicit_options,
    resolved_options,
)

ModelOpt = Annotated[
    str,
    typer.Option("--model", "-m", help="Model name (prunecli list models), tv:NAME, or file.py:factory.", rich_help_panel=PANEL_MODEL),
]
ModelArgOpt = Annotated[
    Optional[list[str]],
    typer.Option("--model-arg", help="Model constructor argument KEY=VALUE (repeatable).", rich_help_panel=PANEL_MODEL),
]


def default_output(model: str, dataset: str) -> Path:
    model_tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", model.rsplit(":", 1)[-1] if ":" in model and not model.startswith("tv:") else model)
    return Path("runs") / f"{model_tag}_{dataset}" / "train.pt"


def train(
    ctx: typer.Context,
    model: ModelOpt = "conv4",
    model_arg: ModelArgOpt = None,
    dataset: DatasetOpt = "digits",
    data: DataDirOpt = None,
    download: DownloadOpt = False,
    image_size: ImageSizeOpt = None,
    num_classes: NumClassesOpt = None,
    epochs: T.EpochsOpt = 15,
    batch_size: BatchSizeOpt = 128,
    optimizer: T.OptimizerOpt = T.Optimizer.sgd,
    lr: T.LrOpt = 0.01,
    momentum: T.MomentumOpt = 0.9,
    nesterov: T.NesterovOpt = False,
    weight_decay: T.WeightDecayOpt = 1e-4,
    schedule: T.ScheduleOpt = T.Schedule.cosine,
    step_size: T.StepSizeOpt = 30,
    milestones: T.MilestonesOpt = None,
    gamma: T.GammaOpt = 0.1,
    warmup_epochs: T.WarmupOpt = 0.0,
    label_smoothing: T.LabelSmoothingOpt = 0.0,
    shuffle_labels: T.ShuffleLabelsOpt = False,
    device: DeviceOpt = "auto",
    amp: T.AmpOpt = None,
    channels_last: T.ChannelsLastOpt = None,
    workers: WorkersOpt = 4,
    seed: SeedOpt = 0,
    eval_every: T.EvalEveryOpt = 1,
    resume: T.ResumeOpt = None,
    output: OutputOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Train a model from scratch; write its checkpoint (and .best.pt, .metrics.jsonl, .config.yaml beside it).

    Runs under torchrun for several processes: torchrun --nproc_per_node=N -m prunecli train ...
    """
    from prunecli.stages import train as run
    from prunecli.engine.config import TrainConfig

    if resume is not None:
        overrides = T.train_config_values(
            {k: v for k, v in explicit_options(ctx).items() if k not in ("resume", "output")}
        )
        emit_path(run.resume(resume, overrides, output=output))
        return
    values = {k: v for k, v in ctx.params.items() if k not in ("config", "resume", "output")}
    cfg = TrainConfig.from_dict(T.train_config_values(values))
    out = output or default_output(model, dataset or "digits")
    emit_path(run.train(cfg, output=out, options=resolved_options(ctx)))
