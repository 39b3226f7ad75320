#!/usr/bin/env python
"""How much faster is hessian's batched per-sample gradient than the one-sample loop?

`prune --method hessian` needs the gradient of every calibration sample on its own (the
empirical Fisher squares per-sample gradients). The loop form runs one forward and one
backward pass per sample; the batched form (prunecli.criteria.hessian.empirical_fisher)
runs torch.func's vmap over grad, one vectorised pass per chunk of samples. Both see the
same model and the same calibration batches: the prune defaults, 8 batches of 64 images
of a dataset's training split (no augmentation), in eval mode, on the CPU unless told.

It times the two alternately (loop, batched, loop, ...) after one warm-up each, reports
the median and the range of each, and prints

    speed-up   median(loop) / median(batched)
    max rel    the largest |fisher_batched - fisher_loop| / max |fisher_loop| over all parameters

    python scripts/bench_hessian.py                        # conv4 on digits, 3 runs each
    python scripts/bench_hessian.py --model resnet20 --dataset synthetic --image-size 32
    python scripts/bench_hessian.py --threads 1 --runs 5
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="conv4")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--calib-batches", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each form")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from prunecli.criteria.hessian import empirical_fisher, empirical_fisher_loop
    from prunecli.data import get_dataset
    from prunecli.data.loaders import TensorBatches
    from prunecli.models import get_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    bundle = get_dataset(args.dataset, image_size=args.image_size)
    spec = bundle.spec
    model = get_model(args.model, in_channels=spec.in_channels, num_classes=spec.num_classes, image_size=spec.image_size).to(device).eval()
    source = TensorBatches(bundle.train, batch_size=args.batch_size, device=device, mean=spec.mean, std=spec.std, shuffle=True, seed=0)
    batches = list(itertools.islice(iter(source), args.calib_batches))  # the same tensors for both forms
    samples = sum(len(y) for _, y in batches)
    params = sum(p.numel() for p in model.parameters())

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn(model, batches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, out

    timed(empirical_fisher_loop)  # warm-up: allocator, kernels, lazy imports
    timed(empirical_fisher)
    loop_s, batched_s = [], []
    for _ in range(args.runs):
        t, loop = timed(empirical_fisher_loop)
        loop_s.append(t)
        t, batched = timed(empirical_fisher)
        batched_s.append(t)
    scale = max(float(v.abs().max()) for v in loop.values())
    max_rel = max(float((batched[n] - loop[n]).abs().max()) for n in loop) / scale

    threads = torch.get_num_threads()
    print(f"{args.model} on {args.dataset} ({spec.in_channels}x{spec.image_size}x{spec.image_size}), {params:,} parameters, "
          f"{samples} calibration samples ({len(batches)} x {args.batch_size}); {device}, {threads} thread(s), "
          f"{os.cpu_count()} CPU(s); {args.runs} timed run(s) each, interleaved")
    for name, s in (("loop (one sample at a time)", loop_s), ("batched (torch.func vmap)", batched_s)):
        print(f"  {name:30s} median {statistics.median(s):8.2f} s   range {min(s):.2f}-{max(s):.2f} s")
    print(f"  speed-up {statistics.median(loop_s) / statistics.median(batched_s):.1f}x   max rel {max_rel:.1e}")


if __name__ == "__main__":
    main()
