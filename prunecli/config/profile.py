"""Options of ``prunecli profile``: measure a checkpoint's latency table (prunecli.metrics.latency_table)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from prunecli.config._base import MAX_BATCH, PANEL_OUT, PANEL_RUN, StageConfig, allow_nonfinite_option, option, overwrite_option


class Runtime(str, enum.Enum):
    """Where the latency is measured (prunecli.metrics.runtimes)."""

    eager = "eager"
    torchscript = "torchscript"
    onnxruntime = "onnxruntime"


def runtime_option():
    return option(Runtime.eager, help="Runtime the latency is measured in: eager PyTorch, TorchScript, ONNX Runtime (CPU).", panel=PANEL_RUN)


def threads_option():
    # None: PyTorch's current count (recorded in the table's key); 1 gives steady numbers on a shared machine
    return option(None, help="Intra-op threads while timing (default: PyTorch's current count; recorded in the table's key).", panel=PANEL_RUN, min=1, max=1024)


@dataclass(kw_only=True)
class ProfileConfig(StageConfig):
    """``prunecli profile``: per-layer latency on a grid of widths, the rest measured, checked on pruned models."""

    command = "profile"

    # cpu: tables are per device, and the CPU is where a pruned CNN's latency is usually wanted
    device: str = option("cpu", help="cpu, cuda or cuda:N: where the latency is measured.", panel=PANEL_RUN)
    # 8: a serving batch; large enough that per-call overhead does not dominate small layers
    batch_size: int = option(8, help="Batch size the latency is measured at (part of the table's key).", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    runtime: Runtime = runtime_option()
    threads: Optional[int] = threads_option()
    # 8 widths per axis: every multiple of 8 of a 64-channel layer (module docstring of latency_table)
    grid: int = option(8, help="Widths measured per axis of each layer (multiples of a power-of-two step, and the full width).", panel=PANEL_RUN, min=2, max=64)
    repeats: int = option(7, help="Timed runs per width (interleaved; the median is kept).", panel=PANEL_RUN, min=1, max=1000)
    check: bool = option(
        True, help="Check the table: prune l1 layer-wise at 0.3 and 0.6 in memory, time them interleaved with the dense model, print predicted vs measured.", panel=PANEL_RUN
    )
    rebuild: bool = option(False, help="Measure again even when the cache holds a table of this key.", panel=PANEL_RUN, negatable=False)
    output: Optional[str] = option(
        None,
        help="Also write the table to FILE (default: only the cache, $PRUNECLI_CACHE_DIR or ~/.cache/prunecli/latency); the table's path is the only thing printed on stdout.",
        panel=PANEL_OUT,
        flags=("-o",),
        path=True,
    )
    overwrite: bool = overwrite_option()
    allow_nonfinite: bool = allow_nonfinite_option()
