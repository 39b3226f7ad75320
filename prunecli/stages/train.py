"""`train`, `finetune` and their resume: a checkpoint (or a spec) in, the Trainer, checkpoints out.

Every epoch ends with the checkpoint at ``output`` replaced atomically (weights, current
masks, optimizer/scheduler/callback state, epoch): a Ctrl-C or kill mid-epoch leaves the
last complete epoch on disk, and ``--resume`` continues from it with the same result as
an uninterrupted run. Next to it: ``<stem>.best.pt`` (best test top-1),
``<stem>.metrics.jsonl`` (one JSON line per epoch) and ``<stem>.config.yaml`` (the
resolved options, usable as --config).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from prunecli._console import log
from prunecli.checkpoint import Checkpoint, derive, load_checkpoint, resumed, save_checkpoint
from prunecli.config import FinetuneConfig, TrainConfig, option_specs
from prunecli.data import DataBundle, get_dataset
from prunecli.engine.callbacks import BestCheckpoint, InterruptAfterEpoch, MetricsLog
from prunecli.engine.distributed import DistInfo, init_distributed, shutdown_distributed
from prunecli.engine.trainer import FitState, Trainer, TrainingInterrupted
from prunecli.errors import CheckpointError
from prunecli.models import ModelSpec, build_model, is_user_model
from prunecli.models._registry import user_code_sha256
from prunecli.stages.checkpoints import check_data_fits_model, data_for_checkpoint, rebuild_model, side_paths, write_config

StageCfg = Union[TrainConfig, FinetuneConfig]


def train(cfg: TrainConfig, *, output: Path) -> Path:
    """Train ``cfg.model`` from scratch on ``cfg.dataset``; returns the checkpoint path."""
    dist, device = init_distributed(cfg.device)
    try:
        bundle = get_dataset(
            cfg.dataset, root=cfg.data, download=cfg.download, image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed
        )
        spec = ModelSpec(
            name=cfg.model,
            in_channels=bundle.spec.in_channels,
            num_classes=bundle.spec.num_classes,
            image_size=bundle.spec.image_size,
            kwargs=dict(cfg.model_args),
        )
        torch.manual_seed(cfg.seed)  # model initialisation is part of the seeded run
        model = build_model(spec)
        extra = {"model_code_sha256": user_code_sha256(spec.name)} if is_user_model(spec.name) else {}
        template = derive(None, "train", cfg.to_options(), model=spec, dataset=bundle.spec, extra=extra)
        return _fit("train", cfg, model, template, bundle, Path(output), dist=dist, device=device)
    finally:
        shutdown_distributed()


def finetune(source: Path, cfg: FinetuneConfig, *, output: Path) -> Path:
    """Retrain a (masked or compressed) checkpoint; its masks stay enforced after every step."""
    dist, device = init_distributed(cfg.device)
    try:
        parent = load_checkpoint(source)
        model = rebuild_model(parent)
        bundle = data_for_checkpoint(parent, dataset=cfg.dataset, data=cfg.data, download=cfg.download, seed=cfg.seed)
        template = derive(parent, "finetune", cfg.to_options(), dataset=bundle.spec, state_dict={})
        return _fit("finetune", cfg, model, template, bundle, Path(output), dist=dist, device=device)
    finally:
        shutdown_distributed()


def resume(path: Path, overrides: Mapping[str, Any], *, output: Optional[Path] = None) -> Path:
    """Continue an interrupted train/finetune run from its last complete epoch.

    ``overrides`` are options given again (``--epochs 30`` extends the run).
    """
    ckpt = load_checkpoint(path)
    state = ckpt.resume
    if not state or "config" not in state:
        raise CheckpointError(f"{path}: has no resume state (only train and finetune checkpoints can be resumed)")
    stage = state["stage"]
    config_cls = TrainConfig if stage == "train" else FinetuneConfig
    known = {s.name for s in option_specs(config_cls)}
    # a version-1 finetune run stored train's fields too (model, image_size ...): not options of finetune
    stored = {k: v for k, v in state["config"].items() if k in known}
    cfg = config_cls.from_options({**stored, **overrides})
    dist, device = init_distributed(cfg.device)
    try:
        model = rebuild_model(ckpt)
        if stage == "train":
            bundle = get_dataset(
                cfg.dataset, root=cfg.data, download=cfg.download, image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed
            )
            check_data_fits_model(bundle, ckpt.model, str(path))
        else:
            bundle = data_for_checkpoint(ckpt, dataset=cfg.dataset, data=cfg.data, download=cfg.download, seed=cfg.seed)
        template = resumed(ckpt, overrides)
        given = {config_cls.spec(k): v for k, v in overrides.items()}
        options = {**dict(state.get("options") or {}), **{s.key: s.command_line_form(s.coerce(v)) for s, v in given.items()}}
        return _fit(stage, cfg, model, template, bundle, Path(output or path), dist=dist, device=device, options=options, resume_state=state)
    finally:
        shutdown_distributed()


def _fit(
    stage: str,
    cfg: StageCfg,
    model: torch.nn.Module,
    template: Checkpoint,
    bundle: DataBundle,
    output: Path,
    *,
    dist: DistInfo,
    device: torch.device,
    options: Optional[dict[str, Any]] = None,
    resume_state: Optional[dict[str, Any]] = None,
) -> Path:
    """Run the Trainer with the stage's callbacks; write the checkpoint every epoch."""
    paths = side_paths(output)
    options = options if options is not None else cfg.to_options()
    if dist.is_main and resume_state is None:
        write_config(paths["config"], stage, options)

    def snapshot(state: FitState, *, resumable: bool = True) -> Checkpoint:
        metrics = {"epoch": state.epoch, "epochs": cfg.epochs, "best_top1": best.top1, "best_epoch": best.epoch}
        ev = state.last_eval
        if ev is not None:
            metrics.update(top1=ev.top1, top5=ev.top5, loss=ev.loss, dataset=template.dataset.name if template.dataset else None)
        resume = {"stage": stage, "config": cfg.to_dict(), "options": options, **state.resume_state()} if resumable else None
        return replace(template, state_dict=state.model.state_dict(), masks=dict(state.masks), metrics=metrics, resume=resume)

    best = BestCheckpoint(write=lambda state: save_checkpoint(snapshot(state, resumable=False), paths["best"]))
    callbacks = [best, MetricsLog(paths["metrics"])]
    interrupt = InterruptAfterEpoch.from_env()
    if interrupt is not None:
        callbacks.append(interrupt)
    start = int(resume_state["epoch"]) if resume_state else 0
    try:
        state = Trainer(cfg, device=device, dist=dist).fit(
            model,
            bundle,
            callbacks,
            masks=template.masks,
            save=lambda state: save_checkpoint(snapshot(state), output),
            resume=resume_state,
            label=f"[bold]{stage}[/bold] {template.model.name}",
        )
    except TrainingInterrupted as e:
        if e.saved_epoch is None:
            raise TrainingInterrupted(f"interrupted during epoch {start + 1}; no checkpoint was written") from e
        raise TrainingInterrupted(
            f"interrupted; {output} holds epoch {e.saved_epoch}/{cfg.epochs}: continue with `prunecli {stage} --resume {output}`",
            saved_epoch=e.saved_epoch,
        ) from e
    if start >= cfg.epochs:
        log(f"{stage}: nothing to train (epoch {start} of {cfg.epochs}); test top-1 {state.last_eval.top1:.2f}%")
    else:
        best_text = f" (best {best.top1:.2f}% at epoch {best.epoch})" if best.top1 is not None else ""
        log(f"{stage} done in {state.seconds:.1f}s: test top-1 {state.last_eval.top1:.2f}%{best_text}")
    return output
