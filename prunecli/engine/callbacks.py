"""The callbacks every training stage uses: the best checkpoint, the metrics log, and the
interrupt hook the resume tests rely on. See trainer.py for the events; mask enforcement,
which every fit has, is defined there (`EnforceMasks`, re-exported here)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

from prunecli.engine.trainer import Callback, EnforceMasks, FitState
from prunecli.errors import OutputError
from prunecli.outputs import atomic_write, why

__all__ = ["BNSparsity", "BestCheckpoint", "EnforceMasks", "InterruptAfterEpoch", "KillDuringEpoch", "MetricsLog", "SaveRewind", "batchnorm_scales"]


class BestCheckpoint(Callback):
    """Keeps the best test top-1 so far and calls ``write(state)`` when it improves.

    Only epochs with the same masks compare: when a callback changes the masks (gradual
    pruning), the record starts again, so an early, denser epoch is never kept as "best".
    """

    key = "best"

    def __init__(self, write: Optional[Callable[[FitState], None]] = None):
        self.write = write
        self.top1: Optional[float] = None
        self.epoch: Optional[int] = None
        self.masks_version: int = 0
        self._improved = False

    def on_epoch_end(self, state: FitState) -> None:
        self._improved = False
        if state.masks_version != self.masks_version:
            self.top1, self.epoch, self.masks_version = None, None, state.masks_version
        if not state.evaluated or state.last_eval is None or state.eval_masks_version != state.masks_version:
            return  # no new result, or one measured with masks that have changed since
        if self.top1 is None or state.last_eval.top1 > self.top1:
            self.top1, self.epoch, self._improved = state.last_eval.top1, state.epoch, True

    def after_save(self, state: FitState) -> None:
        if self._improved and self.write is not None and state.is_main:
            self.write(state)
        self._improved = False

    def state_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "epoch": self.epoch, "masks_version": self.masks_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.top1, self.epoch = state.get("top1"), state.get("epoch")
        self.masks_version = int(state.get("masks_version") or 0)


class MetricsLog(Callback):
    """One JSON line per epoch in ``path``, appended after the epoch's checkpoint is written
    (a kill in between must not log an epoch the checkpoint lacks).

    A fresh run replaces the previous file only after its first checkpoint exists (one
    atomic write of its first line): a run that dies before then leaves the old run's
    metrics beside the old run's checkpoint. A resumed run appends.
    """

    key = "metrics_log"

    def __init__(self, path: Path):
        self.path = Path(path)
        self._started = False

    def on_fit_start(self, state: FitState) -> None:
        self._started = state.resumed

    def after_save(self, state: FitState) -> None:
        if not state.is_main:
            return
        line = json.dumps(state.record) + "\n" if state.record is not None else ""
        if not self._started:
            self._started = True
            atomic_write(self.path, lambda f: f.write(line.encode()))
        elif line:
            try:
                with open(self.path, "a") as f:
                    f.write(line)
            except OSError as e:
                raise OutputError(f"cannot write {self.path}: {why(e)} (the epoch's checkpoint was written)") from None


def batchnorm_scales(model) -> list:
    """The scale (gamma) parameters of the model's affine BatchNorm layers."""
    from torch import nn

    return [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m.weight is not None]


class BNSparsity(Callback):
    """Network Slimming's sparsity training (Liu et al., ICCV 2017, arXiv:1708.06519, Eq. 1).

    An L1 penalty lambda * sum |gamma| over every BatchNorm scale, applied as its
    subgradient: lambda * sign(gamma) is added to each gamma's gradient after backward
    (after unscaling under AMP, before the optimizer step), as the reference's
    ``updateBN`` does. Under DDP the gradients are already averaged, so every rank adds
    the same term. Stateless: a resumed run only needs lambda, which its config records.
    """

    key = "bn_sparsity"

    def __init__(self, lam: float):
        self.lam = float(lam)
        self._scales: list = []

    def on_fit_start(self, state: FitState) -> None:
        self._scales = batchnorm_scales(state.model)

    def after_backward(self, state: FitState) -> None:
        import torch

        with torch.no_grad():
            for gamma in self._scales:
                if gamma.grad is not None:
                    gamma.grad.add_(torch.sign(gamma), alpha=self.lam)


class SaveRewind(Callback):
    """Keeps the weights of epoch K (K = 0: the initialisation) for lottery-ticket rewinding.

    Frankle & Carbin (ICLR 2019, arXiv:1803.03635) rewind to the initial weights; Frankle
    et al. (ICML 2020, arXiv:1912.05671) to an early epoch K. The copy (every parameter
    and buffer, on the CPU) goes into ``store["rewind"]`` = {"epoch": K, "state_dict": ...},
    which the stage keeps in the checkpoint's ``extra`` from that epoch on; ``prune
    --rounds R --rewind init|epoch:K`` reads it. A resumed run past epoch K already has it.
    """

    key = "save_rewind"

    def __init__(self, epoch: int, store: dict):
        self.epoch = int(epoch)
        self.store = store

    def _keep(self, state: FitState) -> None:
        self.store["rewind"] = {"epoch": self.epoch, "state_dict": {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}}

    def on_fit_start(self, state: FitState) -> None:
        if self.epoch == 0 and not state.resumed:
            self._keep(state)

    def on_epoch_end(self, state: FitState) -> None:
        if self.epoch > 0 and state.epoch == self.epoch:
            self._keep(state)


INTERRUPT_ENV = "PRUNECLI_INTERRUPT_AFTER_EPOCH"


class InterruptAfterEpoch(Callback):
    """Testing hook: a Ctrl-C right after epoch N's checkpoint is written.

    `from_env` builds it from ``PRUNECLI_INTERRUPT_AFTER_EPOCH=N`` (the resume tests).
    """

    key = "interrupt"

    def __init__(self, epoch: int):
        self.epoch = epoch

    @classmethod
    def from_env(cls) -> Optional["InterruptAfterEpoch"]:
        value = os.environ.get(INTERRUPT_ENV, "")
        return cls(int(value)) if value.strip().lstrip("-").isdigit() else None

    def after_save(self, state: FitState) -> None:
        if state.epoch == self.epoch and state.record is not None:
            raise KeyboardInterrupt


KILL_ENV = "PRUNECLI_KILL_DURING_EPOCH"


class KillDuringEpoch(Callback):
    """Testing hook: SIGKILL (no cleanup, no handler) in the middle of epoch N (1-based).

    `from_env` builds it from ``PRUNECLI_KILL_DURING_EPOCH=N``: the resume tests kill a run
    after an epoch's mask re-selection and checkpoint, during the next epoch's steps.
    """

    key = "kill"

    def __init__(self, epoch: int):
        self.epoch = epoch

    @classmethod
    def from_env(cls) -> Optional["KillDuringEpoch"]:
        value = os.environ.get(KILL_ENV, "")
        return cls(int(value)) if value.strip().isdigit() else None

    def after_step(self, state: FitState) -> None:
        if state.epoch + 1 == self.epoch:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
