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

``--mode path`` asks another question: what does prunecli's own pruning path cost next to
bare Torch-Pruning making the same network? For ResNet-20/56 (CIFAR, 32x32), torchvision
ResNet-50/152 and DenseNet-121 (224x224), l1 at ``--rate`` (0.5) layer-wise, it times,
in one warm process, each path from a model (or its file) to the pruned network:

    tp                bare Torch-Pruning: MagnitudePruner(L1, layer-wise, the same rate,
                      the last layer ignored as prunecli leaves it) + step() on the
                      model in memory -- what a script using Torch-Pruning writes
    api               prunecli.api.prune + compress on the same model in memory: the fair
                      "prune + compress" comparison (same input, same output, plus the
                      masks, lineage, MAC counts and the masked == compressed check)
    stages            prune_checkpoint + compress_checkpoint (latency off), file to file:
                      the two commands without start-up, checkpoint load and save included
    prune --compress  prune_checkpoint(compress=True): the one command that does both

Model copies are made outside the timed region; each path runs once untimed first
(in process means warm), then ``--repeats`` (5) times interleaved, each repeat starting
at the next path; medians and the ratio to ``tp`` are printed. The networks must be
structurally identical (every state-dict shape equal to Torch-Pruning's, for the API's
module and for the files rebuilt), or the script stops. One more run of ``api`` and
``stages`` is timed per phase (the functions in PHASES, each phase's time excluding the
phases it calls; "other" is the rest). ``--threads 1`` gives steadier numbers on a
shared machine.

    python scripts/bench_compress.py --mode path --threads 1
    python scripts/bench_compress.py --mode path --models resnet20 resnet56 --repeats 9
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
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
    ap.add_argument("--mode", choices=("latency", "path"), default="latency", help="path: prunecli's prune + compress against bare Torch-Pruning")
    ap.add_argument("--models", nargs="+", default=list(PATH_SETTINGS), choices=list(PATH_SETTINGS), help="--mode path: the models")
    ap.add_argument("--rate", type=float, default=0.5, help="--mode path: the l1 rate")
    ap.add_argument("--threads", type=int, default=None, help="--mode path: PyTorch threads (default: PyTorch's; 1 is steadier on a shared machine)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--repeats", type=int, default=None, help="timed forward passes per model and memory format (default 11); --mode path: runs of each path (default 5)")
    ap.add_argument("--max-seconds", type=float, default=90.0, help="time budget per latency measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", choices=("default", "tuned"), default="default", help="tuned: no mmap for large tensors (see above)")
    args = ap.parse_args()
    if args.mode == "path":
        args.repeats = args.repeats or 5
        path_main(args)
        return
    args.repeats = args.repeats or 11
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


# ---------------------------------------------------------------------------- --mode path

PATH_SETTINGS = {
    "resnet20": ("resnet20", 32, 10),
    "resnet56": ("resnet56", 32, 10),
    "resnet50": ("tv:resnet50", 224, 1000),
    "resnet152": ("tv:resnet152", 224, 1000),
    "densenet121": ("tv:densenet121", 224, 1000),
}

# prunecli's functions the breakdown times; each phase's time excludes the phases it calls
PHASES = (
    ("load", "prunecli.checkpoint", "load_checkpoint"),
    ("rebuild", "prunecli.models.build", "rebuild"),
    ("trace", "prunecli.models.structure", "trace"),
    ("groups", "prunecli.surgery.units", "units"),
    ("scores", "prunecli.surgery.pruner", "Pruner._channel_scores"),
    ("entry tracking", "prunecli.surgery.tracking", "prune_tracking_entries"),
    ("removal (TP)", "prunecli.surgery.removal", "apply_plan"),
    ("runs check", "prunecli.surgery.removal", "check_runs"),
    ("probe", "prunecli.surgery.equivalence", "outputs"),
    ("probe + count", "prunecli.metrics.complexity", "run_counted"),
    ("complexity", "prunecli.metrics.complexity", "count_complexity"),
    ("copy + put back", "prunecli.surgery.tracking", "removed_copy"),
    ("zero channels", "prunecli.surgery.pruner", "Pruner.plan_zeroed"),
    ("deepcopy", "copy", "deepcopy"),
    ("lineage hash", "prunecli.checkpoint", "sha256_file"),
    ("save", "prunecli.checkpoint", "save_checkpoint"),
)


class PhaseTimer:
    """Exclusive wall time per phase: the functions in PHASES wrapped while the block runs."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.stack: list[list] = []
        self.patched: list[tuple[object, str, object]] = []

    def wrap(self, phase: str, fn):
        timer = self

        def timed(*args, **kwargs):
            frame = [time.perf_counter(), 0.0]
            timer.stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                timer.stack.pop()
                elapsed = time.perf_counter() - frame[0]
                timer.times[phase] = timer.times.get(phase, 0.0) + elapsed - frame[1]
                if timer.stack:
                    timer.stack[-1][1] += elapsed

        return timed

    def __enter__(self):
        import importlib

        for phase, module, attr in PHASES:
            mod = importlib.import_module(module)
            if "." in attr:  # a method: patch the class
                cls_name, meth = attr.split(".")
                owner = getattr(mod, cls_name)
                fn = owner.__dict__[meth]
                self.patched.append((owner, meth, fn))
                setattr(owner, meth, self.wrap(phase, fn))
                continue
            fn = getattr(mod, attr)
            wrapped = self.wrap(phase, fn)
            # `from module import fn` binds the name elsewhere too: patch every binding
            for m in [mod, *[m for n, m in list(sys.modules.items()) if n.startswith("prunecli") and m is not None]]:
                if getattr(m, attr, None) is fn:
                    self.patched.append((m, attr, fn))
                    setattr(m, attr, wrapped)
        return self

    def __exit__(self, *exc):
        for owner, attr, fn in reversed(self.patched):
            setattr(owner, attr, fn)
        self.patched.clear()




def tp_prune(model: torch.nn.Module, size: int, rate: float, ignored: list) -> torch.nn.Module:
    """Bare Torch-Pruning: L1 magnitude, layer-wise, one step (what a script using it writes)."""
    import torch_pruning as tp

    from prunecli.models.structure import _torch_pruning_pruners

    pruner = tp.pruner.MagnitudePruner(
        model,
        torch.zeros(1, 3, size, size),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=rate,
        global_pruning=False,
        ignored_layers=ignored,
        # the CIFAR ResNets' option-A shortcut is a prunecli layer: Torch-Pruning needs its pruning function
        customized_pruners=_torch_pruning_pruners(),
    )
    pruner.step()
    return model


# the copies made outside the timed region: bound here, so the phase timer's patch of
# copy.deepcopy (a phase inside prunecli) does not count them
_untimed_copy = copy.deepcopy


def shapes(model: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def path_main(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    import prunecli.api as pc
    from prunecli.surgery.units import output_layer

    print(
        f"bench_compress --mode path: l1 {args.rate} layer-wise, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{args.repeats} interleaved repeats, medians (s)"
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            name, size, classes = PATH_SETTINGS[key]
            torch.manual_seed(0)
            net0 = pc.build(name, num_classes=classes, image_size=size)
            src = pc.save(net0, Path(tmp) / f"{key}.pt")
            base = net0.module
            # the layer that runs last: prunecli leaves it whole, Torch-Pruning is told to ignore it
            last = output_layer(base, torch.zeros(1, 3, size, size))
            masked_path, out_path, one_path = (Path(tmp) / f"{key}.{s}.pt" for s in ("m", "c", "pc"))

            def run_tp():
                model = _untimed_copy(base)
                t0 = time.perf_counter()
                tp_prune(model, size, args.rate, [model.get_submodule(last)])
                return time.perf_counter() - t0, model

            def run_api():
                net = pc.Network(_untimed_copy(base), net0.checkpoint)
                t0 = time.perf_counter()
                pc.prune(net, "l1", rate=args.rate)
                pc.compress(net)
                return time.perf_counter() - t0, net.module

            def run_stages():
                t0 = time.perf_counter()
                prune_checkpoint(src, PruneConfig(method="l1", rate=args.rate, device="cpu", overwrite=True), output=masked_path)
                compress_checkpoint(masked_path, CompressConfig(latency=False, overwrite=True), output=out_path)
                return time.perf_counter() - t0, None

            def run_one():
                t0 = time.perf_counter()
                prune_checkpoint(src, PruneConfig(method="l1", rate=args.rate, device="cpu", compress=True, overwrite=True), output=one_path)
                return time.perf_counter() - t0, None

            paths = {"tp": run_tp, "api": run_api, "stages": run_stages, "prune --compress": run_one}
            times: dict[str, list[float]] = {k: [] for k in paths}
            order = list(paths)
            for k in order:  # in process means warm: the first call pays imports and first-touch allocations
                paths[k]()
            for r in range(args.repeats):
                for k in order[r % len(order):] + order[: r % len(order)]:  # each repeat starts at the next path
                    seconds, model = paths[k]()
                    times[k].append(seconds)
                    if r == 0 and k == "tp":
                        want = shapes(model)
                    elif r == 0 and k == "api":
                        assert shapes(model) == want, f"{key}: prunecli's API and Torch-Pruning disagree on shapes"
            for p in (out_path, one_path):
                got = shapes(rebuild_model(load_checkpoint(p)))
                assert got == want, f"{key}: {p.name} and Torch-Pruning disagree on shapes"
            med = {k: statistics.median(v) for k, v in times.items()}
            line = f"{key:<12}" + "".join(f" {k} {med[k]:.3f}" + (f" ({med[k] / med['tp']:.1f}x)" if k != "tp" else "") for k in paths)
            print(line, flush=True)
            breakdown = {}
            for k in ("api", "stages"):
                with PhaseTimer() as pt:
                    total = paths[k]()[0]
                pt.times["other"] = total - sum(pt.times.values())
                breakdown[k] = (total, pt.times)
                parts = ", ".join(f"{p} {s:.3f}" for p, s in sorted(pt.times.items(), key=lambda kv: -kv[1]) if s >= 0.0005)
                print(f"    {k} phases (one run, {total:.3f} s): {parts}", flush=True)
            results.append((key, med, breakdown))
    print()
    print(f"{'model':<12} {'tp s':>7} {'api s':>7} {'x tp':>5} {'stages s':>9} {'x tp':>5} {'prune --compress s':>19} {'x tp':>5}")
    for key, med, _ in results:
        print(
            f"{key:<12} {med['tp']:>7.3f} {med['api']:>7.3f} {med['api'] / med['tp']:>5.1f} {med['stages']:>9.3f} "
            f"{med['stages'] / med['tp']:>5.1f} {med['prune --compress']:>19.3f} {med['prune --compress'] / med['tp']:>5.1f}"
        )


if __name__ == "__main__":
    main()
