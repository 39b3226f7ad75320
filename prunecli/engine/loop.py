"""train_one_epoch and evaluate: the two loops the Trainer (trainer.py) runs."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from prunecli.engine.distributed import DistInfo, all_reduce_sum


@dataclass
class EpochStats:
    loss: float
    top1: float  # percent
    samples: int
    seconds: float
    lr: float

    @property
    def images_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EvalResult:
    loss: float
    top1: float  # percent
    top5: float  # percent (top-k with k = min(5, classes))
    samples: int


def autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def train_one_epoch(
    model: torch.nn.Module,
    batches,
    optimizer: torch.optim.Optimizer,
    scheduler,
    *,
    device: torch.device,
    label_smoothing: float = 0.0,
    amp_dtype: Optional[torch.dtype] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    loss_hook: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None,
    after_backward: Optional[Callable[[], None]] = None,
    after_step: Optional[Callable[[], None]] = None,
    progress=None,
    dist_info: DistInfo = DistInfo(),
    max_steps: Optional[int] = None,
) -> EpochStats:
    """One pass over ``batches`` (the first ``max_steps`` of them, when given).

    ``loss_hook(inputs, outputs, labels, loss)`` returns the loss to back-propagate in place
    of the cross-entropy (the Trainer's ``Callback.loss`` chain, e.g. distillation); it runs
    inside the autocast region, so a teacher it calls sees the student's precision.
    """
    model.train()
    # running sums stay on the device: no host sync per step
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    start = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    for step, (x, y) in enumerate(batches):
        if max_steps is not None and step >= max_steps:
            break
        with autocast(device, amp_dtype):
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=label_smoothing)
            if loss_hook is not None:
                loss = loss_hook(x, out, y, loss)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if after_backward is not None:  # gradients are unscaled here (AMP), e.g. an L1 penalty on BN scales
            after_backward()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if after_step is not None:  # e.g. re-zero masked weights
            after_step()
        n = y.shape[0]
        seen += n
        loss_sum += loss.detach().double() * n
        correct += (out.detach().argmax(1) == y).sum()
        if progress is not None:
            progress.advance(n)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loss_total, correct_total, seen_total = all_reduce_sum(
        [loss_sum.item(), float(correct.item()), float(seen)], device, dist_info
    )
    seen_total = max(1.0, seen_total)
    return EpochStats(
        loss=loss_total / seen_total,
        top1=100.0 * correct_total / seen_total,
        samples=int(seen_total),
        seconds=seconds,
        lr=lr,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches,
    *,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    dist_info: DistInfo = DistInfo(),
    description: str = "evaluating",
) -> EvalResult:
    """Loss, top-1 and top-5 over ``batches``, under a progress bar on a terminal (the test
    set of a large model takes minutes on a CPU)."""
    from prunecli._progress import batches_bar

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    top5 = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    with batches_bar(description, batches) as bar:
        for x, y in batches:
            with autocast(device, amp_dtype):
                out = model(x)
            out = out.float()
            loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            k = min(5, out.shape[1])
            pred = out.topk(k, dim=1).indices
            hit = pred == y[:, None]
            top1 += hit[:, 0].sum()
            top5 += hit.any(dim=1).sum()
            seen += y.shape[0]
            if bar is not None:
                bar.advance(1)
    model.train(was_training)
    loss_total, t1, t5, n = all_reduce_sum(
        [loss_sum.item(), float(top1.item()), float(top5.item()), float(seen)], device, dist_info
    )
    n = max(1.0, n)
    return EvalResult(loss=loss_total / n, top1=100.0 * t1 / n, top5=100.0 * t5 / n, samples=int(n))
