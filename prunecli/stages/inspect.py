"""`info`: what a checkpoint is, where it came from, and its layers (plain data for reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunecli.checkpoint import load_checkpoint, to_plain
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.layers import LayerInfo, layer_table
from prunecli.stages.checkpoints import rebuild_model


def checkpoint_summary(path: Path) -> tuple[dict[str, Any], list[LayerInfo]]:
    """(summary of the checkpoint as plain data, its per-layer table)."""
    ckpt = load_checkpoint(path)
    model = rebuild_model(ckpt)
    shape = (ckpt.model.in_channels, ckpt.model.image_size, ckpt.model.image_size)
    cx = count_complexity(model, shape)
    masked = sum(int((~m).sum().item()) for m in ckpt.masks.values())
    summary = {
        "checkpoint": str(path),
        "stage": ckpt.stage,
        "model": ckpt.model.to_dict(),
        "dataset": ckpt.dataset.to_dict() if ckpt.dataset else None,
        "macs": cx.macs,
        "params": cx.params,
        "compressed": bool(ckpt.structure),
        "structure_steps": len(ckpt.structure or []),
        "converters": ckpt.converters,
        "masked_parameters": len(ckpt.masks),
        "masked_entries": masked,
        "metrics": ckpt.metrics,
        "lineage": ckpt.lineage,
        "resume": {"stage": ckpt.resume["stage"], "epoch": ckpt.resume["epoch"], "epochs": ckpt.resume["config"].get("epochs")}
        if ckpt.resume
        else None,
        "extra_keys": sorted(ckpt.extra),
    }
    return to_plain(summary), layer_table(model, ckpt.masks)
