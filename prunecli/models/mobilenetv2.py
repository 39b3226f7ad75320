"""MobileNetV2 with CIFAR or ImageNet strides.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (arXiv:1801.04381),
table 2: a stride-2 conv3x3 stem to 32 channels, seven rows of inverted residual blocks
(t, c, n, s) = expansion, output channels, repeats, first block's stride, a conv1x1 to
1280, global average pool, dropout 0.2 and a linear layer; ReLU6 throughout except after
the projection conv (the "linear bottleneck"). With ImageNet strides and 1000 classes it
has 3,504,872 params, exactly torchvision's ``mobilenet_v2``.

``strides="cifar"`` makes the stem and the second row stride 1, so a 32x32 input ends on
a 4x4 map instead of 1x1 (the usual CIFAR adaptation); ``"auto"`` picks it for inputs of
64 pixels or fewer. ``width_mult`` scales every width, rounded to a multiple of 8 as in
torchvision (the last conv only grows, never shrinks, as there).

Module names: ``stem`` and ``last_conv`` (each ``conv``, ``bn``, ``act``), ``stages.0``..
``stages.6`` -- one stage per table row, the "blocks 1-7" that block-by-block pruning
walks -- holding blocks with ``expand`` (an identity when t = 1), ``depthwise``, ``project``
(each ``conv``, ``bn`` [, ``act``]); ``avgpool``, ``classifier.0`` (dropout),
``classifier.1`` (linear).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from prunecli.models._registry import register_model

# (expansion t, output channels c, repeats n, first stride s), table 2 of the paper
_ROWS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_STEM_WIDTH = 32
_LAST_WIDTH = 1280
_DROPOUT = 0.2
_STRIDE_MODES = ("auto", "cifar", "imagenet")
_CIFAR_MAX_SIZE = 64  # "auto": up to this input size, 32x downsampling would leave (almost) no map


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """conv (no bias) - BN [- ReLU6]; ``act=False`` gives the linear bottleneck projection."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.act = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """Expand (conv1x1, x t), depthwise conv3x3 (stride), project (conv1x1, linear); residual if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        # t = 1 (the first row) has nothing to expand
        self.expand = ConvBNAct(in_channels, hidden, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem, seven stages of inverted residuals (one per table row), last conv1x1, pool, dropout, linear."""

    def __init__(self, *, in_channels: int, num_classes: int, width_mult: float, cifar_strides: bool):
        super().__init__()
        channels = _make_divisible(_STEM_WIDTH * width_mult)
        self.stem = ConvBNAct(in_channels, channels, 3, stride=1 if cifar_strides else 2)
        stages = []
        for row, (t, c, n, s) in enumerate(_ROWS):
            if cifar_strides and row == 1:
                s = 1  # with the stride-1 stem: 8x downsampling in all, 32x32 -> 4x4
            out_channels = _make_divisible(c * width_mult)
            blocks = []
            for i in range(n):
                blocks.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        last_width = _make_divisible(_LAST_WIDTH * max(1.0, width_mult))
        self.last_conv = ConvBNAct(channels, last_width, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(_DROPOUT), nn.Linear(last_width, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.last_conv(self.stages(self.stem(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    # torchvision's init: He-normal on fan_out, BN as the identity, small normal linear weights.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


@register_model
def mobilenetv2(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    width_mult: float = 1.0,
    strides: str = "auto",
) -> MobileNetV2:
    """MobileNetV2, CIFAR strides for inputs <= 64 px (Sandler et al., arXiv:1801.04381)."""
    if strides not in _STRIDE_MODES:
        raise ValueError(f"unknown strides {strides!r}; valid: {', '.join(_STRIDE_MODES)}")
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    cifar = strides == "cifar" or (strides == "auto" and image_size <= _CIFAR_MAX_SIZE)
    return MobileNetV2(in_channels=in_channels, num_classes=num_classes, width_mult=width_mult, cifar_strides=cifar)
