"""Latency tables: a model's measured latency as a function of each prunable unit's width.

What ``prunecli profile`` writes and ``prune --target-latency`` / ``--round-to auto`` read.
The table answers two questions:

* ``predict(widths)``: the model's latency (ms, one batch) when each unit (a dependency
  group, named by its root layer) keeps ``widths[root]`` channels;
* ``curve(root)``: the latency as a function of one unit's width, the others whole (what
  the issue asks for: "for every prunable unit, latency as a function of its width").

**Why it is per layer underneath.** A table of "whole-model latency against one unit's
width" cannot predict a model where every unit is pruned: the deltas are not additive. A
conv whose input unit and output unit both lose half their channels costs about 1/4 of
its dense time; the two single-unit deltas each save about 1/2 of it, and summing them
predicts a cost of 0. So the table measures every conv/linear layer in isolation, at its
real input size, batch and runtime, on a small grid of (input width, output width), and
predicts a model as

    rest(s) + sum over layers of L_layer(w_in, w_out),   rest(s) = rest_fixed + (rest_dense - rest_fixed) * s

where ``L_layer`` is read from that layer's grid at its input unit's and its output unit's
widths (`_bracket`: a staircase over SIMD blocks), and ``rest`` is measured directly: the
model timed with every conv/linear replaced by a module returning a ready output
(`without_layers`: BatchNorm, ReLU, residual adds, pooling, Python's calls). Part of the rest scales with
the share s of the conv/linear output activations kept (the element-wise layers run over
them) and part does not (a call's fixed cost per operator): the rest is measured twice,
on the dense model (s = 1) and on a copy pruned l1 layer-wise at 0.5 (s about 0.5), and
the line through the two gives ``rest_fixed``. Layers of identical configuration (kind, kernel, stride,
padding, dilation, groups, input size, widths) are measured once: ResNet-50's 53 convs
are 20-odd configurations. A depthwise conv has one width (its input is its output).

The grid (`grid_widths`): per axis, the multiples of a quantum (the SIMD block, `simd_block`,
16 channels with AVX-512, doubled until at most ``points`` fit) and the width after each,
where the next block starts (64 channels: 1, 16, 17, 32, 33, 48, 49, 64), so the steps
kernels take at every block show up as steps of the table; `step_widths` reads them
(``--round-to auto``). Timing runs with glibc's allocator thresholds pinned (`pin_allocator`).

Timing: every grid point of one configuration is timed interleaved with the others,
``repeats`` times each after warm-up, each repeat starting at the next point in turn;
the table keeps the medians. The end-to-end models (the dense one for ``rest``; the
pruned ones of a check) are timed interleaved the same way (`time_runnables`).

The table is keyed (`table_key`) by device, runtime, batch size, memory format (inputs
contiguous: exported graphs fix theirs at export), intra-op threads, torch version, grid
and a model fingerprint (`fingerprint`: architecture and current widths, not weights, so
every checkpoint of one pruned shape shares it). `profile` caches tables in
``$PRUNECLI_CACHE_DIR`` (default ``$XDG_CACHE_HOME/prunecli/latency``, else
``~/.cache/prunecli/latency``), one file per key, and reuses one only when the whole key
matches: a table of another device, batch size, runtime or model is never reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from prunecli._progress import step_bar
from prunecli.errors import PruneCliError
from prunecli.metrics.latency import Latency, intra_op_threads, load_average, pin_allocator

FORMAT = "prunecli-latency-table"
# 2: block-aware grids (first width of every SIMD block measured, staircase lookup), the rest
# measured on stand-in models, timing with glibc's thresholds pinned: version-1 tables mispredict.
# 3: widths inside the first block blended, not read at the block's cost (`_bracket`): a version-2
# table's calibration was fitted to the old reading
VERSION = 3
RUNTIMES = ("eager", "torchscript", "onnxruntime")
# 8 widths per axis: a 64-channel layer is measured at every multiple of 8 (the SIMD width of
# AVX2 fp32), a conv of two units at 64 points; ResNet-56 profiles in about a minute on 1 CPU thread
GRID_POINTS = 8


# -- what the model is made of


@dataclass
class Layer:
    """One conv or linear layer of the model and the units its widths come from."""

    name: str
    config: str  # key of its `Config`
    in_unit: Optional[str]  # root of the unit that is its input channels (None: fixed, e.g. the image)
    out_unit: Optional[str]  # root of the unit that is its output channels (None: fixed, e.g. the classes)
    in_max: int
    out_max: int
    in_scale: int = 1  # input features per input channel (a linear layer after a flatten of C x H x W)
    out_elems: int = 1  # output positions per channel (H_out * W_out): the activations the rest scales with
    depthwise: bool = False

    def widths(self, widths: dict[str, int], units: dict[str, int]) -> tuple[int, int]:
        """(input, output) width at the unit widths given (units absent: whole)."""
        out_w = widths.get(self.out_unit, units.get(self.out_unit, self.out_max)) if self.out_unit else self.out_max
        if self.depthwise:
            return out_w, out_w
        in_w = widths.get(self.in_unit, units.get(self.in_unit, self.in_max // self.in_scale)) * self.in_scale if self.in_unit else self.in_max
        return in_w, out_w


@dataclass
class Config:
    """A layer configuration measured once for every layer sharing it, on a grid of widths."""

    kind: str  # "conv" or "linear"
    params: dict[str, Any]  # conv: kernel, stride, padding, dilation, groups (0: depthwise), bias, size (input H, W)
    in_max: int
    out_max: int
    in_grid: list[int] = field(default_factory=list)
    out_grid: list[int] = field(default_factory=list)
    ms: list[list[float]] = field(default_factory=list)  # ms[i][j]: in_grid[i] x out_grid[j]; depthwise: ms[0][j]
    block: int = 1  # channels per SIMD block of the kernels (`simd_block`): the latency is flat within one

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.params["groups"] == 0

    def key(self) -> str:
        return json.dumps([self.kind, self.params, self.in_max, self.out_max], sort_keys=True)

    def module(self, cin: int, cout: int) -> tuple[nn.Module, tuple[int, ...]]:
        """A fresh layer of this configuration at (cin, cout) and its input shape without the batch."""
        p = self.params
        if self.kind == "linear":
            return nn.Linear(cin, cout, bias=p["bias"]), (cin,)
        groups = cout if self.depthwise else p["groups"]
        cin = cout if self.depthwise else cin
        conv = nn.Conv2d(cin, cout, p["kernel"], stride=p["stride"], padding=p["padding"], dilation=p["dilation"], groups=groups, bias=p["bias"])
        return conv, (cin, *p["size"])

    def at(self, cin: float, cout: float) -> float:
        """Staircase-aware interpolation of the grid (`_bracket`; clamped to it; depthwise: in the one width)."""
        if self.depthwise:
            return _interp1(self.out_grid, self.ms[0], cout, self.block)
        i0, i1, a = _bracket(self.in_grid, cin, self.block)
        j0, j1, b = _bracket(self.out_grid, cout, self.block)
        m = self.ms
        return (1 - a) * ((1 - b) * m[i0][j0] + b * m[i0][j1]) + a * ((1 - b) * m[i1][j0] + b * m[i1][j1])


def _bracket(grid: list[int], x: float, block: int = 1) -> tuple[int, int, float]:
    """Grid indices (lo, hi) and weight of hi to read width ``x`` from.

    ``block`` > 1: kernels pad channels to whole SIMD blocks, so the latency is a staircase,
    flat over widths (k*block, (k+1)*block] (conv3x3 64->w at 16x16, batch 64, 1 thread,
    AVX-512: 33..48 all 8.7-8.9 ms, 49..64 all 11.5-11.7 ms, 65 14.2 ms). A linear blend
    between grid widths 48 and 64 would put 51 at 9.4 ms; the first width of 51's block (49)
    is measured, so 51 reads it. When the grid is coarser than a block (wide layers), x lies
    between the first widths of two measured blocks and is blended linearly between them
    (the grid's other widths, multiples of the block, end a block and are read only exactly).

    The first block is no staircase: below one block the kernels work on the channels there
    are (conv3x3 w->16 at 32x32, batch 8, 1 thread: w = 1, 4, 8, 12, 16 take 0.11, 0.19,
    0.29, 0.42, 0.58 ms, then 17..32 all 1.0-1.1 ms), so widths there are blended linearly
    between 1 and the block, both measured. Reading them at the block's cost (what version 2
    did) put ResNet-56 pruned l1 0.6-0.8 at +11% to +40%: its 16-channel stage never got faster.
    """
    if x <= grid[0]:
        # below the grid: its narrowest measurement (a kernel call costs at least that much, whatever the width)
        return 0, 0, 0.0
    if x >= grid[-1]:
        return len(grid) - 1, len(grid) - 1, 0.0
    k = bisect_left(grid, x)
    if grid[k] == x:
        return k, k, 0.0
    if block > 1 and x > block:
        starts = [i for i, g in enumerate(grid) if (g - 1) % block == 0 and g > 1]  # first widths of blocks
        below = [i for i in starts if grid[i] < x]
        if below:
            i0 = below[-1]
            if (grid[i0] - 1) // block == (math.ceil(x) - 1) // block:
                return i0, i0, 0.0  # same block: same cost
            above = [i for i in starts if grid[i] > x]
            i1 = above[0] if above else len(grid) - 1
            return i0, i1, (x - grid[i0]) / (grid[i1] - grid[i0])
    lo, hi = grid[k - 1], grid[k]
    return k - 1, k, (x - lo) / (hi - lo)


def _interp1(grid: list[int], values: list[float], x: float, block: int = 1) -> float:
    i0, i1, a = _bracket(grid, x, block)
    return (1 - a) * values[i0] + a * values[i1]


def simd_block(device: str) -> int:
    """Channels per SIMD block of the conv kernels on ``device``: 16 fp32 lanes with AVX-512, 8 with AVX2, else 4 (CUDA: 8)."""
    if not str(device).startswith("cpu"):
        return 8
    cap = str(torch.backends.cpu.get_cpu_capability()).upper()
    return 16 if "AVX512" in cap else 8 if "AVX2" in cap else 4


def grid_widths(channels: int, points: int = GRID_POINTS, multiple: int = 1, block: int = 1) -> list[int]:
    """Widths up to ``channels`` a layer is measured at, ``channels`` itself included.

    ``block`` > 1 (ungrouped layers): every multiple of a quantum (``block`` times a power of
    two, at most ``points`` quanta in ``channels``) and the width after it, where the next
    block starts and the latency steps up (`_bracket`): 64 channels, block 16 -> 1, 16, 17,
    32, 33, 48, 49, 64; at most 2 * ``points`` widths. Otherwise ``points`` multiples of a
    power-of-two quantum (and of ``multiple``).
    """
    if channels <= 1:
        return [max(1, channels)]
    if block > 1 and multiple == 1:
        q = block
        while math.ceil(channels / q) > points:
            q *= 2
        ends = set(range(q, channels + 1, q))
        return sorted(ends | {1} | {e + 1 for e in ends if e + 1 < channels} | {channels})
    quantum = 1 << max(0, int(math.floor(math.log2(channels / points)))) if channels > points else 1
    quantum = math.lcm(quantum, multiple)
    # at most about 2 * points widths: the quantum is the largest power of two with channels / quantum >= points
    return sorted({w for w in range(quantum, channels + 1, quantum)} | {channels})


def fingerprint(model: nn.Module, input_shape: Sequence[int]) -> str:
    """sha256 of the architecture and its current widths: module types, parameter shapes, layer hyper-parameters, input shape.

    Weights are left out: every checkpoint of one architecture at one set of widths (a
    fine-tuned copy, another seed) has the same latency, and shares a table.
    """
    parts: list[Any] = [list(input_shape)]
    for name, m in model.named_modules():
        entry: list[Any] = [name, type(m).__name__]
        for pname, p in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            entry.append([pname, list(p.shape)])
        if isinstance(m, nn.modules.conv._ConvNd):
            entry.append([m.stride, m.padding, m.dilation, m.groups])
        parts.append(entry)
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def table_key(*, fingerprint: str, model: str, device: str, runtime: str, batch_size: int, threads: int, points: int = GRID_POINTS, block: Optional[int] = None) -> dict[str, Any]:
    """What a table is valid for: a cached table is reused only when every entry matches."""
    return {
        "fingerprint": fingerprint,
        "model": model,
        "device": device,
        "runtime": runtime,
        "batch_size": int(batch_size),
        "memory_format": "contiguous",
        "threads": int(threads),
        "torch": torch.__version__,
        "grid": int(points),
        "block": int(block if block is not None else simd_block(device)),
        "version": VERSION,
    }


def cache_dir() -> Path:
    """Where `profile` and `prune --target-latency` keep tables (module docstring)."""
    if os.environ.get("PRUNECLI_CACHE_DIR"):
        return Path(os.environ["PRUNECLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prunecli" / "latency"


def cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / f"{key['model'].replace('/', '_').replace(':', '_')}-{digest}.json"


# -- the table


@dataclass
class LatencyTable:
    key: dict[str, Any]
    layers: list[Layer]
    configs: dict[str, Config]
    units: dict[str, int]  # root -> width the table was measured at (the model's current width)
    unit_grids: dict[str, list[int]]  # root -> the widths its curve is given at
    dense_ms: float  # the whole model, measured end to end
    rest_ms: float  # dense_ms minus the layers' sum at full width
    rest_fixed_ms: float = 0.0  # the part of the rest that does not shrink with the activations (module docstring)
    # calibration (ms = offset + scale * (rest + layers)), fitted on the dense model and the l1-0.5 copy
    # measured end to end: layers timed alone miss what they cost inside the model (caches, calls)
    scale: float = 1.0
    offset_ms: float = 0.0
    check: list[dict[str, Any]] = field(default_factory=list)  # predicted vs measured pruned models (profile)
    path: Optional[Path] = None

    # -- predictions

    def _activation_share(self, widths: dict[str, int]) -> float:
        dense = sum(layer.out_max * layer.out_elems for layer in self.layers)
        if dense <= 0:
            return 1.0
        return sum(layer.widths(widths, self.units)[1] * layer.out_elems for layer in self.layers) / dense

    def layer_ms(self, layer: Layer, widths: dict[str, int]) -> float:
        cin, cout = layer.widths(widths, self.units)
        return self.configs[layer.config].at(cin, cout)

    def predict(self, widths: dict[str, int]) -> float:
        """Latency (ms, one batch) with each unit at ``widths[root]`` channels (absent: whole)."""
        unknown = [u for u in widths if u not in self.units]
        if unknown:
            raise PruneCliError(f"latency table: {unknown[0]!r} is not a unit of {self.key['model']}")
        return self.offset_ms + self.scale * self.raw(widths)

    def raw(self, widths: dict[str, int]) -> float:
        """The prediction before calibration: rest plus the layers' latencies alone (ms)."""
        return self.rest_at(self._activation_share(widths)) + sum(self.layer_ms(layer, widths) for layer in self.layers)

    def rest_at(self, share: float) -> float:
        """The rest (ms) when ``share`` of the dense activations are kept."""
        return self.rest_fixed_ms + (self.rest_ms - self.rest_fixed_ms) * share

    def curve(self, root: str) -> list[tuple[int, float]]:
        """The model's latency against one unit's width (the others whole), at the unit's grid widths."""
        return [(w, self.predict({root: w})) for w in self.unit_grids[root]]

    def step_widths(self, root: str, *, threshold: float = 1.5) -> list[int]:
        """Widths of ``root`` just below which latency steps down: ``--round-to auto`` snaps to these.

        Where going from grid width w to the next one up costs more than ``threshold`` times
        the curve's average cost per channel, w is a step: the widest width that still costs
        the lower level (a kernel-friendly size, e.g. a multiple of 8 where the next width
        starts a new SIMD block). The unit's full width
        is always a step. A curve without steps gives every grid width when the grid holds
        every width, and nothing (keep the planned width) when it is coarse.
        """
        pts = self.curve(root)
        if len(pts) < 2:
            return [w for w, _ in pts]
        ws, ms = [w for w, _ in pts], [m for _, m in pts]
        span = (ms[-1] - ms[0]) / (ws[-1] - ws[0]) if ws[-1] != ws[0] else 0.0
        steps = [ws[-1]]
        for k in range(1, len(ws)):
            slope = (ms[k] - ms[k - 1]) / (ws[k] - ws[k - 1])
            if span > 0 and slope > threshold * span:
                steps.append(ws[k - 1])  # the widest width below the jump: keeping it costs the lower step
        steps = sorted(set(steps))
        if len(steps) >= 2:
            return steps
        # no step seen: on a grid of every width any width is as good as the next; on a coarse grid
        # (block starts and ends) snapping to grid points would move a 16-wide layer's 9 to 16 or 1
        dense = all(b - a == 1 for a, b in zip(ws, ws[1:]))
        return ws if dense else []

    def unit_layers(self, root: str) -> list[Layer]:
        return [layer for layer in self.layers if root in (layer.in_unit, layer.out_unit)]

    # -- files

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "key": self.key,
            "dense_ms": self.dense_ms,
            "rest_ms": self.rest_ms,
            "rest_fixed_ms": self.rest_fixed_ms,
            "scale": self.scale,
            "offset_ms": self.offset_ms,
            "units": self.units,
            "unit_grids": self.unit_grids,
            "layers": [vars(layer) for layer in self.layers],
            "configs": {k: vars(c) for k, c in self.configs.items()},
            "check": self.check,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> "LatencyTable":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise PruneCliError(f"{where}: not a prunecli latency table (write one with `prunecli profile CKPT -o FILE`)")
        if data.get("version") != VERSION:
            raise PruneCliError(f"{where}: latency table version {data.get('version')!r}; this prunecli reads version {VERSION}: profile again")
        try:
            return cls(
                key=dict(data["key"]),
                layers=[Layer(**d) for d in data["layers"]],
                configs={k: Config(**c) for k, c in data["configs"].items()},
                units={str(k): int(v) for k, v in data["units"].items()},
                unit_grids={str(k): [int(x) for x in v] for k, v in data["unit_grids"].items()},
                dense_ms=float(data["dense_ms"]),
                rest_ms=float(data["rest_ms"]),
                rest_fixed_ms=float(data.get("rest_fixed_ms", 0.0)),
                scale=float(data.get("scale", 1.0)),
                offset_ms=float(data.get("offset_ms", 0.0)),
                check=list(data.get("check", [])),
                path=Path(where),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PruneCliError(f"{where}: a damaged latency table ({type(e).__name__}: {e}); profile again") from None


def read_table(path: Path) -> LatencyTable:
    """The table in ``path``; one-line errors for a missing, unreadable or foreign file."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise PruneCliError(f"{path}: cannot read the latency table: {(e.strerror or str(e)).lower()}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise PruneCliError(f"{path}: not a prunecli latency table (not JSON)") from None
    return LatencyTable.from_json(data, str(path))


def check_fingerprint(table: LatencyTable, key: dict[str, Any]) -> None:
    """A table measured on another architecture or other widths is refused: its layers are not this model's."""
    if table.key.get("fingerprint") != key["fingerprint"]:
        raise PruneCliError(
            f"{table.path or 'latency table'}: measured on another model ({table.key.get('model')}, fingerprint "
            f"{str(table.key.get('fingerprint'))[:12]}; this is {key['model']}, {key['fingerprint'][:12]}): profile this checkpoint"
        )


def mismatch(table: LatencyTable, key: dict[str, Any]) -> Optional[str]:
    """The first entry of the key where ``table`` differs from ``key`` ("batch_size 8 != 32"), or None."""
    for k, v in key.items():
        if table.key.get(k) != v:
            return f"{k} {table.key.get(k)} != {v}"
    return None


def cached_table(key: dict[str, Any]) -> Optional[LatencyTable]:
    """The cached table of exactly this key, or None (a damaged or foreign cache file is ignored)."""
    path = cache_path(key)
    if not path.exists():
        return None
    try:
        table = read_table(path)
    except PruneCliError:
        return None
    return table if mismatch(table, key) is None else None


def save_table(table: LatencyTable, path: Path) -> Path:
    from prunecli.outputs import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(table.to_json(), indent=1)
    atomic_write(path, lambda f: f.write(text.encode()))
    table.path = path
    return path


# -- timing


@dataclass
class Runnable:
    """A module and the one input batch it is timed on."""

    module: nn.Module
    input: torch.Tensor


def _callable(r: Runnable, runtime: str, threads: int) -> Callable[[], Any]:
    """``r`` in ``runtime`` as a no-argument call (TorchScript traced, ONNX exported in memory)."""
    m, x = r.module.eval(), r.input
    if runtime == "eager":
        return lambda: m(x)
    if runtime == "torchscript":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(m, x, check_trace=False)
        return lambda: traced(x)
    import io
    import warnings

    from prunecli.metrics.runtimes import onnxruntime_runtime

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), buf, dynamo=False, input_names=["input"], output_names=["output"])
    rt = onnxruntime_runtime(buf.getvalue(), threads=threads)
    return lambda: rt.run(x)


def require_runtime(runtime: str, device: str) -> None:
    """One line for a runtime this machine cannot time: ONNX Runtime missing, or TorchScript/ONNX off the CPU."""
    if runtime not in RUNTIMES:
        raise PruneCliError(f"runtime {runtime!r}: valid: {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime":
        from prunecli.metrics.runtimes import ONNX_EXTRA, onnxruntime_available

        if not onnxruntime_available():
            raise PruneCliError(f"--runtime onnxruntime: ONNX Runtime is not installed: {ONNX_EXTRA}")
    if runtime != "eager" and not str(device).startswith("cpu"):
        raise PruneCliError(f"--runtime {runtime} is timed on the CPU: use --device cpu (or --runtime eager on {device})")


@torch.inference_mode()
def time_runnables(
    runnables: Sequence[Runnable], *, runtime: str = "eager", device: str = "cpu", threads: Optional[int] = None, warmup: int = 2, repeats: int = 7, max_seconds: float = 30.0
) -> list[Latency]:
    """Each runnable timed interleaved (each repeat starting at the next one in turn), medians with their spread."""
    dev = torch.device(device)
    pin_allocator()
    with intra_op_threads(threads) as used:
        load = load_average()
        calls = []
        for r in runnables:
            calls.append(_callable(Runnable(r.module.to(dev), r.input.to(dev)), runtime, used))
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
        for call in calls:
            for _ in range(warmup):
                call()
        sync()
        samples: list[list[float]] = [[] for _ in calls]
        n, started = len(calls), time.perf_counter()
        for rep in range(repeats):
            for i in [(rep + k) % n for k in range(n)]:
                t0 = time.perf_counter()
                calls[i]()
                sync()
                samples[i].append((time.perf_counter() - t0) * 1000.0)
            if rep >= 2 and time.perf_counter() - started > max_seconds:
                break
    out = []
    for runs in samples:
        out.append(Latency.of_runs(runs, memory_format="contiguous", batch_size=int(runnables[0].input.shape[0]), threads=used, device=str(dev), load=load))
    return out


# -- building


@dataclass
class Link:
    """Which unit gives a layer its input or output channels (from the Pruner's dependency groups)."""

    unit: str  # root of the unit
    layer: str  # conv/linear module name
    side: str  # "in" or "out"


def layer_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Each conv2d/linear layer's input and output shape (without the batch) on ``example``."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []

    def hook(name: str):
        def record(mod, inp, out) -> None:  # a forward hook that returned a value would replace the output
            shapes.setdefault(name, (tuple(inp[0].shape[1:]), tuple(out.shape[1:])))

        return record

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return shapes


class _Given(nn.Module):
    """Stands in for a conv/linear layer while the rest is timed: returns a ready tensor of the layer's output shape.

    ``tie``: for TorchScript and ONNX Runtime, the output is the input's first entry expanded to
    the layer's output shape instead. A traced graph must depend on its input (torch.jit.trace
    refuses a model whose output is a constant), and ONNX Runtime would fold every BatchNorm
    and ReLU fed by a constant at session creation, timing a rest of nothing. It costs one
    write of the output (a real tensor: in-place ReLUs write into it), which the layer's own
    timing also holds; the calibration on end-to-end timings absorbs the double count.
    """

    def __init__(self, out: torch.Tensor, tie: bool = False):
        super().__init__()
        self.out = out
        self.tie = tie

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tie:
            return x.reshape(-1)[:1].reshape([1] * self.out.dim()).expand(self.out.shape).contiguous()
        return self.out


def without_layers(model: nn.Module, example: torch.Tensor, *, tie: bool = False) -> nn.Module:
    """A copy of ``model`` whose conv2d/linear layers return ready outputs: timing it times only the rest.

    Why measured this way: the rest used to be the dense model minus the sum of its layers
    timed alone, a small difference of two large, noisy numbers. On conv4 at batch 64 the
    layers' sum came out 37.4 ms against a 35.1 ms model, a rest of -1.9 ms, while the
    ReLUs and max-pools measured 4-6 ms. Outputs of one shape share a (zero) tensor: the
    values do not change the rest's speed and its memory stays one batch per shape. ``tie``:
    stand-ins that depend on the input, for traced runtimes (`_Given`).
    """
    import copy

    shapes = layer_shapes(model, example[:1])
    stand = copy.deepcopy(model)
    ready: dict[tuple[int, ...], torch.Tensor] = {}
    for name, (_, out_shape) in shapes.items():
        shape = (example.shape[0], *out_shape)
        if shape not in ready:
            ready[shape] = torch.zeros(shape, device=example.device, dtype=example.dtype)
        parent_name, _, leaf = name.rpartition(".")
        parent = stand.get_submodule(parent_name) if parent_name else stand
        setattr(parent, leaf, _Given(ready[shape], tie=tie))
    return stand


def describe_layers(
    model: nn.Module, example: torch.Tensor, links: list[Link], units: dict[str, int], points: int = GRID_POINTS, block: int = 1
) -> tuple[list[Layer], dict[str, Config]]:
    """The model's conv/linear layers, their units and their (deduplicated) configurations, grids set, not measured."""
    shapes = layer_shapes(model, example)
    modules = dict(model.named_modules())
    ins = {lk.layer: lk.unit for lk in links if lk.side == "in"}
    outs = {lk.layer: lk.unit for lk in links if lk.side == "out"}
    layers: list[Layer] = []
    configs: dict[str, Config] = {}
    for name, (in_shape, out_shape) in shapes.items():
        m = modules[name]
        if isinstance(m, nn.Linear):
            cfg = Config("linear", {"bias": m.bias is not None}, m.in_features, m.out_features)
            elems = 1
        else:
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            size = list(in_shape[1:])
            cfg = Config(
                "conv",
                {"kernel": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                 "dilation": list(m.dilation), "groups": 0 if depthwise else m.groups, "bias": m.bias is not None, "size": size},
                m.in_channels,
                m.out_channels,
            )
            elems = int(math.prod(out_shape[1:]))
        key = cfg.key()
        if key not in configs:
            g = 1 if cfg.kind == "linear" or cfg.depthwise else cfg.params["groups"]
            cfg.block = block if g == 1 else 1
            cfg.out_grid = grid_widths(cfg.out_max, points, g, cfg.block)
            cfg.in_grid = [cfg.out_max] if cfg.depthwise else grid_widths(cfg.in_max, points, g, cfg.block)
            configs[key] = cfg
        in_unit = ins.get(name)
        in_scale = 1
        if in_unit is not None and cfg.kind == "linear" and units.get(in_unit):
            in_scale = max(1, cfg.in_max // units[in_unit])
        layers.append(Layer(name, key, in_unit, outs.get(name), cfg.in_max, cfg.out_max, in_scale, elems, cfg.kind == "conv" and configs[key].depthwise))
    return layers, configs


def calibrate(table: LatencyTable, points: list[tuple[dict[str, int], float]]) -> None:
    """Fit ``table``'s scale and offset so that its predictions pass through measured (widths, ms) points.

    Why: layers timed alone sum to something else than the model: on ResNet-20 at batch 8 the
    uncalibrated table put an l1-0.6 copy at +66% (small convs cost less in the model than
    alone), on conv4 at batch 64 every copy 7-20% low (a layer's output is written to cold
    memory inside the model, warm alone). The line through the dense model and the l1-0.5
    copy (both timed end to end while the table is built) corrects both; `profile`'s check
    then times other copies (l1 0.3 and 0.6), so it still tests the table. Noise is bounded:
    the scale stays within [0.5, 2]; with fewer than two distinct points only the scale is set.
    """
    raws = [(table.raw(w), ms) for w, ms in points if ms > 0]
    if not raws:
        return
    (p1, m1) = raws[0]
    spread = [(p, m) for p, m in raws[1:] if abs(p - p1) > 0.05 * max(p1, 1e-9)]
    if spread:
        p2, m2 = spread[0]
        scale = (m1 - m2) / (p1 - p2)
        if 0.5 <= scale <= 2.0:
            table.scale, table.offset_ms = scale, m1 - scale * p1
            return
    table.scale, table.offset_ms = (min(2.0, max(0.5, m1 / p1)) if p1 > 0 else 1.0), 0.0


def build_table(
    model: nn.Module,
    example: torch.Tensor,
    links: list[Link],
    units: dict[str, int],
    key: dict[str, Any],
    *,
    repeats: int = 7,
    timer: Callable[..., list[Latency]] = None,
    half: Optional[tuple[nn.Module, dict[str, int]]] = None,
) -> LatencyTable:
    """Measure the table of ``model`` (``example``: one batch at the table's batch size, on its device).

    The rest is timed directly (`without_layers`) on the model and on ``half``: a pruned copy
    of the model and its unit widths, which splits the rest into its fixed and its scaling
    part (module docstring); without it the whole rest scales. ``timer`` is `time_runnables` unless given (tests
    pass a deterministic one).
    """
    timer = timer or time_runnables
    points = int(key.get("grid", GRID_POINTS))
    one = example[:1]
    block = int(key.get("block", 1))
    layers, configs = describe_layers(model, one, links, units, points, block)
    batch = example.shape[0]
    opts = {"runtime": key["runtime"], "device": key["device"], "threads": key["threads"], "repeats": repeats}
    total = sum(len(c.in_grid) * len(c.out_grid) for c in configs.values()) + 1
    with step_bar(f"profiling {len(configs)} layer configurations", total, unit="widths") as bar:
        for c in configs.values():
            pairs = [(i, j) for i in range(len(c.in_grid)) for j in range(len(c.out_grid))]
            runnables = []
            for i, j in pairs:
                module, shape = c.module(c.in_grid[i], c.out_grid[j])
                runnables.append(Runnable(module, torch.randn(batch, *shape)))
            lats = timer(runnables, **opts)
            c.ms = [[0.0] * len(c.out_grid) for _ in c.in_grid]
            for (i, j), lat in zip(pairs, lats):
                c.ms[i][j] = lat.median_ms
            if bar is not None:
                bar.advance(len(pairs))
        models = [model] + ([half[0]] if half is not None else [])
        tie = key["runtime"] != "eager"
        whole = [Runnable(m, example) for m in models] + [Runnable(without_layers(m, example, tie=tie), example) for m in models]
        ends = timer(whole, **{**opts, "repeats": max(2 * repeats, 15)})  # two numbers carry the whole rest: more runs
        dense = ends[0].median_ms
        rests = [lat.median_ms for lat in ends[len(models):]]
        if bar is not None:
            bar.advance(1)
    unit_grids = {}
    for root, channels in units.items():
        mult = 1
        for layer in layers:
            if root in (layer.in_unit, layer.out_unit) and configs[layer.config].kind == "conv" and not layer.depthwise:
                mult = math.lcm(mult, configs[layer.config].params["groups"])
        unit_grids[root] = grid_widths(channels, points, mult, block if mult == 1 else 1)
    table = LatencyTable(key=key, layers=layers, configs=configs, units=dict(units), unit_grids=unit_grids, dense_ms=dense, rest_ms=0.0)
    table.rest_ms = rests[0]
    if half is not None:
        share = table._activation_share(half[1])
        rest_half = rests[1]
        if share < 0.95:
            # the line through (share, rest_half) and (1, rest_ms), read at share 0
            fixed = rest_half - (table.rest_ms - rest_half) * share / (1.0 - share)
            # noise can put the line's intercept outside [0, rest]: a fixed cost is neither negative nor above the whole rest
            table.rest_fixed_ms = min(max(fixed, 0.0), max(table.rest_ms, 0.0))
        calibrate(table, [({}, dense), (half[1], ends[1].median_ms)])
    return table
