"""`prune --epochs N`: pruning while training, and `prune --resume` of such a run.

The training stage of ``finetune`` (prunecli.stages.train: a checkpoint every epoch,
resume, torchrun) with a pruning algorithm's callback (prunecli.algorithms: soft,
gradual, iterative; otherwise one-shot selection before the first epoch). The result
is a masked checkpoint that ``compress`` shrinks and ``finetune`` continues. One-shot
pruning is prunecli.stages.prune, whose criterion and calibration helpers this reuses.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from prunecli.algorithms import get_algorithm
from prunecli.algorithms.one_shot import OneShotCallback
from prunecli.checkpoint import Checkpoint, derive, load_checkpoint
from prunecli.config import PruneConfig
from prunecli.config.prune import LEARNED_METHODS
from prunecli.errors import OptionError, PruneCliError
from prunecli.stages import train as training
from prunecli.stages.checkpoints import data_for_checkpoint, rebuild_model
from prunecli._console import log
from prunecli.stages.prune import calibration_batches, check_something_selected, count_rule, criterion_for, prune_record, pruner_for, stream_bn, with_channel_selection
from prunecli.surgery.masks import apply_masks
from prunecli.surgery.pruner import Pruner


def algorithm_name(cfg: PruneConfig) -> str:
    """Which registered algorithm the options ask for (prunecli.algorithms)."""
    learned = LEARNED_METHODS.get(cfg.method)
    if learned is not None:  # the method learns its own mask (edge-popup scores, SSS gates)
        return learned
    if cfg.soft:
        return "soft"
    if cfg.prune_schedule is not None:
        return "gradual"
    if cfg.rounds is not None:
        return "iterative"
    return "one-shot"


def prune_while_training(source: Path, cfg: PruneConfig, *, output: Path) -> Path:
    """``prune --epochs N``: the algorithm's callback on the fine-tuning stage; returns the output path.

    The result is a masked checkpoint (the final selection enforced) that ``compress``
    shrinks and ``finetune`` continues; ``prune --resume`` continues a killed run.
    """
    criterion = criterion_for(cfg)
    stream_bn(cfg, criterion)  # a --stream-bn the method cannot use fails before anything is claimed
    algorithm = get_algorithm(algorithm_name(cfg))
    why = algorithm.accepts(criterion)
    if why:
        raise OptionError(f"{{method}} {cfg.method}: {why}")
    if cfg.granularity.value not in criterion.granularities:
        raise OptionError(f"{{method}} {cfg.method} prunes at {{granularity}} {', '.join(criterion.granularities)}, not {cfg.granularity.value}")
    if cfg.grouping.value == "layer" and (criterion.needs_data or cfg.method == "slimming"):
        raise OptionError(f"{{grouping}} layer scores each conv's own filters from its weights: {{method}} {cfg.method} cannot (use l1, l2 or geomedian)")
    if cfg.prune_schedule is not None and cfg.prune_epochs is None:
        # the ramp's length is part of the run: a resume with more --epochs must not move it
        cfg = cfg.replace(prune_epochs=cfg.agp_epochs())
    with training._stage(cfg, output) as (dist, device):
        parent = load_checkpoint(source)
        model = rebuild_model(parent, allow_nonfinite=cfg.allow_nonfinite)
        if parent.masks:
            apply_masks(model, parent.masks, where=str(source))
        parent, model = with_channel_selection(parent, model, cfg, criterion)
        bundle = data_for_checkpoint(parent, dataset=cfg.dataset, data=cfg.data, download=cfg.download, seed=cfg.seed)
        extra = dict(parent.extra)
        extra["prune"] = {**prune_record(cfg, criterion, algorithm.name, cfg.rate), "epochs": cfg.total_epochs()}
        template = derive(parent, "prune", cfg.to_options(), dataset=bundle.spec, state_dict={}, extra=extra)
        if algorithm.name not in LEARNED_METHODS.values():  # a learned mask has nothing to select before training
            _check_selects_something(cfg, criterion, parent, model)
        fit = training_callbacks(cfg, template, device, model, source=parent)
        return training._fit("prune", cfg, model, template, bundle, output, dist=dist, device=device, **fit)


def resume_pruning(path: Path, overrides: Mapping[str, Any], *, output: Optional[Path] = None) -> Path:
    """``prune --resume``: continue a killed ``prune --epochs`` run (its algorithm's callback rebuilt)."""
    return training.resume(path, overrides, output=output, stage="prune", callbacks=training_callbacks)


def rewind_weights(ckpt: Checkpoint, cfg: PruneConfig, model_keys: dict[str, tuple]) -> Optional[dict[str, torch.Tensor]]:
    """The state dict ``--rewind`` resets to (kept by ``train --save-rewind K``), checked against the model."""
    want = cfg.rewind_epoch()
    if want is None:
        return None
    what = "init" if want == 0 else f"epoch:{want}"
    saved = ckpt.extra.get("rewind")
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise PruneCliError(f"--rewind {what}: {ckpt.path} holds no rewind weights (train it with --save-rewind {want})")
    if saved.get("epoch") != want:
        raise PruneCliError(f"--rewind {what}: {ckpt.path} holds the weights of epoch {saved.get('epoch')} (give --rewind {'init' if saved.get('epoch') == 0 else 'epoch:' + str(saved.get('epoch'))})")
    weights = saved["state_dict"]
    for name, shape in model_keys.items():
        t = weights.get(name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise PruneCliError(f"--rewind {what}: the rewind weights of {ckpt.path} do not fit its model ({name}); were they saved before a compress?")
    if set(weights) != set(model_keys):
        raise PruneCliError(f"--rewind {what}: the rewind weights of {ckpt.path} name other tensors than its model")
    return weights


def training_callbacks(cfg: PruneConfig, ckpt: Checkpoint, device: torch.device, model: torch.nn.Module, *, source: Optional[Checkpoint] = None) -> dict[str, Any]:
    """`_fit`'s keyword arguments for the algorithm ``cfg`` asks for: its callback, epochs and cycles.

    ``ckpt`` is the run's own checkpoint (or template): its model spec, dataset and extra
    (rewind weights travel in ``extra``); ``source`` the checkpoint pruned, when starting.
    """
    criterion = criterion_for(cfg)
    algorithm = get_algorithm(algorithm_name(cfg))
    spec = ckpt.model
    calibration = calibration_batches(source or ckpt, cfg, device) if criterion.needs_data else None

    def make_pruner(model: torch.nn.Module) -> Pruner:
        return pruner_for(cfg, criterion, model, spec, device, calibration)

    if algorithm.name == "edgepopup":
        return edgepopup_callbacks(cfg, criterion, ckpt, model, spec, fresh=source is not None)
    if algorithm.name == "sss":
        return sss_callbacks(cfg, ckpt, model, spec, fresh=source is not None)
    if algorithm.name == "soft":
        cb = algorithm.callback(make_pruner, every=cfg.reselect_every, mask_grads=cfg.mask_grads, grouping=cfg.grouping.value, hard_epochs=cfg.hard_epochs)
        return {"extra_callbacks": [cb]}
    if algorithm.name == "gradual":
        return {"extra_callbacks": [algorithm.callback(make_pruner, ramp_epochs=cfg.agp_epochs(), every=cfg.reselect_every)]}
    if algorithm.name == "iterative":
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        rewind = rewind_weights(source or ckpt, cfg, shapes)
        cb = algorithm.callback(make_pruner, round_epochs=cfg.epochs, rewind=rewind)
        return {"extra_callbacks": [cb], "epochs": cfg.total_epochs(), "cycle_epochs": cfg.epochs}
    return {"extra_callbacks": [OneShotCallback(make_pruner, target_macs=cfg.target_macs)]}



def learned_mask_base(ckpt: Checkpoint, key: str, *, fresh: bool, what: str, stage: str) -> dict[str, torch.Tensor]:
    """The masks a learned-mask stage enforces: the parent's (a fresh run) or, on resume, those
    its callback ``key`` kept in the resume state (the file's own masks are the selection so far)."""
    if fresh:
        return dict(ckpt.masks)
    stored = ((ckpt.resume or {}).get("callbacks") or {}).get(key) or {}
    base = stored.get("base") if isinstance(stored.get("base"), dict) else None
    if base is None:
        raise PruneCliError(f"{ckpt.path}: its {what} resume state is missing: start the {stage} again")
    return base


def edgepopup_callbacks(cfg: PruneConfig, criterion, ckpt: Checkpoint, model: torch.nn.Module, spec, *, fresh: bool) -> dict[str, Any]:
    """The score stage's callback, and the masks the Trainer enforces: the parent's only.

    A resumed run's file records the current selection as its masks; enforcing those would
    zero frozen weights that a later selection may bring back, so the parent's masks (kept
    in the callback's resume state) are what is enforced, as in the uninterrupted run.
    """
    from prunecli.algorithms.edgepopup import EdgePopupCallback
    from prunecli.models import example_input

    base = learned_mask_base(ckpt, EdgePopupCallback.key, fresh=fresh, what="edge-popup", stage="score stage")
    cb = EdgePopupCallback(
        model,
        criterion,
        cfg.selection(count_rule(cfg, criterion)),
        granularity=cfg.granularity.value,
        example=example_input(spec),
        name=spec.name,
        score_init=cfg.score_init.value,
        warmup_epochs=cfg.warmup_epochs,
        seed=cfg.seed,
        store=ckpt.extra,
        base=base,
    )
    for note in cb.notes:
        log(note)
    return {"extra_callbacks": [cb], "masks": base}


def sss_callbacks(cfg: PruneConfig, ckpt: Checkpoint, model: torch.nn.Module, spec, *, fresh: bool) -> dict[str, Any]:
    """Sparse Structure Selection's callback, and the masks the Trainer enforces: the parent's only.

    As with edge-popup, a resumed run's file records what its gates had killed by then; a
    gate may come back, so the parent's masks (kept in the callback's resume state) are
    what is enforced, as in the uninterrupted run.
    """
    from prunecli.algorithms.sss import SSSCallback
    from prunecli.models import example_input

    base = learned_mask_base(ckpt, SSSCallback.key, fresh=fresh, what="sss", stage="sss stage")
    cb = SSSCallback(
        model,
        granularity=cfg.granularity.value,
        gamma=cfg.sss_gamma,
        momentum=cfg.momentum,
        example=example_input(spec),
        name=spec.name,
        store=ckpt.extra,
        base=base,
    )
    for note in cb.notes:
        log(note)
    return {"extra_callbacks": [cb], "masks": base}


def _check_selects_something(cfg: PruneConfig, criterion, parent: Checkpoint, model: torch.nn.Module) -> None:
    """One dry selection on the starting weights (a copy) at the final rate: options that select
    nothing fail now, in one line, as one-shot's do, rather than after a training run."""
    cpu = torch.device("cpu")
    calibration = calibration_batches(parent, cfg, cpu) if criterion.needs_data else None
    pruner = pruner_for(cfg, criterion, copy.deepcopy(model).eval(), parent.model, cpu, calibration)
    plan = pruner.plan_for_macs(cfg.target_macs) if cfg.target_macs is not None else pruner.plan()
    check_something_selected(plan, cfg)
