"""Typed training options shared by `train` and `finetune`; defaults carry their reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "multistep", "cosine")


@dataclass
class TrainConfig:
    # -- what to train on
    model: str = "conv4"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"  # the embedded offline default
    data: Optional[str] = None  # dataset root folder (CIFAR, MNIST, image folders)
    download: bool = False
    image_size: Optional[int] = None  # None: the dataset's native size
    num_classes: Optional[int] = None  # synthetic only; real datasets know their classes

    # -- optimisation: SGD with momentum 0.9 and wd 1e-4 as in the papers' CIFAR recipes, but
    # lr 0.01: networks without BatchNorm (conv2-8, lenet) diverge at the papers' 0.1 from
    # He-normal init; paper recipes set their own lr.
    epochs: int = 15
    batch_size: int = 128  # global batch: split across processes under torchrun
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # per-iteration cosine decay to 0 over the run
    step_size: int = 30  # epochs between decays for `step`
    milestones: list[int] = field(default_factory=list)  # `multistep` epochs; empty: 50% and 75% of the run
    gamma: float = 0.1  # decay factor of `step` / `multistep`
    warmup_epochs: float = 0.0  # linear warm-up from lr/steps to lr
    label_smoothing: float = 0.0

    # -- runtime
    device: str = "auto"
    amp: Optional[bool] = None  # None: on for CUDA (bf16 where supported), off on CPU
    channels_last: Optional[bool] = None  # None: on for CUDA, off on CPU
    workers: int = 4  # DataLoader workers for folder datasets (in-memory data needs none)
    seed: int = 0
    shuffle_labels: bool = False  # train on randomly permuted labels (Zhang et al. expressivity test)
    eval_every: int = 1  # epochs between test-set evaluations (the last epoch is always evaluated)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def resolved_milestones(self) -> list[int]:
        return list(self.milestones) or [int(self.epochs * 0.5), int(self.epochs * 0.75)]
