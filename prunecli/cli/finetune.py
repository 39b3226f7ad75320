"""`prunecli finetune`: retrain a checkpoint (masked or compressed); masks stay enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli._common import emit_path, input_checkpoint, output_next_to
from prunecli.cli._options import config_from, given_options, options_from
from prunecli.config import FinetuneConfig
from prunecli.errors import UsageError


@options_from(FinetuneConfig)
def finetune(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint to fine-tune ('-' reads the path from stdin).", show_default=False, readable=False)] = None,
    **options,
) -> None:
    """Fine-tune a checkpoint on its dataset (or --dataset); pruned weights stay exactly zero.

    Defaults: 20 epochs, SGD lr 0.01 with cosine decay. Li et al.'s setting is
    --epochs 40 --lr 0.001 --schedule constant --batch-size 64.
    """
    from prunecli.stages import train as stage

    given = given_options(ctx, options)
    if given.get("resume") is not None and checkpoint is not None:
        raise UsageError("finetune: give a CHECKPOINT to fine-tune or --resume a fine-tuning run, not both")
    if given.get("resume") is not None:
        overrides = {k: v for k, v in given.items() if k not in ("resume", "output")}
        emit_path(stage.resume(Path(given["resume"]), overrides, output=given.get("output")))
        return
    if checkpoint is None:
        raise UsageError("finetune: give a CHECKPOINT to fine-tune (or --resume a fine-tuning run)")
    cfg = config_from(ctx, FinetuneConfig, options)
    source = input_checkpoint(checkpoint)
    emit_path(stage.finetune(source, cfg, output=output_next_to(source, "ft", cfg.output)))
