"""Options of ``prunecli compress``: remove masked channels, check, measure; or compress block by block.

With ``--block-by-block`` compress chooses what to remove itself, one block of the network
at a time (prunecli.stages.block_by_block): the method, the rate, the blocks, the
per-block training and the data it reads are options here too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prunecli.config._base import (
    MAX_BATCH,
    MAX_SEED,
    PANEL_BLOCKS,
    PANEL_DATA,
    PANEL_OUT,
    PANEL_RUN,
    StageConfig,
    allow_nonfinite_option,
    option,
    overwrite_option,
)
from prunecli.config.prune import check_rate
from prunecli.config.train import MAX_EPOCHS
from prunecli.config.methods import canonical_method
from prunecli.errors import OptionError


@dataclass(kw_only=True)
class CompressConfig(StageConfig):
    """``prunecli compress``: physically remove every channel whose output is identically zero."""

    command = "compress"

    block_by_block: bool = option(
        False,
        help="Choose and remove channels one block at a time, each block seeing the already-smaller network (with --method, --rate).",
        panel=PANEL_BLOCKS,
        negatable=False,
    )
    method: Optional[str] = option(None, help="Block by block: a criterion (prunecli list methods) or sensitivity (the Sensitivity Pruner).", panel=PANEL_BLOCKS, flags=("-m",))
    rate: Optional[float] = option(None, help="Block by block: fraction of each block's channels removed, in [0, 1).", panel=PANEL_BLOCKS, flags=("-r",), metavar="R")
    scope: str = option("layerwise", help="Block by block: layerwise (the rate in every layer) or global (one threshold per block).", panel=PANEL_BLOCKS, metavar="layerwise|global")
    units: str = option(
        "auto",
        help="Blocks: auto (ResNet/MobileNetV2 stages, VGG layers, else top-level children), stages, blocks, layers, or GLOB,GLOB,...",
        panel=PANEL_BLOCKS,
        metavar="UNITS",
    )
    # the Sensitivity Pruner (--method sensitivity): its strategy trains this long on each block (the reference: 8)
    unit_epochs: int = option(0, help="Block by block, --method sensitivity: epochs of strategy training per block.", panel=PANEL_BLOCKS, min=0, max=MAX_EPOCHS)
    layersort: bool = option(
        False, help="--method sensitivity: each layer keeps its own top 1 - rate (default: one sort over all filters of the network).", panel=PANEL_BLOCKS, negatable=False
    )
    snip_on: str = option(
        "reinit",
        help="--method sensitivity: SNIP on a freshly re-initialised copy of the starting architecture every batch (reinit, the reference) or on the current network.",
        panel=PANEL_BLOCKS,
        metavar="reinit|current",
    )
    unit_finetune_epochs: int = option(0, help="Block by block: epochs of training after each block's removal.", panel=PANEL_BLOCKS, min=0, max=MAX_EPOCHS)
    # the Sensitivity Pruner's fine-tuning of a unit: SGD lr 1e-3, momentum 0.9, wd 5e-4, x0.1 at half the epochs
    lr: float = option(1e-3, help="Block by block: learning rate of each block's training (x0.1 at half its epochs).", panel=PANEL_BLOCKS, min=0.0, max=1000.0)
    momentum: float = option(0.9, help="Block by block: SGD momentum.", panel=PANEL_BLOCKS, min=0.0, max=1.0)
    weight_decay: float = option(5e-4, help="Block by block: weight decay.", panel=PANEL_BLOCKS, flags=("--wd",), min=0.0, max=1.0)
    steps_per_epoch: Optional[int] = option(None, help="Block by block: cap on training steps per epoch.", panel=PANEL_BLOCKS, min=1)
    calib_batches: int = option(8, help="Block by block: calibration batches for data-driven criteria.", panel=PANEL_BLOCKS, min=1)
    seed: int = option(0, help="Block by block: seed of the per-block training and calibration.", panel=PANEL_BLOCKS, min=0, max=MAX_SEED)
    dataset: Optional[str] = option(None, help="Block by block: dataset for training and top-1 (default: the checkpoint's).", panel=PANEL_DATA)
    data: Optional[str] = option(None, help="Dataset root folder (default: the one the checkpoint records).", panel=PANEL_DATA, path=True)
    workers: int = option(4, help="DataLoader workers for image-folder datasets.", panel=PANEL_DATA, min=0)
    resume: Optional[str] = option(None, help="Continue a killed --block-by-block run at its first unfinished block.", panel=PANEL_BLOCKS, path=True)
    # a long run in parts (and the recipes' smoke runs): the file after N blocks is complete and resumable
    max_blocks: Optional[int] = option(None, help="Block by block: stop after the first N blocks (--resume, with a larger N or none, continues).", panel=PANEL_BLOCKS, min=1)
    # None: 32 for latency (a CPU measurement of ResNet-50 under a minute); 64 for block-by-block training
    batch_size: Optional[int] = option(
        None, help="Batch size of the latency measurement (and of block-by-block training: default 64).", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH
    )
    # None: cpu (the compressed model is what gets deployed; CPU latency is what most users ask
    # about); auto for block-by-block, which trains
    device: Optional[str] = option(None, help="auto, cpu, cuda or cuda:N: where latency is measured (block by block: trains; default auto).", panel=PANEL_RUN)
    # inference form: a folded file refuses training (prunecli.stages.fold), so it is opt-in
    fold_bn: bool = option(
        False,
        help="Fold every BatchNorm that directly follows a conv into it (inference-only: training the result is refused).",
        panel=PANEL_OUT,
        negatable=False,
    )
    latency: bool = option(True, help="Measure latency before and after.", panel=PANEL_RUN)
    repeats: int = option(10, help="Timed batches per model, at most (fewer once the budget is spent or the times are steady).", panel=PANEL_RUN, min=1)
    # the latency was 35 s of a 40 s compress of tv ResNet-50 (batch 32, CPU) with fixed repeats;
    # at least 3 interleaved rounds run whatever the budget, so a slow model can exceed it
    latency_budget: float = option(
        5.0, help="Seconds the latency measurement may take, warm-up included (at least 3 timed batches per model run).", panel=PANEL_RUN, min=0.0, max=3600.0, metavar="SECONDS"
    )
    # a dense file has nothing to remove: writing a copy only drops its optimizer state
    force: bool = option(False, help="Write the output even when nothing is removed (a dense checkpoint).", panel=PANEL_OUT, negatable=False)
    # None: PyTorch's own (all cores); 1 gives steady numbers on a shared machine
    threads: Optional[int] = option(
        None, help="PyTorch threads while timing latency (default: PyTorch's, all cores; 1 is steadier on a shared machine).", panel=PANEL_RUN, min=1, max=1024
    )
    json: bool = option(False, help="Print one JSON object on stdout instead of tables.", panel=PANEL_OUT, negatable=False)
    output: Optional[str] = option(
        None, help="Checkpoint to write (its path is the only thing printed on stdout).", panel=PANEL_OUT, flags=("-o",), path=True
    )
    overwrite: bool = overwrite_option()
    allow_nonfinite: bool = allow_nonfinite_option()

    def validate(self) -> None:
        if self.method is not None:
            self.method = canonical_method(self.method)  # fpgm -> geomedian: lineage records the registered name
        if self.batch_size is None:
            self.batch_size = 64 if self.block_by_block else 32
        if self.device is None:
            self.device = "auto" if self.block_by_block else "cpu"
        super().validate()
        if self.snip_on not in ("reinit", "current"):
            raise OptionError(f"{{snip_on}} {self.snip_on!r}: valid: reinit, current")
        if self.scope not in ("layerwise", "global"):
            raise OptionError(f"{{scope}} {self.scope!r}: valid: layerwise, global")
        if not self.block_by_block:
            given = [k for k in ("method", "rate") if getattr(self, k) is not None]
            if given:
                raise OptionError(f"{{{given[0]}}} chooses what to remove: it needs {{block_by_block}} (or use `prunecli prune`)")
            if self.unit_finetune_epochs:
                raise OptionError("{unit_finetune_epochs} trains after each block: it needs {block_by_block}")
            return
        if self.fold_bn:
            raise OptionError("{fold_bn} folds the finished model: compress block by block first, then `prunecli compress OUT --fold-bn`")
        if self.method is None or self.rate is None:
            raise OptionError("{block_by_block} needs {method} M and {rate} R (the fraction of each block's channels removed)")
        check_rate(self.rate, "rate")
