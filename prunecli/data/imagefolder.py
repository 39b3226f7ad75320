"""Image-classification folders (ImageNet and any other) read with torchvision's ImageFolder.

Layout::

    <root>/train/<class>/*.{jpg,jpeg,png,ppm,bmp,pgm,tif,tiff,webp}
    <root>/val/<class>/...

These do not fit in memory, so the splits are torch Datasets yielding (normalised float
3 x S x S tensor, label), read by a DataLoader with worker processes: everything here
(dataset, loader function, transforms) is picklable. Augmentation is the standard
ImageNet one and lives in the train transform, so the bundle's device-side `Augment`
is empty.

Class folders are the non-hidden sub-folders of ``train/`` (a stray ``.ipynb_checkpoints``
must not become a class); ``val/`` must have exactly the same ones, since a label is the
index of its folder name in the sorted list.
"""

from __future__ import annotations

import os
from pathlib import Path

import torchvision.transforms as T
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from prunecli.data._registry import Augment, DataBundle, DatasetSpec, register_dataset
from prunecli.data.cifar import resolve_root
from prunecli.errors import PruneCliError

_DEFAULT_SIZE = 224
_RESIZE_RATIO = 256 / 224  # evaluation: resize the short side to 256, centre-crop 224 (and in proportion)
_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, used for every image folder
_STD = (0.229, 0.224, 0.225)
_SPLITS = ("train", "val")
_LISTED_NAMES = 5  # how many differing class names an error message shows


@register_dataset("imagefolder", shape=(3, 224, None))
def imagefolder(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """Any image folder: --data DIR with train/<class>/ and val/<class>/ (RGB, 3x224x224 unless --image-size)."""
    return _load_folder("imagefolder", root, download, image_size, num_classes)


@register_dataset("imagenet", shape=(3, 224, 1000))
def imagenet(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """ImageNet (ILSVRC-2012): --data DIR with train/<wnid>/ and val/<wnid>/ (3x224x224, 1000 class folders)."""
    return _load_folder("imagenet", root, download, image_size, num_classes)


def _load_folder(name: str, root, download: bool, image_size, num_classes) -> DataBundle:
    root = resolve_root(root)
    dirs = {split: root / split for split in _SPLITS}
    missing = [d for d in dirs.values() if not d.is_dir()]
    if missing:
        hint = " (image folders cannot be downloaded)" if download else ""
        looked = " and ".join(str(d) for d in dirs.values())
        raise PruneCliError(f"{name} not found: looked for {looked} (pass --data DIR){hint}")

    classes = {split: class_folders(d, name) for split, d in dirs.items()}
    if classes["train"] != classes["val"]:
        raise PruneCliError(f"{name}: train/ and val/ in {root} have different classes: {_difference(classes)}")
    class_names = classes["train"]
    if num_classes not in (None, len(class_names)):
        raise PruneCliError(f"{name} in {root} has {len(class_names)} class folders, not {num_classes}")

    size = image_size or _DEFAULT_SIZE
    if size < 1:
        raise PruneCliError(f"--image-size must be a positive number of pixels, not {size}")
    train_tf, test_tf = _transforms(size)
    train = _make_folder(name, dirs["train"], train_tf)
    test = _make_folder(name, dirs["val"], test_tf)
    spec = DatasetSpec(
        name=name,
        num_classes=len(class_names),
        in_channels=3,
        image_size=size,
        mean=_MEAN,
        std=_STD,
        root=str(root),
        options={"classes": list(class_names)},
    )
    return DataBundle(spec=spec, train=train, test=test, augment=Augment())


def class_folders(directory: Path, name: str = "imagefolder") -> list[str]:
    """The sorted names of the non-hidden sub-folders of ``directory``."""
    with os.scandir(directory) as it:
        entries = list(it)
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    if not classes:
        flat = any(e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS) for e in entries)
        hint = (
            " (its images must be sorted into one sub-folder per class; ImageNet's validation"
            " archive is flat and needs sorting first)"
            if flat
            else ""
        )
        raise PruneCliError(f"{name}: {directory} has no class folders{hint}")
    return classes


def _difference(classes: dict[str, list[str]]) -> str:
    def some(names: list[str]) -> str:
        more = len(names) - _LISTED_NAMES
        return ", ".join(names[:_LISTED_NAMES]) + (f" and {more} more" if more > 0 else "")

    train, val = set(classes["train"]), set(classes["val"])
    parts = []
    if train - val:
        parts.append(f"only in train/: {some(sorted(train - val))}")
    if val - train:
        parts.append(f"only in val/: {some(sorted(val - train))}")
    return "; ".join(parts)


def _transforms(size: int) -> tuple[T.Compose, T.Compose]:
    """(train, test) transforms: the standard ImageNet recipe at ``size`` pixels."""
    normalize = T.Normalize(_MEAN, _STD)
    train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    test = T.Compose([T.Resize(int(size * _RESIZE_RATIO)), T.CenterCrop(size), T.ToTensor(), normalize])
    return train, test


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (grayscale, palette and RGBA files are converted)."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise PruneCliError(f"cannot read image {path}: {e}") from e


def _make_folder(name: str, directory: Path, transform) -> "VisibleClassesFolder":
    try:
        return VisibleClassesFolder(str(directory), transform=transform, loader=load_rgb)
    except FileNotFoundError as e:  # a class folder without a single image file
        raise PruneCliError(f"{name}: {directory}: {e}") from e


class VisibleClassesFolder(ImageFolder):
    """ImageFolder whose classes are `class_folders` (hidden folders skipped)."""

    def find_classes(self, directory):
        classes = class_folders(Path(directory))
        return classes, {c: i for i, c in enumerate(classes)}
