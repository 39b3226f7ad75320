#!/usr/bin/env python
"""Training throughput: prunecli's loop vs a plain PyTorch reference loop, side by side.

Both train the same model (same initial weights, SGD momentum 0.9) on the same images
with the same batch size and the same augmentation (random crop with padding + flip):

* reference -- the torchvision-references way: a Dataset of PIL images, per-image
  torchvision transforms (RandomCrop, RandomHorizontalFlip, ToTensor, Normalize), a
  DataLoader (tried with 0 and with N workers; the faster one is the reference);
* prunecli -- `prunecli.data.loaders.TensorBatches` + `prunecli.engine.loop.train_one_epoch`,
  the code `prunecli train` runs: the split lives on the device as uint8 and each batch is
  gathered, cropped, flipped and normalised with a few batched tensor ops.

Runs are interleaved (ref, ours, ref, ours, ... with the order alternating) and the
medians reported, because this machine is shared and noisy. One "run" is one epoch of
--steps batches, timed after a warm-up epoch. The printed ratio is prunecli images/s
divided by the best reference images/s (>= 1.0 means prunecli is not slower).

    python scripts/bench_train.py                       # resnet20, CIFAR-shaped, CPU
    python scripts/bench_train.py --model conv4 --dataset digits
    python scripts/bench_train.py --device cuda --batch-size 256 --steps 50
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from prunecli.data import get_dataset
from prunecli.data._registry import TensorSplit
from prunecli.data.loaders import TensorBatches
from prunecli.engine.distributed import resolve_device
from prunecli.engine.loop import train_one_epoch
from prunecli.models import ModelSpec, build_model


class PilDataset(Dataset):
    """What a plain PyTorch script has: PIL images and per-image transforms."""

    def __init__(self, split: TensorSplit, transform):
        mode = "L" if split.images.shape[1] == 1 else "RGB"
        self.images = [Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy(), mode=mode) for img in split.images]
        self.labels = split.labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.labels[i]


def reference_epoch(model, loader, optimizer, device) -> tuple[int, float]:
    model.train()
    seen = 0
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += y.shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--dataset", default="synthetic", help="synthetic (3x32x32), digits, cifar10 (needs --data)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12, help="batches per timed run")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs per loop (medians reported)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the second reference setting")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    bundle = get_dataset(args.dataset, root=args.data)
    n = args.steps * args.batch_size
    train = bundle.train
    if len(train) < n:  # repeat the data to fill the requested number of steps
        reps = -(-n // len(train))
        train = TensorSplit(train.images.repeat(reps, 1, 1, 1), train.labels.repeat(reps))
    train = TensorSplit(train.images[:n].contiguous(), train.labels[:n].contiguous())
    spec = bundle.spec
    aug = bundle.augment
    pad = aug.crop_padding

    tf = [T.RandomCrop(spec.image_size, padding=pad)] if pad else []
    tf += [T.RandomHorizontalFlip()] if aug.hflip else []
    tf += [T.ToTensor(), T.Normalize(spec.mean, spec.std)]
    pil = PilDataset(train, T.Compose(tf))

    torch.manual_seed(0)
    base = build_model(ModelSpec(args.model, spec.in_channels, spec.num_classes, spec.image_size)).to(device)

    def fresh():
        m = copy.deepcopy(base)
        return m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    loops = {}
    for workers in sorted({0, args.workers}):
        loader = DataLoader(
            pil,
            batch_size=args.batch_size,
            shuffle=True,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
        )
        m, opt = fresh()
        loops[f"reference (DataLoader + transforms, workers={workers})"] = (lambda m=m, opt=opt, loader=loader: reference_epoch(m, loader, opt, device))

    batches = TensorBatches(
        train, batch_size=args.batch_size, device=device, mean=spec.mean, std=spec.std, augment=aug, shuffle=True, seed=0
    )
    m_ours, opt_ours = fresh()
    sched = torch.optim.lr_scheduler.LambdaLR(opt_ours, lambda s: 1.0)
    epoch_counter = [0]

    def ours():
        batches.set_epoch(epoch_counter[0])
        epoch_counter[0] += 1
        stats = train_one_epoch(m_ours, batches, opt_ours, sched, device=device)
        return stats.samples, stats.seconds

    ours_name = "prunecli (TensorBatches + train_one_epoch)"
    loops[ours_name] = ours

    names = list(loops)
    for name in names:  # warm-up: first epoch allocates, spawns workers, tunes kernels
        loops[name]()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            seen, seconds = loops[name]()
            rates[name].append(seen / seconds)

    print(
        f"bench_train: {args.model} on {spec.name} {spec.in_channels}x{spec.image_size}x{spec.image_size}, "
        f"batch {args.batch_size}, {args.steps} steps per run, {args.repeats} interleaved runs, "
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    for name in names:
        vals = rates[name]
        print(f"  {name:<58} median {statistics.median(vals):8.1f} img/s   (min {min(vals):.1f}, max {max(vals):.1f})")
    best_ref = max(statistics.median(rates[n]) for n in names if n != ours_name)
    print(f"ratio prunecli / best reference: {statistics.median(rates[ours_name]) / best_ref:.2f}")


if __name__ == "__main__":
    main()
