"""scikit-learn's handwritten digits: the embedded, offline default dataset."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunecli.data._registry import Augment, DataBundle, DatasetSpec, TensorSplit, register_dataset
from prunecli.errors import PruneCliError

# 1,797 8x8 images with 17 grey levels, shipped inside scikit-learn (no download).
# Upsampled to 16x16 so that the CIFAR-style models (two or more 2x2 poolings) still
# see a spatial map; small enough that conv4 trains to >= 95% in well under a minute
# on two CPU cores.
_DEFAULT_SIZE = 16
_TEST_SIZE = 360  # 20% of 1,797
_SPLIT_SEED = 0  # the split is fixed, independent of --seed, so every run tests on the same images


@register_dataset("digits", shape=(1, _DEFAULT_SIZE, 10))
def digits(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """Handwritten digits from scikit-learn (1x16x16, 10 classes, 1437 train / 360 test), offline."""
    from sklearn.datasets import load_digits

    if num_classes not in (None, 10):
        raise PruneCliError(f"digits has 10 classes, not {num_classes}")
    size = image_size or _DEFAULT_SIZE
    raw = load_digits()
    x = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N x 1 x 8 x 8 in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    labels = torch.tensor(raw.target, dtype=torch.int64)

    g = torch.Generator().manual_seed(_SPLIT_SEED)
    order = torch.randperm(len(labels), generator=g)
    test_idx, train_idx = order[:_TEST_SIZE], order[_TEST_SIZE:]
    train = TensorSplit(images[train_idx], labels[train_idx])
    test = TensorSplit(images[test_idx], labels[test_idx])

    mean = train.images.float().mean().item() / 255
    std = train.images.float().std().item() / 255
    spec = DatasetSpec(
        name="digits",
        num_classes=10,
        in_channels=1,
        image_size=size,
        mean=(round(mean, 4),),
        std=(round(std, 4),),
    )
    # a one-pixel shift is the only augmentation that keeps digits legible at 16x16
    return DataBundle(spec=spec, train=train, test=test, augment=Augment(crop_padding=1 if size >= 16 else 0))
