#!/usr/bin/env python
"""The Sensitivity Pruner's SNIP pass: re-initialising one copy in place vs rebuilding it every batch.

The reference draws a fresh random copy of the original network for every batch's SNIP
target. prunecli builds that copy once and re-draws its conv/linear weights in place
(Xavier normal), which computes the same thing. This script times, on the same batches,
interleaved (rebuild, in place, in place, rebuild, ...) and over --repeats rounds:

* rebuild  -- build the architecture anew, Xavier-initialise it, then the SNIP pass;
* in place -- re-draw the weights of the one copy, then the SNIP pass (what prunecli runs);
* snip     -- the SNIP forward/backward alone (no re-initialisation), for scale.

It prints the median milliseconds per batch of each and the ratio rebuild / in place.
The whole Sensitivity Pruner's time per block (SNIP, strategy training, validation) is
printed by `prunecli compress --block-by-block --method sensitivity` itself.

    python scripts/bench_sp.py                          # resnet56, 32 px, batch 64, CPU
    python scripts/bench_sp.py --model resnet50 --batch-size 12
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from prunecli.algorithms.sensitivity_pruner import Snip, primary_producer, snip_network
from prunecli.models import get_model
from prunecli.surgery.pruner import Pruner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (3, args.image_size, args.image_size)
    x = torch.randn(args.batch_size, *shape)
    y = torch.randint(0, 10, (args.batch_size,))

    def build() -> tuple[nn.Module, Snip]:
        net = snip_network(get_model(args.model, image_size=args.image_size))
        p = Pruner(net, example_input=torch.zeros(1, *shape), name=args.model)
        roots = [u.root for u in p.units if primary_producer(u, p.output_layer) is not None]
        return net, Snip(net, p.units, p.output_layer, roots, keep=0.4, layersort=False, reinit=True)

    _, snip = build()
    no_reinit = Snip(snip.net, [], None, [], keep=0.4, layersort=False, reinit=False)
    no_reinit.eligible, no_reinit.block = snip.eligible, snip.block

    def rebuild_pass() -> None:
        net, s = build()  # the trace is part of rebuilding: the copy must be mapped to the units again
        s(x, y)

    def in_place_pass() -> None:
        snip(x, y)

    def snip_only() -> None:
        no_reinit(x, y)

    timings: dict[str, list[float]] = {"rebuild": [], "in place": [], "snip": []}
    for fn in (rebuild_pass, in_place_pass, snip_only):  # warm-up
        fn()
    for r in range(args.repeats):
        order = [("rebuild", rebuild_pass), ("in place", in_place_pass), ("snip", snip_only)]
        for name, fn in order if r % 2 == 0 else reversed(order):
            t = time.perf_counter()
            fn()
            timings[name].append((time.perf_counter() - t) * 1000)
    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"{args.model} at {args.image_size}px, batch {args.batch_size}, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats (medians)")
    for k, v in med.items():
        print(f"  {k:9s} {v:9.1f} ms per batch  (min {min(timings[k]):.1f}, max {max(timings[k]):.1f})")
    print(f"  rebuild / in place: {med['rebuild'] / med['in place']:.2f}x; re-initialisation share of the in-place pass: "
          f"{max(0.0, 1 - med['snip'] / med['in place']):.0%}")


if __name__ == "__main__":
    main()
