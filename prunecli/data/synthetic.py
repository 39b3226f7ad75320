"""Synthetic images for benchmarks and tests: learnable, deterministic, any shape."""

from __future__ import annotations

import torch

from prunecli.data._registry import Augment, DataBundle, DatasetSpec, TensorSplit, register_dataset

_TRAIN_SIZE = 512
_TEST_SIZE = 128
_DATA_SEED = 1234  # the images do not depend on --seed: one dataset, many training runs


@register_dataset("synthetic", shape=(3, 32, 10))
def synthetic(*, root=None, download=False, image_size=None, num_classes=None, seed=0) -> DataBundle:
    """Random class prototypes plus noise (3x32x32, 10 classes unless --image-size/--num-classes)."""
    size = image_size or 32
    classes = num_classes or 10
    g = torch.Generator().manual_seed(_DATA_SEED)
    # one smooth prototype per class (low-resolution noise, upsampled), so a CNN can learn it
    low = max(2, size // 8)
    protos = torch.rand(classes, 3, low, low, generator=g)
    protos = torch.nn.functional.interpolate(protos, size=(size, size), mode="bilinear", align_corners=False)

    def make(n: int) -> TensorSplit:
        labels = torch.arange(n) % classes
        labels = labels[torch.randperm(n, generator=g)]
        noise = torch.randn(n, 3, size, size, generator=g) * 0.25
        images = ((protos[labels] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        return TensorSplit(images, labels.to(torch.int64))

    train, test = make(max(_TRAIN_SIZE, 2 * classes)), make(max(_TEST_SIZE, classes))
    spec = DatasetSpec(
        name="synthetic",
        num_classes=classes,
        in_channels=3,
        image_size=size,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        options={"image_size": size, "num_classes": classes},
    )
    return DataBundle(spec=spec, train=train, test=test, augment=Augment(crop_padding=0, hflip=True))
