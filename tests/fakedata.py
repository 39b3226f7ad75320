"""Write tiny datasets in the real on-disk formats, for tests (no pytest, no network).

Every writer returns the folder to pass as ``--data`` and is deterministic in ``seed``.
The images carry a class-dependent signal (a class colour, or for MNIST a class-specific
bright band), so a few training steps can learn them:

* `write_cifar10` / `write_cifar100` -- torchvision's pickle batches. By default they are
  byte-for-byte in the style of the official archive: Python 2 pickles (protocol 2, byte
  string keys and data, ``numpy.core.multiarray._reconstruct``); ``pickle_protocol=N``
  writes Python 3 pickles instead (bytes keys, as re-saved data would have).
* `write_mnist` -- idx files (magic 2051 / 2049, big-endian dimensions), optionally gzipped.
* `write_imagefolder` -- ``train/<class>/`` and ``val/<class>/`` with PNG and JPEG files,
  a couple of them grayscale.
"""

from __future__ import annotations

import colorsys
import gzip as _gzip
import pickle
import struct
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

CIFAR_SIZE = 32
MNIST_SIZE = 28


# --------------------------------------------------------------------------- CIFAR


def write_cifar10(
    root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0, pickle_protocol: Optional[int] = None
) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``; returns ``root``.

    The ``n_train`` images are spread over the five batches in order (data_batch_1 first).
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = _balanced_labels(n_train, 10, rng)
    for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        labels = train_labels[part]
        batch = {
            "batch_label": f"training batch {i} of 5",
            "labels": [int(v) for v in labels],
            "data": cifar_rows(labels, 10, rng),
            "filenames": [f"fake_{i}_{j}.png" for j in range(len(labels))],
        }
        _write_pickle(folder / f"data_batch_{i}", batch, pickle_protocol)
    labels = _balanced_labels(n_test, 10, rng)
    test = {
        "batch_label": "testing batch 1 of 1",
        "labels": [int(v) for v in labels],
        "data": cifar_rows(labels, 10, rng),
        "filenames": [f"fake_test_{j}.png" for j in range(len(labels))],
    }
    _write_pickle(folder / "test_batch", test, pickle_protocol)
    meta = {"num_cases_per_batch": 10000, "label_names": [f"class{c}" for c in range(10)], "num_vis": 3072}
    _write_pickle(folder / "batches.meta", meta, pickle_protocol)
    return root


def write_cifar100(
    root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0, pickle_protocol: Optional[int] = None
) -> Path:
    """``root/cifar-100-python/{train, test, meta}``; returns ``root``."""
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        labels = _balanced_labels(n, 100, rng)
        batch = {
            "filenames": [f"fake_{name}_{j}.png" for j in range(n)],
            "batch_label": f"{name}ing batch 1 of 1",
            "fine_labels": [int(v) for v in labels],
            "coarse_labels": [int(v) // 5 for v in labels],
            "data": cifar_rows(labels, 100, rng),
        }
        _write_pickle(folder / name, batch, pickle_protocol)
    meta = {
        "fine_label_names": [f"fine{c}" for c in range(100)],
        "coarse_label_names": [f"coarse{c}" for c in range(20)],
    }
    _write_pickle(folder / "meta", meta, pickle_protocol)
    return root


def cifar_rows(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """N x 3072 uint8 rows in CIFAR's layout (1024 R, 1024 G, 1024 B values, each row-major)."""
    images = _coloured_images(labels, num_classes, CIFAR_SIZE, CIFAR_SIZE, rng)  # N x 32 x 32 x 3
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3 * CIFAR_SIZE * CIFAR_SIZE))


def _write_pickle(path: Path, obj: dict, protocol: Optional[int]) -> None:
    if protocol is None:
        path.write_bytes(python2_pickle(obj))
    else:  # Python 3: bytes keys, as `pickle.load(f, encoding="bytes")` would have returned them
        path.write_bytes(pickle.dumps({k.encode(): v for k, v in obj.items()}, protocol=protocol))


def python2_pickle(obj: Any) -> bytes:
    """``obj`` pickled the way Python 2 + numpy 1.x did for the official CIFAR archives.

    Protocol 2; every str becomes a Python 2 byte string (BINSTRING); a uint8 ndarray is
    ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` followed by BUILD with
    ``(1, shape, dtype('u1'), False, raw bytes)``. Handles dict, list, tuple, str, bytes,
    int, bool, None and uint8 arrays -- all a CIFAR batch contains.
    """
    return b"\x80\x02" + _py2(obj) + b"."


def _py2(obj: Any) -> bytes:
    if obj is None:
        return b"N"
    if isinstance(obj, bool):
        return b"\x88" if obj else b"\x89"
    if isinstance(obj, int):
        if 0 <= obj < 256:
            return b"K" + bytes([obj])
        if 0 <= obj < 65536:
            return b"M" + struct.pack("<H", obj)
        return b"J" + struct.pack("<i", obj)
    if isinstance(obj, (str, bytes)):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            return b"U" + bytes([len(raw)]) + raw
        return b"T" + struct.pack("<I", len(raw)) + raw
    if isinstance(obj, tuple):
        return b"(" + b"".join(_py2(v) for v in obj) + b"t"
    if isinstance(obj, list):
        return b"](" + b"".join(_py2(v) for v in obj) + b"e"
    if isinstance(obj, dict):
        return b"}(" + b"".join(_py2(k) + _py2(v) for k, v in obj.items()) + b"u"
    if isinstance(obj, np.ndarray) and obj.dtype == np.uint8:
        dtype = b"cnumpy\ndtype\n" + _py2(("u1", 0, 1)) + b"R" + _py2((3, "|", None, None, None, -1, -1, 0)) + b"b"
        array = b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + _py2((0,)) + _py2("b") + b"tR"
        raw = _py2(np.ascontiguousarray(obj).tobytes())
        state = b"(" + _py2(1) + _py2(tuple(obj.shape)) + dtype + b"\x89" + raw + b"t"
        return array + state + b"b"
    raise TypeError(f"python2_pickle cannot write {type(obj).__name__}")


# --------------------------------------------------------------------------- MNIST


def write_mnist(
    root: str | Path, kind: str = "MNIST", n_train: int = 60, n_test: int = 20, seed: int = 0, gzipped: bool = False
) -> Path:
    """``root/<kind>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``; returns ``root``.

    ``kind`` is torchvision's folder name: ``"MNIST"`` or ``"FashionMNIST"``.
    """
    if kind not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"kind must be 'MNIST' or 'FashionMNIST', not {kind!r}")
    root = Path(root)
    raw = root / kind / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _balanced_labels(n, 10, rng)
        images = mnist_images(labels, rng)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images, gzipped)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8), gzipped)
    return root


def mnist_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """N x 28 x 28 uint8: dark noise plus a bright horizontal band whose row depends on the class."""
    images = rng.integers(0, 40, size=(len(labels), MNIST_SIZE, MNIST_SIZE), dtype=np.uint8)
    for i, label in enumerate(labels):
        top = 2 + 2 * int(label)
        images[i, top : top + 4, 4:24] = rng.integers(200, 256, size=(4, 20), dtype=np.uint8)
    return images


def _write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    magic = (0x08 << 8) | array.ndim  # unsigned bytes; 2051 for images, 2049 for labels
    blob = struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + np.ascontiguousarray(array, np.uint8).tobytes()
    if gzipped:
        path.with_name(path.name + ".gz").write_bytes(_gzip.compress(blob))
    else:
        path.write_bytes(blob)


# --------------------------------------------------------------------------- image folders


def write_imagefolder(
    root: str | Path,
    classes: int | Sequence[str] = 3,
    per_class: int = 4,
    size: int = 40,
    splits: Sequence[str] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """``root/<split>/<class>/NNN.{png,jpg}``; returns ``root``.

    Image ``i`` of a class is a PNG when ``i`` is even and a JPEG when odd; image 0 is an
    RGB PNG of ``size`` x ``size`` (exact pixels, for round-trip checks); ``class0/001.jpg``
    and ``class1/002.png`` are grayscale (when those classes and indices exist); image 3 is
    wider than tall. ``classes`` is a count (named
    ``class0``, ``class1``, ...) or the list of folder names.
    """
    from PIL import Image

    names = [f"class{c}" for c in range(classes)] if isinstance(classes, int) else list(classes)
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                width = size + 10 if i == 3 else size
                pixels = _coloured_images(np.array([c]), len(names), size, width, rng)[0]
                img = Image.fromarray(pixels, mode="RGB")
                if (c, i) in ((0, 1), (1, 2)):  # one grayscale JPEG, one grayscale PNG
                    img = img.convert("L")
                if i % 2 == 0:
                    img.save(folder / f"{i:03d}.png")
                else:
                    img.save(folder / f"{i:03d}.jpg", quality=95)
    return root


# --------------------------------------------------------------------------- shared


def class_colour(label: int, num_classes: int) -> np.ndarray:
    """A distinct RGB colour (0..255 floats) per class: evenly spaced hues, alternating brightness."""
    r, g, b = colorsys.hsv_to_rgb(label / num_classes, 0.8, 0.85 if label % 2 == 0 else 0.55)
    return np.array([r, g, b]) * 255


def _coloured_images(labels: np.ndarray, num_classes: int, height: int, width: int, rng) -> np.ndarray:
    """N x H x W x 3 uint8: the class colour plus Gaussian noise (std 20 grey levels)."""
    colours = np.stack([class_colour(int(v), num_classes) for v in labels])[:, None, None, :]
    noise = rng.normal(0, 20, size=(len(labels), height, width, 3))
    return np.clip(np.round(colours + noise), 0, 255).astype(np.uint8)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` labels cycling through the classes, shuffled (every class present when n >= classes)."""
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)
