"""`prunecli finetune`: retrain a checkpoint (masked or compressed); masks stay enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli import _train_options as T
from prunecli.errors import UsageError
from prunecli.cli._common import (
    BatchSizeOpt,
    ConfigOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    DownloadOpt,
    OutputOpt,
    SeedOpt,
    WorkersOpt,
    emit_path,
    explicit_options,
    input_checkpoint,
    output_next_to,
    resolved_options,
)

CheckpointArg = Annotated[
    Optional[Path], typer.Argument(help="Checkpoint to fine-tune ('-' reads the path from stdin).", show_default=False)
]


def finetune(
    ctx: typer.Context,
    checkpoint: CheckpointArg = None,
    dataset: DatasetOpt = None,
    data: DataDirOpt = None,
    download: DownloadOpt = False,
    epochs: T.EpochsOpt = 20,
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
    """Fine-tune a checkpoint on its dataset (or --dataset); pruned weights stay exactly zero.

    Defaults: 20 epochs, SGD lr 0.01 with cosine decay. Li et al.'s setting is
    --epochs 40 --lr 0.001 --schedule constant --batch-size 64.
    """
    from prunecli.stages import train as run
    from prunecli.engine.config import TrainConfig

    if resume is not None:
        overrides = T.train_config_values(
            {k: v for k, v in explicit_options(ctx).items() if k not in ("resume", "output", "checkpoint")}
        )
        emit_path(run.resume(resume, overrides, output=output))
        return
    if checkpoint is None:
        raise UsageError("finetune: give a CHECKPOINT to fine-tune (or --resume a fine-tuning run)")
    source = input_checkpoint(checkpoint)
    out = output_next_to(source, "ft", output)
    values = {k: v for k, v in ctx.params.items() if k not in ("config", "resume", "output", "checkpoint")}
    values.setdefault("model", "")
    cfg = TrainConfig.from_dict(T.train_config_values(values))
    options = resolved_options(ctx)
    options["checkpoint"] = str(source)
    emit_path(run.finetune(source, cfg, output=out, options=options))
