"""``recipe check``: what a recipe's architecture gives, without data or training.

MACs and params after prune + compress depend only on the architecture and the rates
(for layer-wise selection), so they can be computed from randomly initialised weights:
each train stage becomes its freshly built model at the dataset's real input size and
classes, prune and compress stages run as written (on the CPU, without latency timing),
and finetune stages pass their input through (training changes no shape). The numbers
are compared with the recipe's architecture-only expectations.

Global selection ranks weights across layers, so on random weights it need not choose
the widths a trained model gets; such a recipe's MACs expectation is a property of the
trained run, and the check says so in the stage note rather than pretending.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli._console import log
from prunecli.recipes.schema import Recipe, RecipeError, Stage

CHECK_SEED = 0


@dataclass
class ArchitectureRow:
    stage: str
    macs: int
    params: int
    conv_linear_params: int


def _base_checkpoint(stage: Stage, path: Path) -> Path:
    """The model a train stage would start from, built at the dataset's declared shape."""
    import torch

    from prunecli.checkpoint import derive, save_checkpoint
    from prunecli.data import DatasetSpec, dataset_shape
    from prunecli.models import ModelSpec, build_model

    cfg = stage.config()
    declared = dataset_shape(cfg.dataset)
    if declared is None:
        raise RecipeError(f"stage {stage.name!r}: dataset {cfg.dataset!r} declares no input shape; recipe check cannot size the model")
    channels, size, classes = declared
    size = cfg.image_size or size
    classes = cfg.num_classes or classes or 1000
    args = {k: v for k, v in cfg.model_args.items() if k not in ("weights", "weights_backbone")}  # random weights: nothing to fetch
    spec = ModelSpec(cfg.model, channels, classes, size, args)
    torch.manual_seed(CHECK_SEED)
    model = build_model(spec)
    data = DatasetSpec("synthetic", classes, 3, size, (0.5,) * 3, (0.25,) * 3, options={"image_size": size, "num_classes": classes})
    return save_checkpoint(derive(None, "train", {"epochs": 0}, model=spec, dataset=data, state_dict=model.state_dict()), path)


# the options of prune that decide what is selected (the rest say how and when it trains)
SELECTION_KEYS = {
    "method", "rate", "granularity", "scope", "target-macs", "mix-norm", "count-rule", "compress",
    "layer-rate", "layer-rates", "skip", "protect", "round-to", "max-layer-rate",
}


def architecture_rows(recipe: Recipe) -> list[ArchitectureRow]:
    """MACs and params of every checkpoint stage, computed on random weights."""
    from prunecli.config import CompressConfig, PruneConfig
    from prunecli.metrics.complexity import conv_linear_params, count_complexity
    from prunecli.stages.checkpoints import load_model
    from prunecli.stages.compress import compress_checkpoint
    from prunecli.stages.prune import prune_checkpoint

    from prunecli.config.prune import LEARNED_METHODS

    rows: list[ArchitectureRow] = []
    with tempfile.TemporaryDirectory(prefix="prunecli-check-") as tmp:
        paths: dict[str, Path] = {}
        learned: set[str] = set()  # stages whose masks a training run learns (edge-popup, SSS), and those after them
        for stage in recipe.stages:
            out = Path(tmp) / f"{stage.name}.pt"
            if stage.inputs and stage.inputs[0] in learned or (stage.command == "prune" and stage.options.get("method") in LEARNED_METHODS):
                # what a learned mask removes is decided by training: no architecture-only row
                log(f"[bold]{stage.name}[/bold]: {stage.command} (skipped: its widths are learned while training)")
                if stage.inputs:
                    paths[stage.name] = paths[stage.inputs[0]]
                learned.add(stage.name)
                continue
            log(f"[bold]{stage.name}[/bold]: {stage.command} (random weights)")
            if stage.command == "train" and stage.inputs:
                paths[stage.name] = paths[stage.inputs[0]]  # a scratch baseline trains its input's architecture
            elif stage.command == "train":
                paths[stage.name] = _base_checkpoint(stage, out)
            elif stage.command == "prune":
                # the selection alone, once: pruning while training ends at the same counts
                # (a soft or gradual run's last selection is at the final rate)
                options: dict[str, Any] = {k: v for k, v in stage.options.items() if k in SELECTION_KEYS}
                options.update({"device": "cpu", "calib-batches": 1, "batch-size": 2, "workers": 0})
                prune_checkpoint(paths[stage.inputs[0]], PruneConfig.from_options(options), output=out)
                paths[stage.name] = out
            elif stage.command == "compress" and stage.options.get("block-by-block"):
                # what a block-by-block method removes depends on training: no architecture-only row
                paths[stage.name] = paths[stage.inputs[0]]
                continue
            elif stage.command == "compress":
                compress_checkpoint(paths[stage.inputs[0]], CompressConfig.from_options({**stage.options, "latency": False}), output=out)
                paths[stage.name] = out
            elif stage.command == "finetune":
                paths[stage.name] = paths[stage.inputs[0]]  # training changes no shape
            else:
                continue
            ckpt, model = load_model(paths[stage.name])
            shape = (ckpt.model.in_channels, ckpt.model.image_size, ckpt.model.image_size)
            cx = count_complexity(model, shape)
            rows.append(ArchitectureRow(stage.name, cx.macs, cx.params, conv_linear_params(model)))
    return rows
