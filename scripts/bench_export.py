#!/usr/bin/env python
"""What does the inference form buy? Eager vs BatchNorm-folded vs TorchScript vs ONNX Runtime, one run.

For each model (default: CIFAR ResNet-20 and Conv-4 at 32x32, random weights: speed does
not depend on the values) it builds the dense model, prunes it with l1 at ``--rate`` and
compresses it (prunecli.api), writes the compressed checkpoint, and exports it with
`prunecli export`'s own function to TorchScript and, when onnx and onnxruntime are
installed, to ONNX (both BatchNorm-folded and checked against the checkpoint). Then, at
each batch size, it times these side by side, interleaved (A, B, C, ... A, B, C, ...):

    dense eager        the unpruned nn.Module
    eager              the compressed nn.Module as prunecli writes it
    eager, BN folded   the same with BatchNorm folded (prunecli.models.folding)
    torchscript        the exported file, loaded with torch.jit.load
    onnxruntime        the exported file in an ONNX Runtime CPU session

and prints the median and interquartile range of each, and each one's speed-up over the
compressed eager model and over the dense one (with the MACs factor, dense / compressed,
for comparison). Inputs are contiguous NCHW in every runtime.

``--threads 1`` (the default) pins PyTorch's intra-op threads and ONNX Runtime's session
threads to one: on a shared 2-core machine that is what gives repeatable medians.
``--rounds N`` repeats the whole interleaved measurement and reports the median of the
per-round medians (and the spread of the rounds), against bursts of background load.

    python scripts/bench_export.py
    python scripts/bench_export.py --models resnet56 --batch-sizes 1,64 --rounds 5

Measured with the defaults, three separate runs (this project's shared 2-core CPU, no GPU,
torch 2.14.1, onnxruntime 1.32.0, load average about 0.9); speed-up over the compressed
eager model, the range over the three runs:

    ResNet-20 (MACs 3.96x)   batch 1: BN folded 1.20-1.24x, TorchScript 1.74-1.75x, ONNX Runtime 2.57-2.99x
                             batch 32: BN folded 0.92-1.00x, TorchScript 0.98-1.08x, ONNX Runtime 1.89-2.01x
    Conv-4 (no BatchNorm)    batch 1: "folded" 1.03-1.05x, TorchScript 1.06-1.09x, ONNX Runtime 1.79-1.88x
                             batch 32: "folded" 1.00-1.30x, TorchScript 1.03-1.32x, ONNX Runtime 1.68-2.16x

Conv-4 has no BatchNorm, so its "folded" row is an identical copy of the eager model: the
noise floor. At batch 32 two identical models differed by up to 30% within one process,
so eager-vs-folded-vs-TorchScript differences at batch 32 are not resolved here; ONNX
Runtime's lead (about 2x) and, at batch 1, TorchScript's (1.7x) and folding's (1.2x) are.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import torch

import prunecli.api as pc
from prunecli.config.export import ExportConfig
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.runtimes import eager_runtime, measure_runtimes, onnxruntime_available, onnxruntime_runtime, torchscript_runtime
from prunecli.models import example_input
from prunecli.models.folding import fold_batchnorm
from prunecli.stages.export import export_checkpoint


def variants(model: str, rate: float, image_size: int, workdir: Path, threads: int):
    """(name, Runtime) pairs of one model, and the MACs factor of its compression."""
    dense = pc.build(model, image_size=image_size)
    shape = dense.input_shape
    dense_module = copy.deepcopy(dense.module).eval()
    pc.prune(dense, "l1", rate=rate)
    pc.compress(dense)
    ckpt = pc.save(dense, workdir / f"{model}.pt")
    compressed = dense.module.eval()
    folded = copy.deepcopy(compressed)
    n = fold_batchnorm(folded, example_input(dense.spec), name=model)
    macs = count_complexity(dense_module, shape).macs / count_complexity(compressed, shape).macs
    out = [("dense eager", eager_runtime(dense_module)), ("eager", eager_runtime(compressed)), (f"eager, BN folded ({n})", eager_runtime(folded))]
    ts = export_checkpoint(ckpt, ExportConfig(format="torchscript", output=str(workdir / f"{model}.ts.pt"), overwrite=True))
    out.append(("torchscript", torchscript_runtime(ts.output)))
    if onnxruntime_available():
        ox = export_checkpoint(ckpt, ExportConfig(format="onnx", output=str(workdir / f"{model}.onnx"), overwrite=True))
        out.append(("onnxruntime", onnxruntime_runtime(ox.output, threads=threads)))
    else:
        print(f"{model}: onnxruntime not installed: no ONNX Runtime row (pip install 'prunecli[onnx]')", file=sys.stderr)
    return out, shape, macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--models", default="resnet20,conv4")
    ap.add_argument("--rate", type=float, default=0.5, help="l1 prune rate (fraction of channels removed)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--batch-sizes", default="1,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30, help="interleaved timed batches per runtime and round")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), CPU, contiguous inputs; l1 at {args.rate}; "
        f"{args.image_size}x{args.image_size} input; median of {args.rounds} rounds of {args.repeats} interleaved runs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            runtimes, shape, macs = variants(model, args.rate, args.image_size, Path(tmp), args.threads)
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                rounds = [
                    measure_runtimes([rt for _, rt in runtimes], shape, batch_size=batch, repeats=args.repeats, threads=args.threads, max_seconds=60)
                    for _ in range(args.rounds)
                ]
                medians = [statistics.median(r[i].median_ms for r in rounds) for i in range(len(runtimes))]
                eager, dense = medians[1], medians[0]
                print(f"\n{model}, batch {batch}: MACs factor {macs:.2f}x (dense / compressed)")
                print(f"  {'runtime':26s} {'median ms':>10s} {'rounds min-max':>16s} {'IQR (last round)':>18s} {'vs eager':>9s} {'vs dense':>9s}")
                for i, (name, _) in enumerate(runtimes):
                    per_round = [r[i].median_ms for r in rounds]
                    last = rounds[-1][i]
                    print(
                        f"  {name:26s} {medians[i]:10.3f} {min(per_round):7.3f}-{max(per_round):<8.3f} "
                        f"{last.q1_ms:8.3f}-{last.q3_ms:<9.3f} {eager / medians[i]:8.2f}x {dense / medians[i]:8.2f}x"
                    )


if __name__ == "__main__":
    main()
