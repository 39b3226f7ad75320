#!/usr/bin/env python
"""Pruning while training vs plain fine-tuning: images/s side by side, same model, same data.

Each variant trains the same model from the same weights for --epochs epochs of --steps
batches with the Trainer that `prunecli finetune` and `prunecli prune --epochs` run:

* finetune -- no pruning callback (masks from a one-shot prune enforced, as finetune does);
* soft     -- SFP: l2 re-selected at every epoch end (prune --soft);
* fpgm     -- geomedian re-selected every epoch, gradients masked every step (--soft --mask-grads);
* agp      -- l1 along the cubic schedule, re-selected every epoch (--prune-schedule agp).

Variants are interleaved (finetune, soft, fpgm, agp, then the reverse order, ...) and
--repeats runs of each are timed; the medians are reported. Two ratios per variant,
against finetune: the training steps' images/s (the loop itself), and images over the
whole fit's wall time (re-selection included, which the loop figure leaves out).

    python scripts/bench_prune_train.py                               # resnet20, 32 px, CPU
    python scripts/bench_prune_train.py --model conv4 --image-size 32 --steps 40
    python scripts/bench_prune_train.py --device cuda --batch-size 256 --steps 200
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
import time

import torch

from prunecli.algorithms.gradual import GradualCallback
from prunecli.algorithms.soft import SoftPruningCallback
from prunecli.config import FinetuneConfig, Selection
from prunecli.criteria import get_criterion
from prunecli.data import get_dataset
from prunecli.data._registry import TensorSplit
from prunecli.engine.trainer import Callback, Trainer
from prunecli.models import ModelSpec, build_model, example_input
from prunecli.surgery.pruner import Pruner


class StepTimes(Callback):
    """Sums the Trainer's per-epoch loop figures (images and seconds of the training steps)."""

    key = "step_times"

    def __init__(self):
        self.images = 0
        self.seconds = 0.0

    def on_epoch_end(self, state):
        self.images += state.train_stats.samples
        self.seconds += state.train_stats.seconds


def make_pruner(spec, method, device, granularity="channel"):
    criterion = get_criterion(method)
    sel = Selection(rate=0.4, count_rule=criterion.count_rule)

    def make(model):
        return Pruner(model, criterion, sel, example_input=example_input(spec, device=device), granularity=granularity, name=spec.name)

    return make


def run(variant, spec, weights, data, cfg, device):
    model = build_model(spec)
    model.load_state_dict(weights)
    callbacks = [StepTimes()]
    masks = None
    if variant == "finetune":
        p = make_pruner(spec, "l2", torch.device("cpu"))(model)
        masks = p.mask(p.plan()).masks
    elif variant == "soft":
        callbacks.append(SoftPruningCallback(make_pruner(spec, "l2", device)))
    elif variant == "fpgm":
        callbacks.append(SoftPruningCallback(make_pruner(spec, "geomedian", device), mask_grads=True))
    elif variant == "agp":
        callbacks.append(GradualCallback(make_pruner(spec, "l1", device), ramp_epochs=max(1, cfg.epochs - 1)))
    start = time.perf_counter()
    Trainer(cfg, device=device).fit(model, data, callbacks, masks=masks, label=variant)
    wall = time.perf_counter() - start
    t = callbacks[0]
    return t.images / t.seconds, t.images / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20, help="batches per epoch")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = ModelSpec(name=args.model, in_channels=3, num_classes=10, image_size=args.image_size)
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in build_model(spec).state_dict().items()}
    data = get_dataset("synthetic", image_size=args.image_size, seed=0)
    # epochs of --steps full batches: the 512 synthetic images, repeated
    reps = -(-args.batch_size * args.steps // len(data.train))
    data = replace(data, train=TensorSplit(data.train.images.repeat(reps, 1, 1, 1), data.train.labels.repeat(reps)))
    cfg = FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, steps_per_epoch=args.steps, device=args.device, lr=0.01, eval_every=10**6
    )
    variants = ["finetune", "soft", "fpgm", "agp"]
    loop: dict[str, list[float]] = {v: [] for v in variants}
    whole: dict[str, list[float]] = {v: [] for v in variants}
    run("finetune", spec, weights, data, cfg, device)  # warm-up: allocator, kernels, first trace
    for r in range(args.repeats):
        for v in variants if r % 2 == 0 else reversed(variants):
            a, b = run(v, spec, weights, data, cfg, device)
            loop[v].append(a)
            whole[v].append(b)
    print(f"{args.model} {args.image_size}px batch {args.batch_size}, {args.epochs} epochs x {args.steps} steps on {device}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats (medians)")
    base_loop, base_whole = statistics.median(loop["finetune"]), statistics.median(whole["finetune"])
    print(f"{'variant':<10}{'loop img/s':>12}{'ratio':>8}{'fit img/s':>12}{'ratio':>8}")
    for v in variants:
        ml, mw = statistics.median(loop[v]), statistics.median(whole[v])
        print(f"{v:<10}{ml:>12.1f}{ml / base_loop:>8.3f}{mw:>12.1f}{mw / base_whole:>8.3f}")


if __name__ == "__main__":
    main()
