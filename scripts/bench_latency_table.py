#!/usr/bin/env python
"""How well does a latency table predict pruned models? Real timing, interleaved, medians.

For each model (default: CIFAR ResNet-20 and ResNet-56 at 32x32; add ``resnet50`` for the
ImageNet ResNet-50, at ``--imagenet-size``, 224 by default, slow on a 2-core CPU) with
random weights (speed does not depend on the values), it measures the latency table
(prunecli.stages.profile.obtain_table: per-layer grids plus the measured rest; always
rebuilt, never read from the cache), prunes copies with l1 layer-wise at each ``--rates``
and compresses them in memory, times the dense and the pruned models interleaved
(``--repeats`` each, medians), and prints predicted vs measured and the error in %.

    python scripts/bench_latency_table.py
    python scripts/bench_latency_table.py --models resnet56,resnet50 --imagenet-size 128 --batch-size 1

Measured on this project's shared 2-core CPU (load average 2.6-4 from other sessions:
IQRs up to 40% of the median, so single numbers move by 10% between runs), eager, 1 thread,
prediction error (predicted - measured) / measured:

    resnet20 32px batch 8   dense -19.9%, l1 0.2 -5.1%, 0.4 -15.3%, 0.6 +45.9%  (table 4 s)
    resnet56 32px batch 8   dense -2.1%,  l1 0.2 -7.9%, 0.4 -10.2%, 0.6 +14.6%  (table 13 s)
    resnet50 112px batch 1  dense -8.9%,  l1 0.3 -2.1%, 0.6 +4.4%               (table 34 s; 224 px not run for time)

Those were table version 1. Version 2 (allocator pinned, block-aware grid, rest timed on
stand-ins, affine calibration on the dense model and an l1-0.5 copy), `prunecli profile
--threads 1 --rebuild`, its check (l1 0.3 and 0.6, points the calibration does not use),
3 runs each, load average 0.9-1.1, error median [range]:

    conv4 digits 16px b64  0.3: -4.0% [-6.8, -2.2]   0.6: -1.0% [-3.5, -0.1]   (profile 18 s; v1: -22..-32%)
    conv4 digits 16px b8   0.3: -0.2% [-1.7, +0.2]   0.6: -0.5% [-1.7, +1.8]   (5 s)
    resnet20 32px b8       0.3: +0.4% [-26.6 noisy run, +4.0]  0.6: +11.4% [-18.3 noisy run, +14.1]  (5 s)
    resnet56 32px b8       0.3: +0.4% [-4.8, +3.0]   0.6: +9.5% [+9.1, +11.6]   (6 s; v1 run here: +17..+82%)

Uncalibrated v2 tables (the layers alone) missed by -7..-39% on conv4 b64 and +28..+66% at
l1 0.6 on the ResNets; resnet50/mobilenetv2 and batch 64 ResNets were not re-run for time.

Version 3 (widths inside the first SIMD block blended between 1 and the block, not read at
the block's cost): ``--rates 0.3,0.6,0.8``, 3 runs, load average 0.7-1.1, error in ms
[fraction error: predicted fraction of the dense latency against the measured one]:

    resnet20 32px b8    0.3: -1.2, -3.4, -2.6% [+1.7, -4.0, -3.5]   0.6: -0.9, +3.9, +3.2% [+2.1, +3.3, +2.2]
                        0.8: +6.1, +14.1, +10.4% [+9.2, +13.5, +9.4]
    resnet56 32px b8    0.3: -5.3, -1.3, -2.4% [-4.7, -4.2, -2.2]   0.6: +0.7, +3.7, +1.6% [+1.2, +0.7, +1.8]
                        0.8: +11.6, +8.9, +7.2% [+12.2, +5.7, +7.5]
    resnet50 224px b1   0.3: +0.6% [-3.7]   0.6: -4.2% [-8.3]   (one run; table 42 s)

0.8 lies beyond the calibration's points (dense, l1 0.5): the layers' sum there still
comes out slow by about a tenth. With v2's reading the same ResNets were at +9..+14% at
0.6 and +24..+41% at 0.8, where the 16-channel stage never got faster.
"""

from __future__ import annotations

import argparse
import time

import torch

from prunecli.metrics import latency_table as lt
from prunecli.models import build_model
from prunecli.models._registry import ModelSpec
from prunecli.stages.profile import _pruned_copy, obtain_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--rates", default="0.2,0.4,0.6")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runtime", default="eager", choices=lt.RUNTIMES)
    ap.add_argument("--grid", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--imagenet-size", type=int, default=224)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    rates = [float(r) for r in args.rates.split(",")]
    for name in args.models.split(","):
        imagenet = name in ("resnet50", "mobilenetv2_imagenet")
        spec = ModelSpec(name=name, num_classes=1000 if imagenet else 10, image_size=args.imagenet_size if imagenet else 32)
        model = build_model(spec).eval()
        t0 = time.perf_counter()
        table, _ = obtain_table(model, spec, device=device, runtime=args.runtime, batch_size=args.batch_size, threads=args.threads, points=args.grid, rebuild=True)
        built = time.perf_counter() - t0
        models, widths = [model], [{}]
        for r in rates:
            m, w = _pruned_copy(model, spec, device, r)
            models.append(m)
            widths.append(w)
        x = torch.randn(args.batch_size, spec.in_channels, spec.image_size, spec.image_size)
        lats = lt.time_runnables([lt.Runnable(m, x) for m in models], runtime=args.runtime, threads=args.threads, repeats=args.repeats, max_seconds=120)
        print(f"{name} {spec.image_size}px, {args.runtime}, batch {args.batch_size}, {args.threads} thread(s): table of {len(table.configs)} configurations "
              f"for {len(table.layers)} layers in {built:.0f} s (rest {table.rest_ms:.2f} ms, fixed part {table.rest_fixed_ms:.2f} ms)")
        # fraction error: the predicted fraction of the dense latency against the measured one (this run's
        # dense median as the reference: the machine's drift since the table was built cancels)
        print(f"  {'model':<18} {'predicted':>10} {'measured':>10} {'IQR':>14} {'error':>7} {'fraction error':>15}")
        dense_pred, dense_meas = table.predict({}), lats[0].median_ms
        for rate, w, lat in zip([0.0, *rates], widths, lats):
            pred = table.predict({k: v for k, v in w.items() if k in table.units})
            label = "dense" if rate == 0 else f"l1 layerwise {rate:g}"
            frac = (pred / dense_pred) / (lat.median_ms / dense_meas) - 1.0
            print(
                f"  {label:<18} {pred:>8.2f}ms {lat.median_ms:>8.2f}ms {lat.q1_ms:>6.2f}-{lat.q3_ms:<6.2f} {(pred - lat.median_ms) / lat.median_ms:>+7.1%}"
                f" {'-' if rate == 0 else format(frac, '+.1%'):>15}"
            )


if __name__ == "__main__":
    main()
