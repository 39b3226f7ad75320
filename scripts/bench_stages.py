#!/usr/bin/env python
"""Wall time of `prunecli prune` and `prunecli compress`, this checkout against another one.

Everything runs on the CPU. Each measurement is a fresh Python process that imports one checkout's prunecli, writes a
random-init base checkpoint with its own `train --epochs 0` (so each version reads its own
checkpoint format), runs prune + compress once to warm up, then times ``--repeats``
in-process CLI calls (`prunecli.cli.app.main`, the same code a shell call runs, without the
interpreter and torch start-up). Processes for the two checkouts alternate (A B A B ...),
and the medians of the per-process medians are compared:

    ratio = other / this   (> 1.0: this checkout is faster)

    git worktree add /tmp/prunecli-old <commit>
    python scripts/bench_stages.py --against /tmp/prunecli-old
    python scripts/bench_stages.py --settings resnet56 --rounds 6

Without --against it times this checkout alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

SETTINGS = {  # name: (train options, prune options)
    "resnet56": (["--model", "resnet56", "--dataset", "synthetic", "--image-size", "32"], ["--method", "geomedian", "--rate", "0.4"]),
    "resnet50": (
        ["--model", "tv:resnet50", "--dataset", "synthetic", "--image-size", "224", "--num-classes", "1000"],
        ["--method", "l1", "--rate", "0.5"],
    ),
}

WORKER = r"""
import contextlib, io, json, statistics, sys, time
from prunecli.cli.app import main

def run(*args):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"prunecli {args[0]} exited with {e.code}")

folder, train_args, prune_args, repeats = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
base, masked, small = f"{folder}/base.pt", f"{folder}/m.pt", f"{folder}/c.pt"
run("train", *train_args, "--epochs", "0", "--device", "cpu", "-o", base)
times = {"prune": [], "compress": []}
for i in range(repeats + 1):  # the first round warms up
    t0 = time.perf_counter()
    run("prune", base, *prune_args, "-o", masked)
    t1 = time.perf_counter()
    run("compress", masked, "--no-latency", "-o", small)
    t2 = time.perf_counter()
    if i:
        times["prune"].append(t1 - t0)
        times["compress"].append(t2 - t1)
print(json.dumps({k: statistics.median(v) for k, v in times.items()}))
"""


def measure(root: Path, setting: str, repeats: int) -> dict[str, float]:
    train_args, prune_args = SETTINGS[setting]
    # CPU for both (older checkouts' prune has no --device): hide any GPU
    env = {**os.environ, "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", WORKER, tmp, json.dumps(train_args), json.dumps(prune_args), str(repeats)],
            env=env,
            capture_output=True,
            text=True,
            cwd=tmp,
        )
    if proc.returncode != 0:
        raise SystemExit(f"{root}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, help="another prunecli checkout (its root folder)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=4, help="processes per checkout (alternating)")
    ap.add_argument("--repeats", type=int, default=3, help="timed prune + compress calls per process")
    args = ap.parse_args()
    roots = {"this": HERE} | ({"other": args.against.resolve()} if args.against else {})
    print(f"bench_stages: {', '.join(f'{k} = {v}' for k, v in roots.items())}; {args.rounds} alternating processes x {args.repeats} timed calls, medians")
    for setting in args.settings:
        results: dict[str, dict[str, list[float]]] = {k: {"prune": [], "compress": []} for k in roots}
        for r in range(args.rounds):
            order = list(roots) if r % 2 == 0 else list(reversed(roots))
            for k in order:
                for stage, t in measure(roots[k], setting, args.repeats).items():
                    results[k][stage].append(t)
        for stage in ("prune", "compress"):
            this = statistics.median(results["this"][stage])
            line = f"{setting:<9} {stage:<9} this {this:6.3f} s (min {min(results['this'][stage]):.3f})"
            if "other" in results:
                other = statistics.median(results["other"][stage])
                line += f"   other {other:6.3f} s (min {min(results['other'][stage]):.3f})   ratio other/this {other / this:5.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
