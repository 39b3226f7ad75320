"""`train`, `finetune` and their resume: a checkpoint (or a spec) in, the Trainer, checkpoints out.

Every epoch ends with the checkpoint at ``output`` replaced atomically (weights, current
masks, optimizer/scheduler/callback state, epoch): a Ctrl-C or kill mid-epoch leaves the
last complete epoch on disk, and ``--resume`` continues from it with the same result as
an uninterrupted run. Next to it: ``<stem>.best.pt`` (best test top-1),
``<stem>.metrics.jsonl`` (one JSON line per epoch) and ``<stem>.config.yaml`` (the
resolved options, usable as --config).

The output is claimed before any work (prunecli.outputs: checked, locked, not another
run's file unless ``--overwrite``), and a new run's side files replace the previous
run's only once its first checkpoint exists: a run that fails or is killed before that
leaves the old files as they were and writes nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from prunecli._console import log, markup_safe
from prunecli.checkpoint import Checkpoint, derive, load_checkpoint, resumed, save_checkpoint, with_result
from prunecli.config import FinetuneConfig, PruneConfig, TrainConfig, option_specs
from prunecli.data import DataBundle, get_dataset, list_datasets
from prunecli.engine.callbacks import BestCheckpoint, BNSparsity, InterruptAfterEpoch, KillDuringEpoch, MetricsLog, SaveRewind, batchnorm_scales
from prunecli.engine.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown_distributed
from prunecli.engine.trainer import Callback, FitState, Trainer, TrainingDiverged, TrainingInterrupted
from prunecli.errors import CheckpointError, OptionError, OutputError, PruneCliError
from prunecli.models import ModelSpec, build_model, is_user_model
from prunecli.models._registry import user_code_sha256
from prunecli.models.build import ModelTooLarge
from prunecli.outputs import claim_output
from prunecli.stages.checkpoints import SHUFFLED_LABELS, check_data_fits_model, data_for_checkpoint, rebuild_model, shuffled_label_seed, side_paths, write_config
from prunecli.stages.scratch import prepare_scratch
from prunecli.stages.teacher import distillation

StageCfg = Union[TrainConfig, FinetuneConfig]


def train(cfg: TrainConfig, *, output: Path) -> Path:
    """Train ``cfg.model`` from scratch on ``cfg.dataset``; returns the checkpoint path."""
    if cfg.dataset not in list_datasets():  # a bad name is a bad option (exit 2); missing files are not
        raise OptionError(f"{{dataset}} {cfg.dataset!r}: unknown; valid: {', '.join(list_datasets())}")
    if cfg.arch_from is not None:  # Rethinking's Scratch-E/B: a checkpoint's compressed architecture, freshly initialised
        with _stage(cfg, Path(output)) as (dist, device):
            run = prepare_scratch(cfg, Path(output))
            if cfg.init is not None:
                init_weights(run.model, cfg.init.value)
            if cfg.bn_init is not None:
                _init_batchnorm_scales(run.model, cfg.bn_init)
            return _fit("train", run.cfg, run.model, run.template, run.bundle, Path(output), dist=dist, device=device, options=run.options)
    with _stage(cfg, Path(output)) as (dist, device):
        bundle = get_dataset(
            cfg.dataset, root=cfg.data, download=cfg.download, image_size=cfg.image_size, num_classes=cfg.num_classes, seed=cfg.seed
        )
        try:
            spec = ModelSpec(
                name=cfg.model,
                in_channels=bundle.spec.in_channels,
                num_classes=bundle.spec.num_classes,
                image_size=bundle.spec.image_size,
                kwargs=dict(cfg.model_args),
            )
            torch.manual_seed(cfg.seed)  # model initialisation is part of the seeded run
            model = build_model(spec)
            if cfg.init is not None:
                init_weights(model, cfg.init.value)
            if cfg.bn_init is not None:
                _init_batchnorm_scales(model, cfg.bn_init)
        except ValueError as e:
            raise OptionError(f"{{model}} {cfg.model}: {e}") from None
        except ModelTooLarge:
            raise
        except PruneCliError as e:  # an unknown model or model argument: the command line's fault
            raise OptionError(str(e)) from None
        extra = {"model_code_sha256": user_code_sha256(spec.name)} if is_user_model(spec.name) else {}
        template = derive(None, "train", cfg.to_options(), model=spec, dataset=bundle.spec, extra=extra)
        return _fit("train", cfg, model, template, bundle, Path(output), dist=dist, device=device)


def finetune(source: Path, cfg: FinetuneConfig, *, output: Path) -> Path:
    """Retrain a (masked or compressed) checkpoint; its masks stay enforced after every step."""
    with _stage(cfg, Path(output)) as (dist, device):
        parent = load_checkpoint(source)
        model = rebuild_model(parent, allow_nonfinite=cfg.allow_nonfinite)
        bundle = data_for_checkpoint(parent, dataset=cfg.dataset, data=cfg.data, download=cfg.download, seed=cfg.seed)
        template = derive(parent, "finetune", cfg.to_options(), dataset=bundle.spec, state_dict={})
        return _fit("finetune", cfg, model, template, bundle, Path(output), dist=dist, device=device)


# options that define what a run trains: a resume that changed them would write a checkpoint
# whose lineage describes another run (``--data`` may change: a dataset folder can move)
_FIXED_ON_RESUME = ("model", "model_args", "dataset", "image_size", "num_classes", "arch_from", "budget")
# and what a pruning run selects and when: changing them mid-run would prune another way
# than the lineage records (and a round's or the AGP ramp's length is --epochs-derived)
_FIXED_ON_PRUNING_RESUME = (
    "method", "rate", "granularity", "scope", "target_macs", "mix_norm", "count_rule", "layer_rate", "layer_rates", "skip",
    "protect", "round_to", "max_layer_rate", "soft", "mask_grads", "grouping", "reselect_every", "prune_schedule",
    "prune_epochs", "rounds", "rewind", "hard_epochs", "stream_bn", "sss_gamma",
)


def resume(
    path: Path,
    overrides: Mapping[str, Any],
    *,
    output: Optional[Path] = None,
    stage: Optional[str] = None,
    callbacks: Optional[Callable[..., dict[str, Any]]] = None,
) -> Path:
    """Continue an interrupted train/finetune run from its last complete epoch.

    ``overrides`` are options given again (``--epochs 30`` extends the run); the options
    that define the run (model, dataset) cannot change.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.resume
    if isinstance(state, dict) and state.get("stage") == "compress":
        raise CheckpointError(f"{path}: a block-by-block compress run; continue it with `prunecli compress --resume {path}`")
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or state.get("stage") not in RESUMABLE:
        raise CheckpointError(f"{path}: has no resume state (only train, finetune and prune --epochs checkpoints can be resumed)")
    # a pruning run needs its algorithm's callback (stages.while_training), and the commands do not mix
    if (state["stage"] == "prune" and callbacks is None) or (stage is not None and state["stage"] != stage and "prune" in (stage, state["stage"])):
        raise CheckpointError(f"{path}: a {state['stage']} run; continue it with `prunecli {state['stage']} --resume {path}`")
    stage = state["stage"]
    config_cls = _config_class(stage)
    known = {s.name for s in option_specs(config_cls)}
    # a version-1 finetune run stored train's fields too (model, image_size ...): not options of finetune
    stored = {k: v for k, v in state["config"].items() if k in known}
    try:
        before = config_cls.from_options(stored)
    except OptionError as e:
        raise CheckpointError(f"{path}: its resume state holds invalid options ({e})") from None
    cfg = config_cls.from_options({**stored, **overrides})
    fixed = _FIXED_ON_RESUME + (_FIXED_ON_PRUNING_RESUME if state["stage"] == "prune" else ())
    if state["stage"] == "prune" and cfg.rounds is not None:
        fixed += ("epochs",)  # a round is --epochs long
    for name in fixed:
        if name in known and getattr(cfg, name) != getattr(before, name):
            raise OptionError(
                f"{{{name}}} {getattr(cfg, name)!r}: {path} continues a run of {name} {getattr(before, name)!r}; "
                "a resumed run keeps it (start a new run to change it)"
            )
    total = cfg.total_epochs() if state["stage"] == "prune" else cfg.epochs
    if total < state["epoch"]:
        raise OptionError(f"{{epochs}} {cfg.epochs}: {path} has already trained {state['epoch']} epochs; give at least that many (more extends the run)")
    output = Path(output or path)
    # --overwrite is a decision about this invocation's output, not carried over from the run
    overwrite = bool(config_cls.check_options(overrides).get("overwrite", False))
    with _stage(cfg, output, resumes=Path(path), overwrite=overwrite) as (dist, device):
        model = rebuild_model(ckpt, allow_nonfinite=cfg.allow_nonfinite)
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
        # a pruning run's algorithm callback, rebuilt from the stored options (stages.while_training)
        fit = callbacks(cfg, ckpt, device, model) if callbacks is not None else {}
        return _fit(stage, cfg, model, template, bundle, output, dist=dist, device=device, options=options, resume_state=state, **fit)


RESUMABLE = ("train", "finetune", "prune")


def _label_permutation(cfg: StageCfg, template: Checkpoint) -> Optional[int]:
    """The seed of ``--shuffle-labels``' permutation, recorded in the run's checkpoint.

    The first shuffled stage of a lineage draws it from ``--seed``; the stages after it
    reuse that permutation (pretraining, pruning and fine-tuning then see the same
    labels), and ``evaluate --split train`` reads it back. Training on the true labels
    drops the record.
    """
    if not cfg.shuffle_labels:
        template.extra.pop(SHUFFLED_LABELS, None)
        return None
    seed = shuffled_label_seed(template)
    if seed is None:
        seed = int(cfg.seed)
        template.extra[SHUFFLED_LABELS] = {"seed": seed}
    return seed


def _config_class(stage: str):
    return {"train": TrainConfig, "finetune": FinetuneConfig, "prune": PruneConfig}[stage]


@torch.no_grad()
def init_weights(model: torch.nn.Module, how: str) -> int:
    """``train --init``: re-initialise every conv and linear weight (biases to 0); returns the layer count.

    The initialisations of Ramanujan et al., "What's Hidden in a Randomly Weighted Neural
    Network?", CVPR 2020, arXiv:1911.13299, which seed 000 uses: He (kaiming) normal or
    uniform with fan_in and the ReLU gain; Glorot (xavier) normal or uniform; and the
    signed constant +-gain/sqrt(fan_in) with random signs (unsigned: all positive), their
    best for finding supermasks in random weights. Draws come from the global RNG, which
    ``train`` seeds with --seed before building the model.
    """
    from prunecli.models.layers import prunable_layers

    gain = torch.nn.init.calculate_gain("relu")
    layers = [m for _, m in prunable_layers(model)]
    for m in layers:
        w = m.weight
        if how == "kaiming-normal":
            torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")
        elif how == "kaiming-uniform":
            torch.nn.init.kaiming_uniform_(w, mode="fan_in", nonlinearity="relu")
        elif how == "xavier-normal":
            torch.nn.init.xavier_normal_(w)
        elif how == "xavier-uniform":
            torch.nn.init.xavier_uniform_(w)
        elif how in ("signed-constant", "unsigned-constant"):
            fan_in = torch.nn.init._calculate_correct_fan(w, "fan_in")
            std = gain / fan_in**0.5
            if how == "signed-constant":
                torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")  # only its signs are kept
                w.copy_(torch.where(w >= 0, std, -std))
            else:
                w.fill_(std)
        else:
            raise OptionError(f"{{init}} {how!r}: unknown")
        if getattr(m, "bias", None) is not None:
            m.bias.zero_()
    if not layers:
        raise OptionError(f"{{init}} {how}: {type(model).__name__} has no conv or linear layers")
    return len(layers)


def _init_batchnorm_scales(model: torch.nn.Module, value: float) -> None:
    """Network Slimming initialises every BatchNorm scale to 0.5 (the reference's --s setting)."""
    scales = batchnorm_scales(model)
    if not scales:
        raise OptionError(f"{{bn_init}} {value}: {type(model).__name__} has no BatchNorm scales")
    with torch.no_grad():
        for gamma in scales:
            gamma.fill_(value)


@contextlib.contextmanager
def _stage(cfg: StageCfg, output: Path, *, resumes: Optional[Path] = None, overwrite: Optional[bool] = None):
    """Processes started, the output claimed before any work (prunecli.outputs); yields (dist, device).

    Under torchrun every rank checks the path, rank 0 (the one that writes) locks it, and
    the ranks agree on the outcome, so a refused output stops all of them at once rather
    than leaving the others waiting for rank 0.
    """
    dist, device = init_distributed(cfg.device)
    try:
        with contextlib.ExitStack() as stack:
            error: Optional[PruneCliError] = None
            try:
                replace_existing = cfg.overwrite if overwrite is None else overwrite
                claim = claim_output(output, overwrite=replace_existing, resumes=resumes, side=side_paths(output).values(), lock=dist.is_main)
                stack.enter_context(claim)
            except PruneCliError as e:
                error = e
            if dist.enabled and all_reduce_sum([float(error is not None)], device, dist)[0] and error is None:
                raise OutputError(f"{output}: another process of this torchrun job could not claim it")
            if error is not None:
                raise error
            yield dist, device
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
    extra_callbacks: Sequence[Callback] = (),
    epochs: Optional[int] = None,
    cycle_epochs: Optional[int] = None,
    masks: Optional[dict[str, torch.Tensor]] = None,
) -> Path:
    """Run the Trainer with the stage's callbacks; write the checkpoint every epoch.

    ``masks``: what the Trainer enforces, when not the template's (a learned-mask stage
    enforces the parent's while its file records the current selection).

    ``extra_callbacks`` (a training-time pruning algorithm's) run after the stage's own;
    ``epochs`` and ``cycle_epochs`` go to the Trainer (iterative pruning's rounds).
    """
    paths = side_paths(output)
    options = options if options is not None else cfg.to_options()
    fresh = [resume_state is None]

    def snapshot(state: FitState, *, resumable: bool = True) -> Checkpoint:
        metrics = {"epoch": state.epoch, "epochs": total, "best_top1": best.top1, "best_epoch": best.epoch}
        ev = state.last_eval
        if ev is not None:
            metrics.update(top1=ev.top1, top5=ev.top5, loss=ev.loss, dataset=template.dataset.name if template.dataset else None)
        resume = {"stage": stage, "config": cfg.to_dict(), "options": options, **state.resume_state()} if resumable else None
        masks = state.checkpoint_masks if state.checkpoint_masks is not None else state.masks
        measured = {k: metrics.get(k) for k in ("top1", "top5", "best_top1", "best_epoch", "epoch", "epochs")}
        return replace(with_result(template, **measured), state_dict=state.model.state_dict(), masks=dict(masks), metrics=metrics, resume=resume)

    def save(state: FitState) -> None:
        save_checkpoint(snapshot(state), output)
        if fresh[0]:  # the new run's first checkpoint exists: now its side files replace the old run's
            fresh[0] = False
            paths["best"].unlink(missing_ok=True)  # rewritten below when this run has a best epoch
            write_config(paths["config"], stage, options)

    best = BestCheckpoint(write=lambda state: save_checkpoint(snapshot(state, resumable=False), paths["best"]))
    callbacks = [best, MetricsLog(paths["metrics"])]
    if cfg.sparsity_bn:
        if not batchnorm_scales(model):
            raise PruneCliError(f"--sparsity-bn: {template.model.name} has no BatchNorm scales to make sparse")
        callbacks.append(BNSparsity(cfg.sparsity_bn))
    if getattr(cfg, "teacher", None):  # knowledge distillation; the lineage entry records the teacher's file and sha256
        kd, template = distillation(cfg, template)
        callbacks.append(kd)
    total = cfg.epochs if epochs is None else epochs
    if getattr(cfg, "save_rewind", None) is not None:
        if cfg.save_rewind > total:
            raise OptionError(f"{{save_rewind}} {cfg.save_rewind}: the run has only {total} epochs")
        callbacks.append(SaveRewind(cfg.save_rewind, template.extra))
    callbacks.extend(extra_callbacks)
    for hook in (InterruptAfterEpoch.from_env(), KillDuringEpoch.from_env()):  # the resume tests' interruptions
        if hook is not None:
            callbacks.append(hook)
    total = cfg.epochs if epochs is None else epochs
    start = int(resume_state["epoch"]) if resume_state else 0
    label_seed = _label_permutation(cfg, template)
    try:
        state = Trainer(cfg, device=device, dist=dist, epochs=total, cycle_epochs=cycle_epochs).fit(
            model,
            bundle,
            callbacks,
            masks=template.masks if masks is None else masks,
            save=save,
            resume=resume_state,
            label=f"[bold]{stage}[/bold] {markup_safe(template.model.name)}",
            label_seed=label_seed,
        )
    except TrainingDiverged as e:
        kept = "nothing written" if e.saved_epoch is None else f"{output} keeps epoch {e.saved_epoch}"
        raise TrainingDiverged(f"{e} (learning rate too high?); {kept}", saved_epoch=e.saved_epoch) from None
    except TrainingInterrupted as e:
        if e.saved_epoch is None:
            raise TrainingInterrupted(f"interrupted during epoch {start + 1}; no checkpoint was written") from e
        raise TrainingInterrupted(
            f"interrupted; {output} holds epoch {e.saved_epoch}/{total}: continue with `prunecli {stage} --resume {output}`",
            saved_epoch=e.saved_epoch,
        ) from e
    if start >= total:
        log(f"{stage}: nothing to train (epoch {start} of {total}); test top-1 {state.last_eval.top1:.2f}%")
    else:
        best_text = f" (best {best.top1:.2f}% at epoch {best.epoch})" if best.top1 is not None else ""
        log(f"{stage} done in {state.seconds:.1f}s: test top-1 {state.last_eval.top1:.2f}%{best_text}")
    return output
