"""Train, fine-tune and resume runs: data + model + optimizer -> epochs -> checkpoints.

Every epoch ends with the checkpoint at ``output`` replaced atomically (weights, masks,
optimizer/scheduler state, epoch): a Ctrl-C or kill mid-epoch leaves the last complete
epoch on disk, and ``prunecli train --resume`` continues from it with the same result as
an uninterrupted run (randomness is a function of seed and epoch; see data/loaders.py).
Next to it: ``<stem>.best.pt`` (best test top-1), ``<stem>.metrics.jsonl`` (one JSON
line per epoch) and ``<stem>.config.yaml`` (the resolved options, usable as --config).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from prunecli._console import log
from prunecli.checkpoint import (
    Checkpoint,
    atomic_write,
    lineage_entry,
    load_checkpoint,
    rebuild_model,
    save_checkpoint,
)
from prunecli.data import DataBundle, get_dataset
from prunecli.data.loaders import epoch_seed, make_batches
from prunecli.engine.config import TrainConfig
from prunecli.engine.distributed import DistInfo, barrier, init_distributed, shutdown_distributed
from prunecli.engine.loop import EvalResult, TrainHooks, evaluate, train_one_epoch
from prunecli.engine.optim import build_optimizer, build_scheduler
from prunecli.engine.progress import epoch_bar
from prunecli.errors import CheckpointError, PruneCliError
from prunecli.models._registry import ModelSpec, build_model, is_user_model, user_code_sha256
from prunecli.surgery.masks import MaskEnforcer

# Testing hook: raise KeyboardInterrupt right after epoch N's checkpoint is written,
# exactly what a Ctrl-C at that moment does (used by the resume tests).
_INTERRUPT_ENV = "PRUNECLI_INTERRUPT_AFTER_EPOCH"


class TrainingInterrupted(PruneCliError):
    exit_code = 130


def side_paths(output: Path) -> dict[str, Path]:
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return {
        "best": output.with_name(f"{stem}.best{output.suffix or '.pt'}"),
        "metrics": output.with_name(f"{stem}.metrics.jsonl"),
        "config": output.with_name(f"{stem}.config.yaml"),
    }


def load_data(cfg: TrainConfig) -> DataBundle:
    return get_dataset(
        cfg.dataset,
        root=cfg.data,
        download=cfg.download,
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
        seed=cfg.seed,
    )


def check_data_fits_model(bundle: DataBundle, spec: ModelSpec, where: str) -> None:
    """The dataset's input shape and classes must be what the model was built for."""
    d = bundle.spec
    if (d.num_classes, d.in_channels, d.image_size) != (spec.num_classes, spec.in_channels, spec.image_size):
        raise PruneCliError(
            f"{where}: model takes {spec.in_channels}x{spec.image_size}x{spec.image_size} inputs and "
            f"{spec.num_classes} classes; dataset {d.name} has {d.in_channels}x{d.image_size}x{d.image_size} "
            f"and {d.num_classes}"
        )


# ---------------------------------------------------------------------------- entry points


def train(cfg: TrainConfig, *, output: Path, options: dict[str, Any]) -> Path:
    """Train ``cfg.model`` from scratch on ``cfg.dataset``; returns the checkpoint path."""
    dist_info, device = init_distributed(cfg.device)
    try:
        bundle = load_data(cfg)
        spec = ModelSpec(
            name=cfg.model,
            in_channels=bundle.spec.in_channels,
            num_classes=bundle.spec.num_classes,
            image_size=bundle.spec.image_size,
            kwargs=dict(cfg.model_args),
        )
        torch.manual_seed(cfg.seed)  # model initialisation is part of the seeded run
        model = build_model(spec)
        extra = {}
        if is_user_model(spec.name):
            extra["model_code_sha256"] = user_code_sha256(spec.name)
        template = Checkpoint(
            model=spec,
            state_dict={},
            dataset=bundle.spec,
            lineage=[lineage_entry("train", options)],
            extra=extra,
        )
        return _run("train", cfg, model, template, bundle, output, options, dist_info=dist_info, device=device)
    finally:
        shutdown_distributed()


def finetune(source: Path, cfg: TrainConfig, *, output: Path, options: dict[str, Any]) -> Path:
    """Retrain a (masked or compressed) checkpoint; its masks stay enforced after every step."""
    dist_info, device = init_distributed(cfg.device)
    try:
        parent = load_checkpoint(source)
        model = rebuild_model(parent)
        cfg = _resolve_data_from_parent(cfg, parent)
        bundle = load_data(cfg)
        check_data_fits_model(bundle, parent.model, str(source))
        template = Checkpoint(
            model=parent.model,
            state_dict={},
            dataset=bundle.spec,
            structure=parent.structure,
            masks=parent.masks,
            lineage=parent.lineage + [lineage_entry("finetune", options, parent=source)],
            extra=parent.extra,
        )
        return _run("finetune", cfg, model, template, bundle, output, options, dist_info=dist_info, device=device)
    finally:
        shutdown_distributed()


def resume(path: Path, overrides: dict[str, Any], *, output: Optional[Path]) -> Path:
    """Continue an interrupted train/finetune run from its last complete epoch."""
    ckpt = load_checkpoint(path)
    state = ckpt.resume
    if not state or "config" not in state:
        raise CheckpointError(f"{path}: has no resume state (only train and finetune checkpoints can be resumed)")
    cfg = TrainConfig.from_dict({**state["config"], **overrides})
    dist_info, device = init_distributed(cfg.device)
    try:
        model = rebuild_model(ckpt)
        bundle = load_data(cfg)
        check_data_fits_model(bundle, ckpt.model, str(path))
        lineage = [dict(e) for e in ckpt.lineage]
        if lineage:
            lineage[-1].setdefault("resumed", []).append(
                {"at_epoch": state["epoch"], "time": lineage_entry("resume", {})["time"], "overrides": overrides}
            )
        template = replace(ckpt, state_dict={}, lineage=lineage, resume=None, path=None)
        options = dict(state.get("options") or {})
        options.update(overrides)
        return _run(
            state["stage"],
            cfg,
            model,
            template,
            bundle,
            output or path,
            options,
            dist_info=dist_info,
            device=device,
            resume_state=state,
        )
    finally:
        shutdown_distributed()


def _resolve_data_from_parent(cfg: TrainConfig, parent: Checkpoint) -> TrainConfig:
    """Fine-tuning defaults to the data the parent was trained on."""
    if parent.dataset is None:
        if not cfg.dataset:
            raise PruneCliError(f"{parent.path}: records no dataset; pass --dataset")
        return cfg
    d = parent.dataset
    if cfg.dataset and cfg.dataset != d.name:
        return cfg  # an explicit other dataset: check_data_fits_model decides
    return replace(
        cfg,
        dataset=d.name,
        data=cfg.data or d.root,
        image_size=cfg.image_size or d.image_size,
        num_classes=cfg.num_classes or (d.options.get("num_classes") if d.options else None),
    )


# ---------------------------------------------------------------------------- the run


class _EnforceMasks(TrainHooks):
    def __init__(self, enforcer: MaskEnforcer):
        self.enforcer = enforcer

    def after_step(self, model):
        self.enforcer.enforce()


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    use = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if not use:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def _run(
    stage: str,
    cfg: TrainConfig,
    model: torch.nn.Module,
    template: Checkpoint,
    bundle: DataBundle,
    output: Path,
    options: dict[str, Any],
    *,
    dist_info: DistInfo,
    device: torch.device,
    resume_state: Optional[dict] = None,
) -> Path:
    output = Path(output)
    paths = side_paths(output)
    world = dist_info.world_size
    if cfg.batch_size % world:
        raise PruneCliError(f"--batch-size {cfg.batch_size} is the global batch; it must divide by {world} processes")
    if cfg.epochs < 0:
        raise PruneCliError(f"--epochs must be >= 0, got {cfg.epochs}")
    amp_dtype = _amp_dtype(cfg, device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    enforcer = MaskEnforcer(model, template.masks, where=str(template.path or "checkpoint"))
    enforcer.enforce()
    hooks: tuple[TrainHooks, ...] = (_EnforceMasks(enforcer),) if enforcer else ()

    common = dict(device=device, seed=cfg.seed, rank=dist_info.rank, world_size=world, workers=cfg.workers, channels_last=channels_last)
    train_batches = make_batches(
        bundle, "train", batch_size=cfg.batch_size // world, train=True, labels_shuffled=cfg.shuffle_labels, **common
    )
    test_batches = make_batches(bundle, "test", batch_size=cfg.batch_size // world, train=False, **common)

    net = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, len(train_batches))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    start_epoch, best = 0, {"top1": None, "epoch": None}
    last_eval: Optional[EvalResult] = None
    if resume_state:
        start_epoch = int(resume_state["epoch"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        best = dict(resume_state.get("best") or best)
        if resume_state.get("last_eval"):
            last_eval = EvalResult(**resume_state["last_eval"])

    if dist_info.is_main and resume_state is None:
        _write_config(paths["config"], stage, options)
        paths["metrics"].parent.mkdir(parents=True, exist_ok=True)
        paths["metrics"].write_text("")

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"[bold]{stage}[/bold] {template.model.name} on {bundle.spec.name} "
        f"({len(bundle.train):,} train / {len(bundle.test):,} test images, {n_params:,} params) "
        f"on {device}{f' x{world}' if world > 1 else ''}"
        f"{', AMP ' + str(amp_dtype).replace('torch.', '') if amp_dtype else ''}"
        f"{', channels_last' if channels_last else ''}; epochs {start_epoch}->{cfg.epochs}"
    )

    interrupt_after = int(os.environ.get(_INTERRUPT_ENV, "-1"))
    started = time.perf_counter()
    saved_epoch = start_epoch if resume_state else None
    try:
        for epoch in range(start_epoch, cfg.epochs):
            torch.manual_seed(epoch_seed(cfg.seed, epoch, stream=4))  # dropout etc.: a function of (seed, epoch)
            train_batches.set_epoch(epoch)
            with epoch_bar(f"epoch {epoch + 1}/{cfg.epochs}", train_batches.num_samples * world) as bar:
                stats = train_one_epoch(
                    net,
                    train_batches,
                    optimizer,
                    scheduler,
                    device=device,
                    label_smoothing=cfg.label_smoothing,
                    amp_dtype=amp_dtype,
                    scaler=scaler,
                    hooks=hooks,
                    progress=bar,
                    dist_info=dist_info,
                )
            evaluated = (epoch + 1) % max(1, cfg.eval_every) == 0 or epoch + 1 == cfg.epochs
            improved = False
            if evaluated:
                last_eval = evaluate(model, test_batches, device=device, amp_dtype=amp_dtype, dist_info=dist_info)
                if best["top1"] is None or last_eval.top1 > best["top1"]:
                    best = {"top1": last_eval.top1, "epoch": epoch + 1}
                    improved = True
            record = {
                "epoch": epoch + 1,
                "train_loss": round(stats.loss, 6),
                "train_top1": round(stats.top1, 4),
                "lr": stats.lr,
                "images_per_s": round(stats.images_per_s, 1),
                "seconds": round(stats.seconds, 3),
            }
            if evaluated:
                record.update(test_loss=round(last_eval.loss, 6), test_top1=round(last_eval.top1, 4), test_top5=round(last_eval.top5, 4))
            log(_epoch_line(epoch + 1, cfg.epochs, stats, last_eval))
            if dist_info.is_main:
                ckpt = _checkpoint(template, model, cfg, stage, options, epoch + 1, optimizer, scheduler, scaler, best, last_eval)
                save_checkpoint(ckpt, output)
                if improved:
                    save_checkpoint(replace(ckpt, resume=None), paths["best"])
                # after the checkpoint: a kill in between must not log an epoch the checkpoint lacks
                with open(paths["metrics"], "a") as f:
                    f.write(json.dumps(record) + "\n")
            saved_epoch = epoch + 1
            barrier(dist_info)
            if epoch + 1 == interrupt_after:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if saved_epoch is None:
            raise TrainingInterrupted(f"interrupted during epoch {start_epoch + 1}; no checkpoint was written") from None
        raise TrainingInterrupted(
            f"interrupted; {output} holds epoch {saved_epoch}/{cfg.epochs}: "
            f"continue with `prunecli train --resume {output}`"
        ) from None

    if start_epoch >= cfg.epochs:  # --epochs 0, or resuming a finished run: record the model as it is
        last_eval = evaluate(model, test_batches, device=device, amp_dtype=amp_dtype, dist_info=dist_info)
        if dist_info.is_main:
            ckpt = _checkpoint(template, model, cfg, stage, options, start_epoch, optimizer, scheduler, scaler, best, last_eval)
            save_checkpoint(ckpt, output)
        log(f"{stage}: nothing to train (epoch {start_epoch} of {cfg.epochs}); test top-1 {last_eval.top1:.2f}%")
    else:
        log(
            f"{stage} done in {time.perf_counter() - started:.1f}s: test top-1 {last_eval.top1:.2f}% "
            f"(best {best['top1']:.2f}% at epoch {best['epoch']})"
        )
    barrier(dist_info)
    return output


def _epoch_line(epoch: int, epochs: int, stats, ev: Optional[EvalResult]) -> str:
    test = f"  test {ev.top1:6.2f}% (top-5 {ev.top5:6.2f}%)" if ev is not None else ""
    return (
        f"epoch {epoch:>3}/{epochs}  loss {stats.loss:.4f}  train {stats.top1:6.2f}%{test}  "
        f"lr {stats.lr:.4g}  {stats.images_per_s:,.0f} img/s  {stats.seconds:.1f}s"
    )


def _checkpoint(template, model, cfg, stage, options, epoch, optimizer, scheduler, scaler, best, ev) -> Checkpoint:
    metrics = {"epoch": epoch, "epochs": cfg.epochs, "best_top1": best["top1"], "best_epoch": best["epoch"]}
    if ev is not None:
        metrics.update(top1=ev.top1, top5=ev.top5, loss=ev.loss, dataset=template.dataset.name if template.dataset else None)
    resume_state = {
        "stage": stage,
        "epoch": epoch,
        "config": cfg.to_dict(),
        "options": options,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "best": best,
        "last_eval": vars(ev) if ev is not None else None,
    }
    return replace(template, state_dict=model.state_dict(), metrics=metrics, resume=resume_state)


def _write_config(path: Path, stage: str, options: dict[str, Any]) -> None:
    import yaml

    from prunecli.checkpoint import to_plain

    body = yaml.safe_dump(to_plain(options), sort_keys=False)
    text = f"# resolved options of `prunecli {stage}`; reuse with --config\n{body}"
    atomic_write(path, lambda f: f.write(text.encode()))
