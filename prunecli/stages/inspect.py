"""`info`: what a checkpoint is, where it came from, and its layers (plain data for reports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunecli.checkpoint import load_checkpoint, to_plain
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.layers import LayerInfo, layer_table
from prunecli.stages.checkpoints import check_finite, rebuild_model
from prunecli.stages.lineage import steps


def checkpoint_summary(path: Path) -> tuple[dict[str, Any], list[LayerInfo]]:
    """(summary of the checkpoint as plain data, its per-layer table)."""
    ckpt = load_checkpoint(path)
    nonfinite = check_finite(ckpt, allow=True)  # info is how a user looks at such a file: report, do not refuse
    model = rebuild_model(ckpt, allow_nonfinite=True)
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
        "steps": steps(ckpt, cx.macs, cx.params),
        "resume": _resume_summary(ckpt.resume),
        "extra_keys": sorted(ckpt.extra),
        "rewind_epoch": _rewind_epoch(ckpt.extra),
        "nonfinite_tensors": nonfinite,
        "learned_mask": _learned_mask(ckpt.extra),
        "sss": _sss_record(ckpt.extra),
    }
    return to_plain(summary), layer_table(model, ckpt.masks)


def _learned_mask(extra: dict) -> Any:
    """Edge-popup's record (settings, and each scored layer's kept fraction at the last save), or None.

    The seed's ``--print_more``: how much of every layer the learned mask keeps.
    """
    record = extra.get("edgepopup")
    if not isinstance(record, dict):
        return None
    layers = [r for r in record.get("layers") or [] if isinstance(r, dict)]
    out = {k: record.get(k) for k in ("granularity", "scope", "rate", "rank", "rank_abs", "score_init", "warmup_epochs", "epoch", "pruning")}
    out["layers"] = layers
    out["scores_stored"] = "edgepopup_scores" in extra
    return out


def _sss_record(extra: dict) -> Any:
    """Sparse Structure Selection's record (settings, the gates and what was dead at the last save), or None."""
    record = extra.get("sss")
    if not isinstance(record, dict):
        return None
    out = {k: record.get(k) for k in ("granularity", "gamma", "momentum", "epoch", "dead", "kept_downsampling")}
    gates = record.get("gates") if isinstance(record.get("gates"), dict) else {}
    out["gates"] = {str(k): [round(float(x), 6) for x in v.flatten().tolist()] for k, v in gates.items() if hasattr(v, "flatten")}
    return out


def _rewind_epoch(extra: dict) -> Any:
    """The epoch whose weights ``train --save-rewind`` kept, or None."""
    rewind = extra.get("rewind")
    return rewind.get("epoch") if isinstance(rewind, dict) and isinstance(rewind.get("epoch"), int) else None


def _resume_summary(resume: Any) -> Any:
    if not isinstance(resume, dict):
        return None
    config = resume.get("config") if isinstance(resume.get("config"), dict) else {}
    # a block-by-block compress run trains each block --unit-finetune-epochs
    epochs = config.get("epochs", config.get("unit_finetune_epochs"))
    summary = {"stage": resume.get("stage"), "epoch": resume.get("epoch"), "epochs": epochs}
    if resume.get("block") is not None:
        summary["block"] = resume.get("block")
    return summary
