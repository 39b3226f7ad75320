#!/usr/bin/env python
"""Does compress turn fewer MACs into less time? Dense vs compressed latency, side by side.

For each setting (default: ResNet-56 with geomedian 0.4 on CIFAR-sized input, torchvision
ResNet-50 with l1 0.5 on ImageNet-sized input; random initial weights, since speed does
not depend on the values) it runs `prunecli prune` and `prunecli compress` as library
calls, timing both, then measures the dense and the compressed model's latency at each
batch size: forward passes interleaved (dense, compressed, dense, ...), both memory
formats tried, medians reported. It prints

    MACs factor   dense MACs / compressed MACs
    speed-up      dense latency / compressed latency (measured)
    ratio         speed-up / MACs factor (1.0: time fell exactly as much as MACs)

for two ways of running the models: ``eager`` (the nn.Module as prunecli writes it) and
``bn-folded`` (BatchNorm folded into the preceding conv with torch.fx, the usual first
step of deployment; both models treated alike).

On CPU, glibc serves every tensor above 32 MB with a fresh mmap, so at batch 64 each
forward pass pays page faults proportional to the activation size -- which shrinks with
the width, not with width squared like MACs. ``--malloc tuned`` re-runs the benchmark with
MALLOC_MMAP_MAX_=0 (what jemalloc/tcmalloc deployments get anyway) to measure compute
rather than page faults; the default measures plain PyTorch as installed.

    python scripts/bench_compress.py                    # both settings, batch 1 and 64, CPU
    python scripts/bench_compress.py --malloc tuned     # the same without mmap page faults
    python scripts/bench_compress.py --device cuda      # on a GPU
    python scripts/bench_compress.py --settings resnet56 --batch-sizes 64 --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunecli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prunecli.data import DatasetSpec
from prunecli.engine.distributed import resolve_device
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.latency import measure_latencies
from prunecli.models import ModelSpec, build_model
from prunecli.config import CompressConfig, PruneConfig
from prunecli.stages.checkpoints import rebuild_model
from prunecli.stages.compress import compress_checkpoint
from prunecli.stages.prune import prune_checkpoint

SETTINGS = {
    "resnet56": ("resnet56", 32, 10, "geomedian", 0.4),
    "resnet50": ("tv:resnet50", 224, 1000, "l1", 0.5),
}


def fold_bn(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm folded into the preceding conv (torch.fx); the model itself is left as it is."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(model).eval())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--repeats", type=int, default=11, help="timed forward passes per model and memory format")
    ap.add_argument("--max-seconds", type=float, default=90.0, help="time budget per latency measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", choices=("default", "tuned"), default="default", help="tuned: no mmap for large tensors (see above)")
    args = ap.parse_args()
    if args.malloc == "tuned" and os.environ.get("MALLOC_MMAP_MAX_") != "0":
        env = {**os.environ, "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)  # glibc reads these at start-up
    device = resolve_device(args.device)
    print(
        f"bench_compress: device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, "
        f"malloc {args.malloc}, {args.repeats} interleaved runs, medians"
    )
    header = f"{'setting':<24} {'run as':<10} {'batch':>5} {'MACs factor':>11} {'dense ms':>10} {'compressed ms':>13} {'speed-up':>8} {'ratio':>6}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.settings:
            name, size, classes, method, rate = SETTINGS[key]
            spec = ModelSpec(name, 3, classes, size)
            torch.manual_seed(0)
            dense = build_model(spec).eval()
            ds = DatasetSpec("synthetic", classes, 3, size, (0.5,) * 3, (0.25,) * 3, options={"image_size": size, "num_classes": classes})
            src = save_checkpoint(Checkpoint(model=spec, state_dict=dense.state_dict(), dataset=ds), Path(tmp) / f"{key}.pt")
            t0 = time.perf_counter()
            prune_checkpoint(src, PruneConfig(method=method, rate=rate, device=args.device), output=Path(tmp) / f"{key}.m.pt")
            t1 = time.perf_counter()
            rep = compress_checkpoint(Path(tmp) / f"{key}.m.pt", CompressConfig(latency=False), output=Path(tmp) / f"{key}.c.pt")
            t2 = time.perf_counter()
            small = rebuild_model(load_checkpoint(Path(tmp) / f"{key}.c.pt")).eval()
            shape = (3, size, size)
            factor = count_complexity(dense, shape).macs / count_complexity(small, shape).macs
            label = f"{name} {method} {rate}"
            print(f"{label}: prune {t1 - t0:.2f}s, compress {t2 - t1:.2f}s (wall, incl. checkpoint I/O), "
                  f"MACs {rep.macs_before / 1e6:.1f}M -> {rep.macs_after / 1e6:.1f}M, max |diff| {rep.max_abs_diff:.1e}", flush=True)
            variants = {"eager": (dense, small), "bn-folded": (fold_bn(dense), fold_bn(small))}
            for bs in args.batch_sizes:
                for mode, (a, b) in variants.items():
                    d, c = measure_latencies([a, b], shape, batch_size=bs, device=device, repeats=args.repeats, max_seconds=args.max_seconds)
                    speed = d.median_ms / c.median_ms
                    rows.append(
                        f"{label:<24} {mode:<10} {bs:>5} {factor:>11.2f} {d.median_ms:>10.2f} {c.median_ms:>13.2f} {speed:>8.2f} {speed / factor:>6.2f}"
                        f"   ({d.memory_format}/{c.memory_format}, {d.runs} runs)"
                    )
                    print(rows[-1], flush=True)
    print()
    print(header)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
