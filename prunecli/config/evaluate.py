"""Options of ``prunecli evaluate``: accuracy, MACs, params, latency of checkpoints."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from prunecli.config._base import MAX_BATCH, PANEL_DATA, PANEL_OUT, PANEL_RUN, StageConfig, allow_nonfinite_option, option


class Split(str, enum.Enum):
    test = "test"
    train = "train"  # the memorisation test of shuffled labels reports training accuracy


class Runtime(str, enum.Enum):
    eager = "eager"
    torchscript = "torchscript"
    onnxruntime = "onnxruntime"  # the onnx extra: pip install 'prunecli[onnx]'


@dataclass(kw_only=True)
class EvaluateConfig(StageConfig):
    """``prunecli evaluate``: each checkpoint on its test set, side by side."""

    command = "evaluate"

    dataset: Optional[str] = option(None, help="Dataset name (default: each checkpoint's).", panel=PANEL_DATA)
    data: Optional[str] = option(None, help="Dataset root folder (default: the one each checkpoint records).", panel=PANEL_DATA, path=True)
    download: bool = option(False, help="Download CIFAR/MNIST into --data when online.", panel=PANEL_DATA, negatable=False)
    # test: generalisation. train: how well the network fits what it was trained on (with the
    # shuffled labels a checkpoint was trained on, when it was: Zhang et al.'s expressivity test)
    split: Split = option(
        Split.test,
        help="test, or train: the training split without augmentation, with the shuffled labels the checkpoint was trained on (--shuffle-labels).",
        panel=PANEL_DATA,
    )
    batch_size: int = option(64, help="Batch size (also of the latency measurement).", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N.", panel=PANEL_RUN)
    workers: int = option(4, help="DataLoader workers for image-folder datasets.", panel=PANEL_RUN, min=0)
    latency: bool = option(True, help="Measure latency (median of timed batches).", panel=PANEL_RUN)
    # 15 interleaved batches: a stable median on a shared CPU within a few seconds
    repeats: int = option(15, help="Timed batches per model for latency.", panel=PANEL_RUN, min=1)
    # None: PyTorch's own (all cores); 1 gives steady numbers on a shared machine
    threads: Optional[int] = option(
        None, help="PyTorch threads while timing latency (default: PyTorch's, all cores; 1 is steadier on a shared machine).", panel=PANEL_RUN, min=1, max=1024
    )
    # eager: the module as it is (both memory formats tried). torchscript / onnxruntime: what
    # `prunecli export` writes (BatchNorm folded), timed in that runtime on the CPU
    runtime: Runtime = option(
        Runtime.eager,
        help="Runtime latency is measured in: eager, or torchscript / onnxruntime (the exported model, BatchNorm folded, on the CPU).",
        panel=PANEL_RUN,
    )
    layers: bool = option(True, help="Show per-layer widths.", panel=PANEL_OUT)
    allow_nonfinite: bool = allow_nonfinite_option()
    json: bool = option(False, help="Print one JSON object on stdout instead of tables.", panel=PANEL_OUT, negatable=False)
