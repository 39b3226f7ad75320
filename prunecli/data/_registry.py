"""Dataset registry: `register_dataset`, `list_datasets`, `get_dataset`, and the specs.

A registered loader is ``fn(*, root, download, image_size, num_classes, seed) ->
DataBundle``; its docstring's first line is what ``prunecli list datasets`` shows.

Two kinds of splits:

* `TensorSplit` -- the whole split as a uint8 N x C x H x W tensor plus int64 labels.
  Used for everything that fits in memory (digits, CIFAR, MNIST, synthetic): batches are
  cut, augmented and normalised on the training device, with no per-image Python work.
* any ``torch.utils.data.Dataset`` yielding (normalised float tensor, label) -- used
  for image folders (ImageNet), read by a DataLoader with worker processes.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from prunecli._registry import Registry

_DATASETS: Registry[Callable[..., "DataBundle"]] = Registry("dataset")
_SHAPES: dict[str, tuple[int, int, Optional[int]]] = {}


def register_dataset(name: str, *, shape: Optional[tuple[int, int, Optional[int]]] = None):
    """Register a loader under ``name`` (names may contain dashes: ``fashion-mnist``).

    ``shape``: (channels, image size, classes) of the data as loaded by default, known
    without reading it (classes None where they depend on the folder): what a recipe
    check needs to build the architecture a stage would train.
    """
    if shape is not None:
        _SHAPES[name] = shape
    return _DATASETS.decorator(name)


def dataset_shape(name: str) -> Optional[tuple[int, int, Optional[int]]]:
    """The declared (channels, image size, classes) of ``name``; None if not declared."""
    _import_families()
    _DATASETS.get(name)  # an unknown name is an error
    return _SHAPES.get(name)


def list_datasets() -> list[str]:
    _import_families()
    return _DATASETS.names()


def dataset_description(name: str) -> str:
    _import_families()
    doc = inspect.getdoc(_DATASETS.get(name)) or ""
    return doc.splitlines()[0] if doc else ""


@dataclass(frozen=True)
class DatasetSpec:
    """What a checkpoint records about its data (plain types only)."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: Optional[str] = None
    # loader arguments needed to get the same data again (e.g. synthetic sizes)
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetSpec":
        return cls(
            name=str(d["name"]),
            num_classes=int(d["num_classes"]),
            in_channels=int(d["in_channels"]),
            image_size=int(d["image_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            root=d.get("root"),
            options=dict(d.get("options") or {}),
        )


@dataclass(frozen=True)
class Augment:
    """Training augmentation applied batch-wise on the device to a `TensorSplit`."""

    crop_padding: int = 0  # random crop of the original size after zero-padding by this many pixels
    hflip: bool = False  # random horizontal flip with probability 0.5


@dataclass
class TensorSplit:
    images: Any  # torch.uint8, N x C x H x W
    labels: Any  # torch.int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DataBundle:
    spec: DatasetSpec
    train: Any  # TensorSplit or torch Dataset
    test: Any  # TensorSplit or torch Dataset
    augment: Augment = field(default_factory=Augment)


def get_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> DataBundle:
    _import_families()
    loader = _DATASETS.get(name)
    return loader(
        root=Path(root) if root is not None else None,
        download=download,
        image_size=image_size,
        num_classes=num_classes,
        seed=seed,
    )


_FAMILIES = ("digits", "synthetic", "cifar", "mnist", "imagefolder")


def _import_families() -> None:
    for fam in _FAMILIES:
        importlib.import_module(f"prunecli.data.{fam}")
