"""Options of ``prunecli compress``: remove masked channels, check, measure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prunecli.config._base import MAX_BATCH, PANEL_OUT, PANEL_RUN, StageConfig, allow_nonfinite_option, option, overwrite_option


@dataclass(kw_only=True)
class CompressConfig(StageConfig):
    """``prunecli compress``: physically remove every channel whose output is identically zero."""

    command = "compress"

    # latency of one batch; 32 keeps a CPU measurement of ResNet-50 under a minute
    batch_size: int = option(32, help="Batch size of the latency measurement.", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    # the compressed model is what gets deployed; CPU latency is what most users ask about
    device: str = option("cpu", help="auto, cpu, cuda or cuda:N: where latency is measured.", panel=PANEL_RUN)
    latency: bool = option(True, help="Measure latency before and after.", panel=PANEL_RUN)
    repeats: int = option(10, help="Timed batches per model.", panel=PANEL_RUN, min=1)
    json: bool = option(False, help="Print one JSON object on stdout instead of tables.", panel=PANEL_OUT, negatable=False)
    output: Optional[str] = option(
        None, help="Checkpoint to write (its path is the only thing printed on stdout).", panel=PANEL_OUT, flags=("-o",), path=True
    )
    overwrite: bool = overwrite_option()
    allow_nonfinite: bool = allow_nonfinite_option()
