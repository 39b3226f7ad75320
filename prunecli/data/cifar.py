"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (the python pickle batches).

Layout (what ``torchvision.datasets.CIFAR10/100(root, download=True)`` leaves behind)::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Each batch is a pickled dict whose ``data`` is an N x 3072 uint8 array (per row: 1024 red,
then 1024 green, then 1024 blue values, each plane row-major) and whose ``labels``
(CIFAR-100: ``fine_labels``) is a list of N ints. ``--data`` may name ``<root>`` or the
batch folder itself.

The batches are read by our own reader rather than torchvision's dataset class: that class
verifies md5 sums of the official files (so tiny test files cannot go through it) and
unpickles with the unrestricted `pickle` module. Ours allows only what a numpy array and
plain containers need, so a crafted "batch" file cannot run code. torchvision is used only
to download (``--download``).
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from prunecli.data._registry import Augment, DataBundle, DatasetSpec, TensorSplit, register_dataset
from prunecli.errors import PruneCliError

_NATIVE_SIZE = 32
_DEFAULT_ROOT = "data"  # relative to the working directory when --data is not given
_RESIZE_CHUNK = 1024  # images resized per step: bounds the float32 working memory


@dataclass(frozen=True)
class _Variant:
    name: str
    folder: str  # the folder torchvision extracts the archive into
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    torchvision_class: str


_VARIANTS = {
    "cifar10": _Variant(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        label_key="labels",
        num_classes=10,
        # the per-channel statistics the seed codebases use (METHODS.md)
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2023, 0.1994, 0.2010),
        torchvision_class="CIFAR10",
    ),
    "cifar100": _Variant(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        label_key="fine_labels",
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        torchvision_class="CIFAR100",
    ),
}


@register_dataset("cifar10", shape=(3, 32, 10))
def cifar10(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """CIFAR-10 from --data DIR in torchvision's format (3x32x32, 10 classes, 50000 train / 10000 test)."""
    return _load_cifar(_VARIANTS["cifar10"], root, download, image_size, num_classes)


@register_dataset("cifar100", shape=(3, 32, 100))
def cifar100(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """CIFAR-100 from --data DIR in torchvision's format (3x32x32, 100 classes, 50000 train / 10000 test)."""
    return _load_cifar(_VARIANTS["cifar100"], root, download, image_size, num_classes)


def _load_cifar(v: _Variant, root, download: bool, image_size, num_classes) -> DataBundle:
    if num_classes not in (None, v.num_classes):
        raise PruneCliError(f"{v.name} has {v.num_classes} classes, not {num_classes}")
    root = resolve_root(root)
    folder = _find_batch_folder(v, root)
    if download and (folder is None or _missing_files(v, folder)):
        _download(v, root)  # torchvision re-extracts the archive when files are missing
        folder = _find_batch_folder(v, root)
    if folder is None:
        missing = root / v.folder / v.train_files[0]
        raise PruneCliError(f"{v.name} not found: looked for {missing} (pass --data DIR, or --download when online)")
    missing_files = _missing_files(v, folder)
    if missing_files:
        raise PruneCliError(
            f"{v.name} is incomplete: looked for {missing_files[0]} (pass --data DIR, or --download when online)"
        )

    train = _read_split(v, folder, v.train_files)
    test = _read_split(v, folder, v.test_files)
    size = image_size or _NATIVE_SIZE
    if size != _NATIVE_SIZE:
        train.images, test.images = resize_images(train.images, size), resize_images(test.images, size)
    spec = DatasetSpec(
        name=v.name,
        num_classes=v.num_classes,
        in_channels=3,
        image_size=size,
        mean=v.mean,
        std=v.std,
        root=str(root),
    )
    # the standard CIFAR augmentation: 4-pixel padded random crop and horizontal flip
    return DataBundle(spec=spec, train=train, test=test, augment=Augment(crop_padding=4, hflip=True))


def _find_batch_folder(v: _Variant, root: Path) -> Optional[Path]:
    """``root/<folder>`` if it holds the first batch, else ``root`` itself if it does."""
    for candidate in (root / v.folder, root):
        if (candidate / v.train_files[0]).is_file():
            return candidate
    return None


def _missing_files(v: _Variant, folder: Path) -> list[Path]:
    return [folder / f for f in v.train_files + v.test_files if not (folder / f).is_file()]


def _read_split(v: _Variant, folder: Path, files: tuple[str, ...]) -> TensorSplit:
    images, labels = [], []
    for fname in files:
        x, y = _read_batch(v, folder / fname)
        images.append(x)
        labels.append(y)
    x = torch.from_numpy(np.concatenate(images)).reshape(-1, 3, _NATIVE_SIZE, _NATIVE_SIZE)
    y = torch.from_numpy(np.concatenate(labels))
    return TensorSplit(images=x.contiguous(), labels=y)


def _read_batch(v: _Variant, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (N x 3072 uint8, N int64), with every field checked."""
    batch = load_restricted_pickle(path, what=f"{v.name} batch")
    if not isinstance(batch, dict):
        raise PruneCliError(f"{path} is not a {v.name} batch: it holds a {type(batch).__name__}, not a dict")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): val for k, val in batch.items()}
    for key in ("data", v.label_key):
        if key not in batch:
            raise PruneCliError(f"{path} is not a {v.name} batch: it has no {key!r} entry")
    data = batch["data"]
    expected = 3 * _NATIVE_SIZE * _NATIVE_SIZE
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != expected:
        got = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise PruneCliError(
            f"{path} is not a {v.name} batch: 'data' should be an N x {expected} uint8 array, got {got}"
        )
    try:
        labels = np.asarray(batch[v.label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise PruneCliError(f"{path} is not a {v.name} batch: {v.label_key!r} is not a list of integers") from e
    if labels.shape != (data.shape[0],):
        raise PruneCliError(
            f"{path} is not a {v.name} batch: {data.shape[0]} images but {v.label_key!r} has shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= v.num_classes):
        raise PruneCliError(
            f"{path}: labels must lie in [0, {v.num_classes - 1}], found {labels.min()}..{labels.max()}"
        )
    return np.ascontiguousarray(data), labels


def _download(v: _Variant, root: Path) -> None:
    """Fetch the official archive with torchvision (it checks md5 sums), then read it with our reader."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, v.torchvision_class)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            cls(str(root), train=train, download=True)
    except Exception as e:  # network, disk or checksum failure: one line, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PruneCliError(f"could not download {v.name} into {root}: {first}") from e


# ---------------------------------------------------------------------------------------
# Helpers shared with the other in-memory datasets (mnist.py imports them).


def resolve_root(root: str | Path | None) -> Path:
    """The absolute data folder: ``--data`` if given, else ``./data`` (torchvision's habit)."""
    return Path(root if root is not None else _DEFAULT_ROOT).expanduser().resolve()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 N x C x H x W tensor to N x C x size x size once, at load time.

    Bilinear with antialiasing (so downscaling does not alias); done in chunks so that
    the float32 working copy stays small whatever N is.
    """
    if size < 1:
        raise PruneCliError(f"--image-size must be a positive number of pixels, not {size}")
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + _RESIZE_CHUNK] = resized.round().clamp_(0, 255).to(torch.uint8)
    return out


# ---------------------------------------------------------------------------------------
# Restricted unpickling: numpy arrays and plain containers, nothing that can run code.


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """``name`` from the first importable module (numpy 2 moved numpy.core to numpy._core)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {modules} has {name}")


_RECONSTRUCT = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
_FROMBUFFER = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")

# (module, name) -> the object handed to the unpickler. Values are fixed here, never
# imported by the name a file asks for, so even the allowed names cannot be redirected.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # ndarray, as pickled by numpy 1.x (the official CIFAR files) and by numpy 2.x
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # ndarray under pickle protocol 5
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    # bytes under protocol 2 when written by Python 3 (a str -> bytes conversion)
    ("_codecs", "encode"): codecs.encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path, what: str):
        # latin1 turns Python 2 byte strings (the official CIFAR files) into str, which is
        # what numpy expects for the raw array data of Python 2 pickles
        super().__init__(file, encoding="latin1")
        self._path, self._what = path, what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise PruneCliError(
                f"refusing to read {self._path}: it asks to load {module}.{name}, which a {self._what} "
                "never needs (only numpy arrays and plain containers are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise PruneCliError(f"refusing to read {self._path}: it uses persistent ids, which a {self._what} never needs")


def load_restricted_pickle(path: Path, what: str = "data file") -> Any:
    """Unpickle ``path`` allowing only numpy arrays and plain Python containers.

    Any other global (``os.system``, ``builtins.eval``, ...) is refused before it is
    called; a truncated or corrupt file becomes a `PruneCliError` naming the file.
    """
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path, what).load()
    except PruneCliError:
        raise
    except OSError as e:
        raise PruneCliError(f"cannot read {path}: {e.strerror or e}") from e
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... from a damaged file
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PruneCliError(f"{path} is corrupt or truncated, not a readable {what} ({detail})") from e
