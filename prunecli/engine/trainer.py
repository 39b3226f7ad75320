"""The Trainer: ``Trainer(cfg).fit(model, data, callbacks=[...])``, an explicit epoch loop.

Every method that acts during training (mask enforcement, soft re-selection, sparsity
penalties, rewinding, score training, distillation) is a `Callback` on these events:

    on_fit_start                      once, before the first epoch
      on_epoch_start                  the epoch's RNG is already seeded
        loss                          every step: may replace or extend the loss (see below)
        after_backward                every step: gradients ready (unscaled under AMP)
        after_step                    every step: after the optimizer and lr schedule
      on_epoch_end                    the epoch's train stats and (when due) test result are in
      before_save                     last chance to change what the epoch's checkpoint holds
      (save)                          the caller's ``save(state)``, on rank 0 only
      after_save                      the checkpoint is on disk (log lines, best copies)
    on_fit_end

Callbacks get the `FitState`: the unwrapped model (no DDP ``module.`` prefix), the
optimizer, the epoch, the current masks and metrics. Each callback's ``state_dict()`` goes
into the resume state and comes back through ``load_state_dict``, so a run killed after
any epoch resumes bit-identically (CPU, fixed seed): randomness is a function of (seed,
epoch) (prunecli.data.loaders), and the optimizer, schedule, scaler and callbacks carry
their state.

``loss(state, inputs, outputs, labels, loss) -> loss`` runs inside the step's autocast
region, after the forward pass and before backward: ``loss`` is the cross-entropy (with
label smoothing) or what the previous callback returned, and the tensor returned is what
is back-propagated and reported. Callbacks are chained in order. Only callbacks that
override it are called, and a fit where none does adds nothing to the step (the trainer
looks once, at fit start). Knowledge distillation (prunecli.engine.distill) is one.

The trainer owns the current masks (``state.masks``): a callback that changes them calls
``state.set_masks``, and the caller's ``save`` writes ``state.masks`` every epoch. A
callback that changes which weights are zero without changing the enforced masks (soft
pruning) calls ``state.masks_changed`` so that results measured before do not compare.

Iterative pruning trains in *cycles* (``cycle_epochs``): at every cycle start after the
first, the optimizer and the lr schedule start afresh, as each round of lottery-ticket
training does.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from prunecli._console import log
from prunecli.config.train import TrainingOptions, check_global_batch
from prunecli.data import DataBundle
from prunecli.data.loaders import epoch_seed, make_batches
from prunecli.engine.distributed import DistInfo, barrier, resolve_device
from prunecli.engine.loop import EpochStats, EvalResult, evaluate, train_one_epoch
from prunecli.engine.optim import build_optimizer, build_scheduler
from prunecli._progress import epoch_bar
from prunecli.errors import PruneCliError
from prunecli.models.folding import inference_only_reason
from prunecli.surgery.masks import bind_masks


class TrainingInterrupted(PruneCliError):
    """Ctrl-C (or a kill the process survives) during training: exit code 130."""

    exit_code = 130

    def __init__(self, message: str, *, saved_epoch: Optional[int] = None):
        super().__init__(message)
        self.saved_epoch = saved_epoch


class TrainingDiverged(PruneCliError):
    """The loss became NaN or Inf: what follows would train on garbage, so the run stops."""

    def __init__(self, message: str, *, saved_epoch: Optional[int] = None):
        super().__init__(message)
        self.saved_epoch = saved_epoch


class Callback:
    """Base class: override the events you need (see the module docstring).

    ``key`` names the callback's state in the resume state; two callbacks of one run must
    not share a key.
    """

    key: str = ""

    def state_key(self) -> str:
        return self.key or type(self).__name__

    def parameters(self, model: torch.nn.Module) -> Optional[list[torch.nn.Parameter]]:
        """Parameters this callback trains in place of the model's (None: it adds none).

        Asked once, before the optimizer is built: when any callback answers, the optimizer
        trains the union of the answers only (edge-popup trains scores, the weights frozen;
        SSS trains its gates beside the model's parameters and returns both).
        """
        return None

    def on_fit_start(self, state: "FitState") -> None: ...

    def on_epoch_start(self, state: "FitState") -> None: ...

    def loss(self, state: "FitState", inputs: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """The step's loss, replaced or extended (see the module docstring); the default keeps it."""
        return loss

    def after_backward(self, state: "FitState") -> None: ...

    def after_step(self, state: "FitState") -> None: ...

    def before_eval(self, state: "FitState") -> None: ...

    def on_epoch_end(self, state: "FitState") -> None: ...

    def before_save(self, state: "FitState") -> None: ...

    def after_save(self, state: "FitState") -> None: ...

    def on_fit_end(self, state: "FitState") -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EnforceMasks(Callback):
    """Pruned entries stay exactly zero: ``state.masks`` re-applied after every optimizer step.

    Weight decay and momentum would otherwise revive them. Follows ``state.set_masks``; every
    fit has one (added first unless given), as the trainer owns the masks.
    """

    key = "enforce_masks"

    def __init__(self) -> None:
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._version: Optional[int] = None

    def _bind(self, state: FitState) -> None:
        if self._version != state.masks_version:
            self._pairs = bind_masks(state.model, state.masks)
            self._version = state.masks_version

    @torch.no_grad()
    def _enforce(self, state: FitState) -> None:
        self._bind(state)
        for t, m in self._pairs:  # nothing to do while there are no masks
            t.mul_(m)

    def on_fit_start(self, state: FitState) -> None:
        self._enforce(state)

    def after_step(self, state: FitState) -> None:
        self._enforce(state)

    def before_save(self, state: FitState) -> None:
        if self._version != state.masks_version:  # masks changed since the last step: the checkpoint must match them
            self._enforce(state)


@dataclass(eq=False)
class FitState:
    """What callbacks see and change during `Trainer.fit`."""

    cfg: TrainingOptions
    model: torch.nn.Module  # unwrapped: parameter names as in the checkpoint
    device: torch.device
    dist: DistInfo
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    amp_dtype: Optional[torch.dtype]
    callbacks: list[Callback]
    channels_last: bool = False  # the model and the batches are in channels_last memory format
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    masks_version: int = 0  # bumped by set_masks: what was measured before no longer compares
    # the masks the epoch's checkpoint records when a callback keeps them apart from the
    # enforced ones (learned masks: the frozen weights stay whole while the scores train,
    # and the file holds the current selection); None: ``masks``
    checkpoint_masks: Optional[dict[str, torch.Tensor]] = None
    epoch: int = 0  # epochs completed
    resumed: bool = False
    train_stats: Optional[EpochStats] = None  # of the epoch that just ended
    last_eval: Optional[EvalResult] = None  # the latest test result (not every epoch is evaluated)
    evaluated: bool = False  # whether this epoch ended with a test evaluation
    eval_masks_version: int = 0  # the masks_version last_eval was measured with
    record: Optional[dict[str, Any]] = None  # this epoch's metrics line
    saved_epoch: Optional[int] = None  # the last epoch a checkpoint holds
    seconds: float = 0.0  # wall time of fit's epochs
    epochs: int = 0  # the run's length (epochs in all, every cycle counted)
    train_batches: Any = None  # this rank's training batches of the current epoch (re-iterable)
    max_steps: Optional[int] = None  # --steps-per-epoch

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def set_masks(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = dict(masks)
        self.masks_version += 1

    def masks_changed(self) -> None:
        """The pruned entries changed (a soft re-selection) while the enforced masks did not."""
        self.masks_version += 1

    def resume_state(self) -> dict[str, Any]:
        """Optimizer, schedule, scaler, epoch and callback states (plain data and tensors)."""
        return {
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "last_eval": vars(self.last_eval) if self.last_eval is not None else None,
            "masks_version": self.masks_version,
            "callbacks": {cb.state_key(): cb.state_dict() for cb in self.callbacks},
        }


def amp_dtype_for(cfg: TrainingOptions, device: torch.device) -> Optional[torch.dtype]:
    use = cfg.amp if cfg.amp is not None else device.type == "cuda"
    if not use:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


class Trainer:
    """Runs ``cfg.epochs`` epochs of training with callbacks; see the module docstring."""

    def __init__(
        self,
        cfg: TrainingOptions,
        *,
        device: Optional[torch.device] = None,
        dist: DistInfo = DistInfo(),
        epochs: Optional[int] = None,
        cycle_epochs: Optional[int] = None,
    ):
        """``epochs``: the run's length (default ``cfg.epochs``); ``cycle_epochs``: restart
        the optimizer and the lr schedule (built for ``cfg.epochs``) every that many epochs."""
        self.cfg = cfg
        self.dist = dist
        self.device = device if device is not None else resolve_device(cfg.device, dist.local_rank)
        self.epochs = cfg.epochs if epochs is None else int(epochs)
        self.cycle = cycle_epochs

    def fit(
        self,
        model: torch.nn.Module,
        data: DataBundle,
        callbacks: Sequence[Callback] = (),
        *,
        masks: Optional[dict[str, torch.Tensor]] = None,
        save: Optional[Callable[[FitState], None]] = None,
        resume: Optional[dict[str, Any]] = None,
        label: str = "train",
        label_seed: Optional[int] = None,
    ) -> FitState:
        """Train ``model`` in place; returns the final state.

        ``masks`` (and any a callback sets later) are enforced after every step: an
        `EnforceMasks` callback is added unless one is given. ``save(state)`` runs on rank 0 after every epoch (and once when
        there is nothing to train). ``resume`` is a `FitState.resume_state` from a saved
        run; the model must already hold that run's weights. ``label_seed``: the
        permutation of ``--shuffle-labels`` (default ``cfg.seed``).
        """
        cfg, device, dist, epochs = self.cfg, self.device, self.dist, self.epochs
        folded = inference_only_reason(model)  # BatchNorm folded for inference: nothing left to train with
        if folded:
            raise PruneCliError(folded)
        world = dist.world_size
        check_global_batch(cfg, world)
        amp_dtype = amp_dtype_for(cfg, device)
        channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"

        callbacks = list(callbacks)
        if not any(isinstance(cb, EnforceMasks) for cb in callbacks):
            callbacks.insert(0, EnforceMasks())
        keys = [cb.state_key() for cb in callbacks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"two callbacks share a state key: {keys}")

        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        common = dict(device=device, seed=cfg.seed, rank=dist.rank, world_size=world, workers=cfg.workers, channels_last=channels_last)
        train_batches = make_batches(
            data, "train", batch_size=cfg.batch_size // world, train=True, labels_shuffled=cfg.shuffle_labels, label_seed=label_seed, **common
        )
        test_batches = make_batches(data, "test", batch_size=cfg.batch_size // world, train=False, **common)
        net = model
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        trained = _trained_parameters(callbacks, model)  # None: the model's own
        optimizer = build_optimizer(cfg, model, trained)
        # --steps-per-epoch cuts every epoch short (smoke runs); the schedule follows the steps taken
        steps = min(len(train_batches), cfg.steps_per_epoch) if cfg.steps_per_epoch else len(train_batches)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        state = FitState(
            cfg=cfg,
            model=model,
            device=device,
            dist=dist,
            optimizer=optimizer,
            scheduler=build_scheduler(cfg, optimizer, steps),
            scaler=scaler,
            amp_dtype=amp_dtype,
            callbacks=callbacks,
            channels_last=channels_last,
            masks=dict(masks or {}),
            epochs=epochs,
            train_batches=train_batches,
            max_steps=cfg.steps_per_epoch,
        )
        loss_hook = _loss_hook(callbacks, state)  # None unless a callback overrides Callback.loss
        if resume:
            try:
                self._restore(state, resume)
            except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
                # a resume state written for another model or optimizer, or edited
                raise PruneCliError(
                    f"its resume state does not fit this model and options ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                    "start a new run (finetune) instead of resuming"
                ) from None

        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"{label} on {data.spec.name} ({len(data.train):,} train / {len(data.test):,} test images, {n_params:,} params) "
            f"on {device}{f' x{world}' if world > 1 else ''}"
            f"{', AMP ' + str(amp_dtype).replace('torch.', '') if amp_dtype else ''}"
            f"{', channels_last' if channels_last else ''}; epochs {state.epoch}->{epochs}"
        )

        def fire(event: str) -> None:
            for cb in callbacks:
                getattr(cb, event)(state)

        def saved() -> None:
            fire("before_save")
            if save is not None and state.is_main:
                save(state)
            state.saved_epoch = state.epoch
            fire("after_save")

        fire("on_fit_start")
        start = state.epoch
        started = time.perf_counter()
        if state.resumed:
            state.saved_epoch = start
        try:
            for epoch in range(start, epochs):
                torch.manual_seed(epoch_seed(cfg.seed, epoch, stream=4))  # dropout etc.: a function of (seed, epoch)
                train_batches.set_epoch(epoch)
                if self.cycle and epoch > 0 and epoch % self.cycle == 0:
                    # a new cycle (round): fresh optimizer state and lr schedule; a resumed
                    # run restored them from the checkpoint when it starts mid-cycle
                    state.optimizer = build_optimizer(cfg, model, trained)
                    state.scheduler = build_scheduler(cfg, state.optimizer, steps)
                fire("on_epoch_start")
                images = train_batches.num_samples * world if steps == len(train_batches) else steps * cfg.batch_size
                with epoch_bar(f"epoch {epoch + 1}/{epochs}", images) as bar:
                    stats = train_one_epoch(
                        net,
                        train_batches,
                        state.optimizer,
                        state.scheduler,
                        device=device,
                        label_smoothing=cfg.label_smoothing,
                        amp_dtype=amp_dtype,
                        scaler=scaler,
                        loss_hook=loss_hook,
                        after_backward=lambda: fire("after_backward"),
                        after_step=lambda: fire("after_step"),
                        progress=bar,
                        dist_info=dist,
                        max_steps=cfg.steps_per_epoch,
                    )
                if not math.isfinite(stats.loss):  # the loss is all-reduced: every rank stops here together
                    raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the loss is {stats.loss}", saved_epoch=state.saved_epoch)
                state.epoch, state.train_stats = epoch + 1, stats
                fire("before_eval")
                state.evaluated = (epoch + 1) % max(1, cfg.eval_every) == 0 or epoch + 1 == epochs
                if state.evaluated:
                    state.last_eval = evaluate(model, test_batches, device=device, amp_dtype=amp_dtype, dist_info=dist)
                    state.eval_masks_version = state.masks_version
                state.record = _record(state)
                log(_epoch_line(state))
                fire("on_epoch_end")
                saved()
                barrier(dist)
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted during epoch {state.epoch + 1}" if state.saved_epoch is None else f"interrupted; epoch {state.saved_epoch} was saved",
                saved_epoch=state.saved_epoch,
            ) from None

        if start >= epochs:  # --epochs 0, or resuming a finished run: record the model as it is
            state.evaluated, state.record = True, None
            state.last_eval = evaluate(model, test_batches, device=device, amp_dtype=amp_dtype, dist_info=dist)
            state.eval_masks_version = state.masks_version
            saved()
        state.seconds = time.perf_counter() - started
        fire("on_fit_end")
        barrier(dist)
        return state

    def _restore(self, state: FitState, resume: dict[str, Any]) -> None:
        state.epoch = int(resume["epoch"])
        state.resumed = True
        state.optimizer.load_state_dict(resume["optimizer"])
        for param, buffers in state.optimizer.state.items():  # load_state_dict checks counts, not shapes
            for name, value in buffers.items():
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(f"optimizer state {name!r} of shape {tuple(value.shape)} for a parameter of shape {tuple(param.shape)}")
        state.scheduler.load_state_dict(resume["scheduler"])
        if state.scaler is not None and resume.get("scaler"):
            state.scaler.load_state_dict(resume["scaler"])
        if resume.get("last_eval"):
            state.last_eval = EvalResult(**resume["last_eval"])
        state.masks_version = int(resume.get("masks_version") or 0)
        stored = resume.get("callbacks") or {}
        for cb in state.callbacks:
            if cb.state_key() in stored:
                cb.load_state_dict(stored[cb.state_key()])


def _trained_parameters(callbacks: Sequence[Callback], model: torch.nn.Module) -> Optional[list[torch.nn.Parameter]]:
    """The union of the callbacks' `Callback.parameters` answers, in order, or None when none answers."""
    out: Optional[list[torch.nn.Parameter]] = None
    seen: set[int] = set()
    for cb in callbacks:
        params = cb.parameters(model)
        if params is None:
            continue
        out = out if out is not None else []
        for p in params:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    if out is not None and not out:
        raise PruneCliError("nothing to train: the callbacks' parameters are empty")
    return out


def _loss_hook(callbacks: Sequence[Callback], state: FitState) -> Optional[Callable[..., torch.Tensor]]:
    """The ``loss`` events of the callbacks that override it, chained; None when none does.

    Decided once per fit, so plain training runs the step without any extra call.
    """
    hooks = [cb.loss for cb in callbacks if type(cb).loss is not Callback.loss]
    if not hooks:
        return None

    def chained(inputs: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        for hook in hooks:
            loss = hook(state, inputs, outputs, labels, loss)
        return loss

    return chained


def _record(state: FitState) -> dict[str, Any]:
    stats, ev = state.train_stats, state.last_eval
    record = {
        "epoch": state.epoch,
        "train_loss": round(stats.loss, 6),
        "train_top1": round(stats.top1, 4),
        "lr": stats.lr,
        "images_per_s": round(stats.images_per_s, 1),
        "seconds": round(stats.seconds, 3),
    }
    if state.evaluated:
        record.update(test_loss=round(ev.loss, 6), test_top1=round(ev.top1, 4), test_top5=round(ev.top5, 4))
    return record


def _epoch_line(state: FitState) -> str:
    stats, ev = state.train_stats, state.last_eval
    test = f"  test {ev.top1:6.2f}% (top-5 {ev.top5:6.2f}%)" if ev is not None else ""
    return (
        f"epoch {state.epoch:>3}/{state.epochs}  loss {stats.loss:.4f}  train {stats.top1:6.2f}%{test}  "
        f"lr {stats.lr:.4g}  {stats.images_per_s:,.0f} img/s  {stats.seconds:.1f}s"
    )
