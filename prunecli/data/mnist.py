"""MNIST and Fashion-MNIST from torchvision's on-disk format (idx files).

Layout (what ``torchvision.datasets.MNIST/FashionMNIST(root, download=True)`` leaves)::

    <root>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
                      t10k-images-idx3-ubyte,  t10k-labels-idx1-ubyte}
    <root>/FashionMNIST/raw/...   (same names)

``--data`` may name ``<root>``, ``<root>/MNIST`` or the ``raw`` folder itself; a file may
also be gzipped (``...-ubyte.gz``, as distributed). The idx files are parsed here -- a
16-byte header for images (magic 2051, then N, rows, cols as big-endian uint32), 8 bytes
for labels (magic 2049, then N) -- so that a truncated file is reported by name instead of
surfacing as a numpy or torch error. torchvision is used only to download.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from prunecli.data._registry import Augment, DataBundle, DatasetSpec, TensorSplit, register_dataset
from prunecli.data.cifar import resize_images, resolve_root
from prunecli.errors import PruneCliError

_NATIVE_SIZE = 28
_NUM_CLASSES = 10
_IDX_UBYTE = 0x08  # idx type code for unsigned bytes: the only one MNIST uses
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class _Variant:
    name: str
    folder: str  # torchvision's class name, which is also its folder name
    mean: tuple[float, ...]
    std: tuple[float, ...]


_VARIANTS = {
    "mnist": _Variant("mnist", "MNIST", mean=(0.1307,), std=(0.3081,)),
    "fashion-mnist": _Variant("fashion-mnist", "FashionMNIST", mean=(0.2860,), std=(0.3530,)),
}


@register_dataset("mnist", shape=(1, 28, 10))
def mnist(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """MNIST handwritten digits from --data DIR in torchvision's format (1x28x28, 10 classes, 60000 / 10000)."""
    return _load_mnist(_VARIANTS["mnist"], root, download, image_size, num_classes)


@register_dataset("fashion-mnist", shape=(1, 28, 10))
def fashion_mnist(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """Fashion-MNIST from --data DIR in torchvision's format (1x28x28, 10 classes, 60000 / 10000)."""
    return _load_mnist(_VARIANTS["fashion-mnist"], root, download, image_size, num_classes)


def _load_mnist(v: _Variant, root, download: bool, image_size, num_classes) -> DataBundle:
    if num_classes not in (None, _NUM_CLASSES):
        raise PruneCliError(f"{v.name} has {_NUM_CLASSES} classes, not {num_classes}")
    root = resolve_root(root)
    raw = _find_raw_folder(v, root)
    if raw is None and download:
        _download(v, root)
        raw = _find_raw_folder(v, root)
    if raw is None:
        missing = root / v.folder / "raw" / _SPLIT_FILES["train"][0]
        raise PruneCliError(f"{v.name} not found: looked for {missing} (pass --data DIR, or --download when online)")

    train, test = _read_split(v, raw, "train"), _read_split(v, raw, "test")
    size = image_size or _NATIVE_SIZE
    if size != _NATIVE_SIZE:
        train.images, test.images = resize_images(train.images, size), resize_images(test.images, size)
    spec = DatasetSpec(
        name=v.name,
        num_classes=_NUM_CLASSES,
        in_channels=1,
        image_size=size,
        mean=v.mean,
        std=v.std,
        root=str(root),
    )
    # no augmentation: flips change what a digit means and the papers train without crops
    return DataBundle(spec=spec, train=train, test=test, augment=Augment())


def _idx_file(folder: Path, name: str) -> Optional[Path]:
    """``folder/name``, or its gzipped form, whichever exists."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_raw_folder(v: _Variant, root: Path) -> Optional[Path]:
    for candidate in (root / v.folder / "raw", root / "raw", root):
        if _idx_file(candidate, _SPLIT_FILES["train"][0]) is not None:
            return candidate
    return None


def _read_split(v: _Variant, raw: Path, split: str) -> TensorSplit:
    image_name, label_name = _SPLIT_FILES[split]
    paths = []
    for name in (image_name, label_name):
        path = _idx_file(raw, name)
        if path is None:
            raise PruneCliError(
                f"{v.name} is incomplete: looked for {raw / name} (pass --data DIR, or --download when online)"
            )
        paths.append(path)
    images = read_idx(paths[0], ndim=3)
    labels = read_idx(paths[1], ndim=1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise PruneCliError(f"{paths[0]} holds {images.shape[0]} images but {paths[1]} holds {labels.shape[0]} labels")
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise PruneCliError(f"{paths[1]}: labels must lie in [0, {_NUM_CLASSES - 1}], found {labels.max()}")
    return TensorSplit(images=torch.from_numpy(images).unsqueeze(1).contiguous(), labels=torch.from_numpy(labels))


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An unsigned-byte idx file (optionally gzipped) as a uint8 array with ``ndim`` dimensions."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                blob = f.read()
        else:
            blob = path.read_bytes()
    except (OSError, EOFError) as e:  # gzip's BadGzipFile is an OSError
        raise PruneCliError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from e

    header = 4 + 4 * ndim
    expected_magic = (_IDX_UBYTE << 8) | ndim  # 2049 for labels, 2051 for images
    if len(blob) < header:
        raise PruneCliError(f"{path} is truncated: {len(blob)} bytes, shorter than an idx header")
    magic = int.from_bytes(blob[:4], "big")
    if magic != expected_magic:
        raise PruneCliError(
            f"{path} is not an idx file of {ndim}-D unsigned bytes (magic {magic}, expected {expected_magic})"
        )
    dims = tuple(int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    payload = len(blob) - header
    needed = int(np.prod(dims, dtype=np.int64))
    if payload != needed:
        what = "truncated" if payload < needed else "longer than its header says"
        shape = " x ".join(map(str, dims))
        raise PruneCliError(f"{path} is {what}: header says {shape} = {needed} bytes, found {payload}")
    if ndim == 3 and dims[1:] != (_NATIVE_SIZE, _NATIVE_SIZE):
        raise PruneCliError(f"{path} holds {dims[1]}x{dims[2]} images, not {_NATIVE_SIZE}x{_NATIVE_SIZE}")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims).copy()


def _download(v: _Variant, root: Path) -> None:
    """Fetch the official files with torchvision, then read them with our reader."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, v.folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network, disk or checksum failure: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PruneCliError(f"could not download {v.name} into {root}: {first}") from e
