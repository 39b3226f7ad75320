"""The teacher of a distillation run: ``--teacher PATH`` or ``--teacher lineage``, found, checked, loaded.

``lineage`` is the dense network the student was pruned from: the checkpoint the first
prune or compress stage of the student's lineage was applied to. Its file must still be
the one that stage read (the sha256 the lineage recorded) and hold no masks and no
removed channels. Any teacher must take the student's inputs and predict its classes.

Every failure is one line (exit 1) raised before the first epoch, so nothing is written.
The distillation itself is prunecli.engine.distill.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from prunecli._console import log, markup_safe, warn
from prunecli.checkpoint import Checkpoint, sha256_file
from prunecli.engine.distill import Distillation
from prunecli.errors import CheckpointError, PruneCliError
from prunecli.stages.checkpoints import load_model

LINEAGE = "lineage"  # the --teacher value that means "the dense ancestor"
_PRUNING_STAGES = ("prune", "compress")


@dataclass
class Teacher:
    path: Path
    sha256: str
    checkpoint: Checkpoint
    model: nn.Module  # eval mode, masks applied, on the CPU


def dense_ancestor(student: Checkpoint) -> tuple[Path, str, str]:
    """(file, recorded sha256, stage) of the checkpoint the first prune/compress stage was applied to."""
    commands = [str(e.get("command")) for e in student.lineage]
    for entry in student.lineage:
        if entry.get("command") not in _PRUNING_STAGES:
            continue
        parent, sha = entry.get("parent"), entry.get("parent_sha256")
        if not isinstance(parent, str) or not parent or not isinstance(sha, str) or not sha:
            raise CheckpointError(f"--teacher lineage: the `{entry['command']}` stage of the student's lineage records no parent file; pass --teacher PATH")
        return Path(parent), sha, str(entry["command"])
    chain = " -> ".join(commands) or "empty"
    raise CheckpointError(f"--teacher lineage: the student's lineage ({chain}) has no prune or compress stage, so no dense ancestor; pass --teacher PATH")


def is_dense(ckpt: Checkpoint) -> bool:
    """No channels removed and no entry masked."""
    return not ckpt.structure and all(bool(m.all()) for m in ckpt.masks.values())


def load_teacher(value: str, student: Checkpoint, *, allow_nonfinite: bool = False) -> Teacher:
    """The teacher ``value`` names (a path or `LINEAGE`) for ``student``, checked (see the module docstring)."""
    if value == LINEAGE:
        path, recorded, stage = dense_ancestor(student)
        where = f"--teacher lineage: {path}"
        if not path.is_file():
            raise CheckpointError(f"{where}, the dense checkpoint `{stage}` was applied to, is gone; pass --teacher PATH")
        sha = _sha256(path, where)
        if sha != recorded:  # checked before loading: a damaged file is a changed one
            raise CheckpointError(
                f"{where} changed since `{stage}` read it (sha256 {sha[:12]}, the lineage records {recorded[:12]}); "
                "pass --teacher PATH to distil from it anyway"
            )
        ckpt, model = _load(path, allow_nonfinite)
        if not is_dense(ckpt):
            raise CheckpointError(f"{where}: the checkpoint `{stage}` was applied to is not dense (it holds masks or removed channels); pass --teacher PATH")
    else:
        path = Path(value)
        where = f"--teacher {path}"
        ckpt, model = _load(path, allow_nonfinite)
        sha = _sha256(path, where)
    s, t = student.model, ckpt.model
    if (t.in_channels, t.image_size, t.num_classes) != (s.in_channels, s.image_size, s.num_classes):
        raise CheckpointError(
            f"{where}: the teacher takes {t.in_channels}x{t.image_size}x{t.image_size} inputs and predicts {t.num_classes} classes; "
            f"the student takes {s.in_channels}x{s.image_size}x{s.image_size} and predicts {s.num_classes}"
        )
    return Teacher(path=path, sha256=sha, checkpoint=ckpt, model=model)


def _load(path: Path, allow_nonfinite: bool) -> tuple[Checkpoint, nn.Module]:
    try:
        return load_model(path, allow_nonfinite=allow_nonfinite)
    except PruneCliError as e:  # its message names the file
        raise CheckpointError(f"--teacher: {e}") from None


def _sha256(path: Path, where: str) -> str:
    try:
        return sha256_file(path)
    except OSError as e:
        raise CheckpointError(f"{where}: cannot read: {(e.strerror or str(e)).lower()}") from None


def distillation(cfg: Any, template: Checkpoint) -> tuple[Distillation, Checkpoint]:
    """The `Distillation` callback of ``cfg.teacher`` for the run writing ``template``, and the
    template whose lineage entry (this stage's) names the teacher's file and sha256."""
    teacher = load_teacher(str(cfg.teacher), template, allow_nonfinite=cfg.allow_nonfinite)
    if teacher.checkpoint.dataset and template.dataset and teacher.checkpoint.dataset.name != template.dataset.name:
        warn(f"the teacher was trained on {markup_safe(teacher.checkpoint.dataset.name)}, the student trains on {markup_safe(template.dataset.name)}")
    n_params = sum(p.numel() for p in teacher.model.parameters())
    log(
        f"distilling from {markup_safe(str(teacher.path))} ({markup_safe(teacher.checkpoint.model.name)}, {n_params:,} params, "
        f"sha256 {teacher.sha256[:12]}): alpha {cfg.kd_alpha:g}, T {cfg.kd_temperature:g}"
    )
    lineage = [dict(e) for e in template.lineage]
    if lineage:
        lineage[-1]["teacher"] = {"path": str(teacher.path), "sha256": teacher.sha256}
    callback = Distillation(teacher.model, alpha=cfg.kd_alpha, temperature=cfg.kd_temperature, source=str(cfg.teacher), sha256=teacher.sha256)
    return callback, replace(template, lineage=lineage)


__all__ = ["LINEAGE", "Teacher", "dense_ancestor", "distillation", "is_dense", "load_teacher"]
