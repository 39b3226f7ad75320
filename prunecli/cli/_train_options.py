"""Options of the commands that run training epochs (train, finetune), defined once."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from prunecli.cli._common import PANEL_OPT, PANEL_RUN, parse_int_list


class Optimizer(str, enum.Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Schedule(str, enum.Enum):
    constant = "constant"
    step = "step"
    multistep = "multistep"
    cosine = "cosine"


EpochsOpt = Annotated[int, typer.Option("--epochs", min=0, help="Epochs to train (0 writes the model as initialised).", rich_help_panel=PANEL_OPT)]
OptimizerOpt = Annotated[Optimizer, typer.Option("--optimizer", help="Optimizer.", rich_help_panel=PANEL_OPT)]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Base learning rate.", rich_help_panel=PANEL_OPT)]
MomentumOpt = Annotated[float, typer.Option("--momentum", min=0.0, help="SGD momentum.", rich_help_panel=PANEL_OPT)]
NesterovOpt = Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (SGD).", rich_help_panel=PANEL_OPT)]
WeightDecayOpt = Annotated[float, typer.Option("--weight-decay", "--wd", min=0.0, help="Weight decay.", rich_help_panel=PANEL_OPT)]
ScheduleOpt = Annotated[Schedule, typer.Option("--schedule", help="Learning-rate schedule (per iteration).", rich_help_panel=PANEL_OPT)]
StepSizeOpt = Annotated[int, typer.Option("--step-size", min=1, help="Epochs between decays (step schedule).", rich_help_panel=PANEL_OPT)]
MilestonesOpt = Annotated[
    Optional[str],
    typer.Option("--milestones", help="Epochs of the multistep decays, e.g. 80,120 (default: 50% and 75% of the run).", rich_help_panel=PANEL_OPT),
]
GammaOpt = Annotated[float, typer.Option("--gamma", min=0.0, help="Decay factor (step, multistep).", rich_help_panel=PANEL_OPT)]
WarmupOpt = Annotated[float, typer.Option("--warmup-epochs", min=0.0, help="Linear warm-up length in epochs.", rich_help_panel=PANEL_OPT)]
LabelSmoothingOpt = Annotated[float, typer.Option("--label-smoothing", min=0.0, max=1.0, help="Label smoothing.", rich_help_panel=PANEL_OPT)]
AmpOpt = Annotated[
    Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (default: on with CUDA, off on CPU).", rich_help_panel=PANEL_RUN)
]
ChannelsLastOpt = Annotated[
    Optional[bool],
    typer.Option("--channels-last/--no-channels-last", help="channels_last memory format (default: on with CUDA).", rich_help_panel=PANEL_RUN),
]
ShuffleLabelsOpt = Annotated[
    bool, typer.Option("--shuffle-labels", help="Train on randomly permuted labels (expressivity test), seeded.", rich_help_panel=PANEL_OPT)
]
EvalEveryOpt = Annotated[int, typer.Option("--eval-every", min=1, help="Epochs between test evaluations.", rich_help_panel=PANEL_RUN)]
ResumeOpt = Annotated[
    Optional[Path],
    typer.Option("--resume", help="Continue an interrupted run from this checkpoint (its options; flags given override).", rich_help_panel=PANEL_RUN),
]

# command-line names -> TrainConfig fields, where they differ
_RENAMED = {"model_arg": "model_args"}


def train_config_values(params: dict[str, Any]) -> dict[str, Any]:
    """Map parsed options to TrainConfig fields (enums to strings, lists parsed)."""
    from prunecli.cli._common import parse_model_args

    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, enum.Enum):
            v = v.value
        if isinstance(v, Path):
            v = str(v)
        if k == "model_arg":
            v = parse_model_args(v)
        if k == "milestones":
            v = parse_int_list(v, "--milestones")
        out[_RENAMED.get(k, k)] = v
    return out
