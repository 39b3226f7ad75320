#!/usr/bin/env python
"""Are pruned models measurably faster? MACs-targeted against latency-targeted pruning, per runtime, one run.

For each model (default: CIFAR ResNet-56 at 32x32, ResNet-50 and MobileNetV2 at 224;
random weights, since speed does not depend on the values) this script drives the real
commands, in subprocesses, the way a user would:

    prunecli train --epochs 0                                   the dense model
    prunecli prune --method l1 --target-macs F --round-to auto  MACs-targeted, kernel-friendly widths
    prunecli prune --method l1 --target-latency F               latency-targeted (a table is profiled first)
    prunecli compress --no-latency                              both

Then, at each batch size (default 1 and 64), it times side by side, interleaved (dense, MACs-
targeted, latency-targeted, dense, ...), each model in each runtime:

    eager          the modules as compress writes them (what --target-latency was profiled on)
    eager+fold     the same with BatchNorm folded
    torchscript    BatchNorm folded and traced, as `prunecli export` writes it
    onnxruntime    BatchNorm folded, exported to ONNX, in an ONNX Runtime session (when installed)

(prunecli.stages.export.deployed_runtime), contiguous inputs, on the CPU.
``--rounds N`` repeats the interleaved measurement and takes the median of the rounds'
medians. It prints, per model, runtime and batch size:

    MACs x         dense MACs / pruned MACs (the proxy)
    speed-up       dense median latency / pruned median latency (measured)
    ratio          speed-up / MACs x (1.0: the proxy held; HALP's motivation is that it rarely does)
    vs request     latency-targeted only: achieved speed-up / requested speed-up, where the
                   request of removing fraction F of the latency is a 1 / (1 - F) speed-up

and, at the end, the issue's goals with a yes/no each: latency-targeted >= 0.9 x the
requested speed-up on every model, in the runtime the target was profiled in (eager, at
``--target-batch-size``); MACs-targeted with --round-to auto and BatchNorm folded (the
eager+fold rows): speed-up / MACs >= 0.85 on ResNet-50. The latency table's own prediction error
is `prunecli profile`'s report (scripts/bench_latency_table.py).

``--threads 1`` (the default) pins PyTorch's and ONNX Runtime's threads: on a shared
2-core machine that is what gives repeatable medians. The latency-targeted prune profiles
the model at the batch size and threads it is asked for (``--target-batch-size``, default
the largest measured), so its tables are built once per model and cached.

Measured on this project's shared 2-core CPU (torch 2.14.1, onnxruntime 1.32, 1 thread, load
average about 0.8, no GPU lent), F = 0.5, l1, latency tables version 3 (first SIMD block
blended) and HALP's group importance (a coupled unit's channel worth its producers);
ResNet-56 at 32x32 profiled at batch 8 (3 rounds of 10, eager and eager+fold only),
ResNet-50 and MobileNetV2 at 224 profiled at batch 1 (2 rounds of 6; batch 64 at 224 left
out: minutes per timed pass on one thread). Speed-up (ratio to the MACs cut):

    ResNet-56   MACs-targeted (2.33x)    eager b1 1.49x (0.64)  b8 1.55x (0.66)  b64 1.76x (0.75)
                latency-targeted (2.58x) eager b1 1.78x (0.69)  b8 2.09x (0.81; 1.04 of requested)  b64 2.79x (1.08)
    ResNet-50   MACs-targeted (2.18x)    eager b1 2.02x (0.93), folded 2.02x (0.93)  b8 2.04x (0.94), folded 2.06x (0.95)
                                         ONNX Runtime b1 2.14x (0.98)  b8 2.22x (1.02)
                latency-targeted (2.41x) eager b1 2.10x (0.87; 1.05 of requested)  b8 2.10x (0.87)
                                         ONNX Runtime b1 2.10x  b8 2.08x
    MobileNetV2 MACs-targeted (2.02x)    eager b1 1.54x (0.76)  b8 1.74x (0.86); ONNX Runtime b1 1.55x
                latency-targeted (3.68x) eager b1 2.14x (0.58; 1.07 of requested)  b8 2.50x; ONNX Runtime b1 2.11x

Goals: latency-targeted >= 0.9 x requested at the profiled batch: met on all three (1.04,
1.05, 1.07). ResNet-50 MACs-targeted, --round-to auto, folded: 0.93 at batch 1, 0.95 at
batch 8: met. The latency targets were profiled in eager PyTorch; the ONNX Runtime rows
happen to land near 2x too, but only a table profiled with --runtime onnxruntime says so.
Before table version 3 and the group importance (same machine, previous run), the
latency-targeted ResNet-56 cut its MACs 8.9x (its residual streams went to a few channels)
and MobileNetV2 6.9x, overshooting to 1.14 of the request.

    python scripts/bench_speed.py                                # the three models, batch 1 and 64
    python scripts/bench_speed.py --models resnet56 --batch-sizes 1,64 --rounds 3
    python scripts/bench_speed.py --models resnet20 --image-size 16 --batch-sizes 4  # a quick check
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# model -> image size: CIFAR ResNets at 32x32, the ImageNet ones at 224
DEFAULT_MODELS = {"resnet56": 32, "resnet50": 224, "mobilenetv2": 224}


def cli(*args: str, env: dict | None = None) -> str:
    """Run ``prunecli ARGS`` in a subprocess; stdout (the path or the JSON); exit on failure with its stderr."""
    r = subprocess.run([sys.executable, "-m", "prunecli", *map(str, args)], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if r.returncode != 0:
        sys.exit(f"prunecli {' '.join(map(str, args))}: exit {r.returncode}\n{r.stderr}")
    return r.stdout.strip()


def variants(model: str, size: int, workdir: Path, fraction: float, threads: int, target_batch: int) -> dict[str, Path]:
    """Dense, MACs-targeted and latency-targeted checkpoints of ``model`` (the pruned ones compressed)."""
    dense = Path(cli("train", "--model", model, "--dataset", "synthetic", "--image-size", size, "--epochs", 0, "--device", "cpu", "-o", workdir / f"{model}.pt", "--overwrite"))
    common = ("--method", "l1", "--device", "cpu", "--threads", threads, "--overwrite")
    macs = Path(cli("prune", dense, *common, "--target-macs", fraction, "--round-to", "auto", "--latency-batch-size", target_batch, "-o", workdir / f"{model}.macs.masked.pt"))
    lat = Path(cli("prune", dense, *common, "--target-latency", fraction, "--latency-batch-size", target_batch, "-o", workdir / f"{model}.lat.masked.pt"))
    out = {"dense": dense}
    for name, masked in (("macs", macs), ("latency", lat)):
        out[name] = Path(cli("compress", masked, "--no-latency", "-o", workdir / f"{model}.{name}.pt", "--overwrite"))
    return out


def measure(files: dict[str, Path], runtime: str, batch: int, threads: int, rounds: int, repeats: int) -> dict[str, float]:
    """Median over ``rounds`` of the interleaved medians (ms), per variant."""
    from prunecli.metrics.runtimes import measure_runtimes
    from prunecli.stages.checkpoints import load_model
    from prunecli.stages.export import deployed_runtime

    loaded = {k: load_model(p) for k, p in files.items()}
    name, fold = ("eager", True) if runtime == "eager+fold" else (runtime, runtime != "eager")
    runtimes = [deployed_runtime(net, ckpt.model, name, threads=threads, fold_bn=fold)[0] for ckpt, net in loaded.values()]
    spec = next(iter(loaded.values()))[0].model
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    per_round = {k: [] for k in files}
    for _ in range(rounds):
        lats = measure_runtimes(runtimes, shape, batch_size=batch, repeats=repeats, threads=threads, max_seconds=60.0)
        for k, lat in zip(files, lats):
            per_round[k].append(lat.median_ms)
    return {k: statistics.median(v) for k, v in per_round.items()}


def macs_of(path: Path) -> int:
    """MACs of the file's model as rebuilt (ptflops, prunecli.metrics.complexity)."""
    from prunecli.metrics.complexity import count_complexity
    from prunecli.stages.checkpoints import load_model

    ckpt, net = load_model(path)
    return count_complexity(net, (ckpt.model.in_channels, ckpt.model.image_size, ckpt.model.image_size)).macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo names")
    ap.add_argument("--image-size", type=int, default=None, help="one input size for every model (default: 32 for CIFAR ResNets, 224 else)")
    ap.add_argument("--fraction", type=float, default=0.5, help="--target-macs and --target-latency (default 0.5)")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--target-batch-size", type=int, default=None, help="batch size the latency target is profiled at (default: the largest measured)")
    ap.add_argument("--runtimes", default="eager,eager+fold,torchscript,onnxruntime")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workdir", default=None, help="keep the checkpoints here (default: a temporary folder)")
    args = ap.parse_args()

    from prunecli.metrics.runtimes import onnxruntime_available

    batches = [int(b) for b in args.batch_sizes.split(",")]
    runtimes = [r for r in args.runtimes.split(",") if r != "onnxruntime" or onnxruntime_available()]
    torch.set_num_threads(args.threads)
    requested = 1.0 / (1.0 - args.fraction)
    goals: list[tuple[str, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"medians of {args.rounds} rounds of {args.repeats} interleaved runs; requested: remove {args.fraction:.0%} (speed-up {requested:.2f}x)")
        print(f"{'model':<12} {'runtime':<12} {'batch':>5} {'variant':<8} {'ms':>9} {'MACs x':>7} {'speed-up':>9} {'ratio':>6} {'vs request':>10}")
        for model in args.models.split(","):
            size = args.image_size or DEFAULT_MODELS.get(model, 32)
            files = variants(model, size, workdir, args.fraction, args.threads, args.target_batch_size or max(batches))
            macs = {k: macs_of(p) for k, p in files.items()}
            achieved_at_target = []
            for runtime in runtimes:
                for batch in batches:
                    ms = measure(files, runtime, batch, args.threads, args.rounds, args.repeats)
                    for k in ("dense", "macs", "latency"):
                        mx, sp = macs["dense"] / macs[k], ms["dense"] / ms[k]
                        vs = f"{sp / requested:.2f}" if k == "latency" else ""
                        print(f"{model:<12} {runtime:<12} {batch:>5} {k:<8} {ms[k]:>9.2f} {mx:>7.2f} {sp:>9.2f} {sp / mx:>6.2f} {vs:>10}")
                        if k == "latency" and runtime == "eager" and batch == (args.target_batch_size or max(batches)):
                            achieved_at_target.append(sp / requested)
                        if k == "macs" and runtime == "eager+fold" and model == "resnet50":
                            goals.append((f"resnet50 MACs-targeted, round-to auto, folded, eager batch {batch}: speed-up / MACs >= 0.85 ({sp / mx:.2f})", sp / mx >= 0.85))
            if achieved_at_target:
                goals.append((f"{model} latency-targeted, eager at the profiled batch: achieved >= 0.9 x requested ({achieved_at_target[0]:.2f})", achieved_at_target[0] >= 0.9))
    print()
    for text, met in goals:
        print(f"{'met ' if met else 'NOT met'}  {text}")


if __name__ == "__main__":
    main()
