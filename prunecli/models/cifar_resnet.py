"""CIFAR ResNets: ResNet-20/32/44/56/110 (basic blocks, option-A shortcuts) and ResNet-164 (bottlenecks).

He et al., "Deep Residual Learning for Image Recognition" (arXiv:1512.03385), section 4.2:
a 3x3 stem conv with 16 channels, three stages of n blocks at widths 16/32/64 (the first
block of stages 2 and 3 halves the map), global average pool, one linear layer; depth =
6n + 2. Shortcuts are the parameter-free "option A" (subsample, zero-pad the new
channels), so ResNet-56 has 853,018 params and 1.25e8 MACs (conv + linear, 3x32x32) and
ResNet-110 1,727,962 and 2.53e8, as the L1-norm paper tabulates (it prints 1.72e6,
apparently truncated rather than rounded).

ResNet-164 is the original, post-activation bottleneck network (the baseline of He et al.,
"Identity Mappings in Deep Residual Networks", arXiv:1603.05027; pytorch-classification's
layout): n = 18 bottlenecks per stage, planes 16/32/64 with expansion 4, a conv1x1 + BN
projection shortcut where the shape changes; 1,704,154 params (the 1.70M usually quoted).

Module names: ``conv1``/``bn1`` (stem), ``layer1``..``layer3`` (stages) holding blocks
with ``conv1``, ``bn1``, ``conv2``, ``bn2`` (+ ``conv3``, ``bn3`` in bottlenecks) and
``shortcut``; ``avgpool``, ``fc``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunecli.models._registry import register_model
from prunecli.models.residual import ResidualLayout, register_residual_block
from prunecli.models.routing import SourceRouting
from prunecli.models.structure import register_routing_layer


@register_routing_layer
class ShortcutA(SourceRouting):
    """He et al.'s option-A shortcut: keep every ``stride``-th pixel, append zero channels.

    Parameter-free. ``source[j]`` names the input channel that output channel j carries, or
    -1 for a zero channel; as built, output channel i is input channel i for i < C_in and
    zero after that. Torch-Pruning takes a layer it does not know for element-wise (C
    channels in, the same C out), which is wrong here, so the shortcut prunes itself: it
    is a routing layer (prunecli.models.structure). An input channel removed upstream
    turns its output into a zero channel, and removing output channels drops their
    entries. Input and output channels are therefore pruned independently, one residual
    group per stage, as the papers count them.

    ``gate`` (a buffer of ones, one per output channel) lets a *mask* silence an output
    channel that still carries an input: a masked model whose stage-2 residual channel j
    is pruned must not pass stage-1's channel into it, or it would not compute what the
    compressed model computes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option-A shortcut cannot reduce channels ({in_channels} -> {out_channels})")
        self.stride = stride
        self._init_routing(in_channels, list(range(in_channels)) + [-1] * (out_channels - in_channels))

    def _fast_path(self) -> None:
        src = self.source
        prefix = torch.arange(self.in_channels, device=src.device)
        self._is_prefix = bool(
            src.numel() == self.out_channels
            and torch.equal(src[: self.in_channels], prefix)
            and bool((src[self.in_channels :] == -1).all())
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self._is_prefix:
            out = F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))
        else:
            out = torch.index_select(F.pad(x, (0, 0, 0, 0, 0, 1)), 1, self._gather)
        return out * self.gate.view(1, -1, 1, 1).to(out.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != planes:
            self.shortcut: nn.Module = ShortcutA(in_channels, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


register_residual_block(BasicBlock, ResidualLayout(branch_end="bn2", inner=("bn1",), shortcut="shortcut"))


class Bottleneck(nn.Module):
    """Post-activation bottleneck: conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1(x4)-BN, add, ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


register_residual_block(Bottleneck, ResidualLayout(branch_end="bn3", inner=("bn1", "bn2"), shortcut="shortcut"))


class CifarResNet(nn.Module):
    """Stem conv3x3(16)-BN-ReLU, three stages of ``blocks_per_stage`` blocks (planes 16/32/64), pool, fc."""

    def __init__(self, block: type[nn.Module], blocks_per_stage: int, *, in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        channels = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(block(channels, planes, stride if i == 0 else 1))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    # He-normal on fan_out for ReLU networks (He et al. 2015), BN starting as the identity.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _basic_resnet(depth: int, in_channels: int, num_classes: int) -> CifarResNet:
    assert (depth - 2) % 6 == 0, depth  # entry points pass valid depths only
    return CifarResNet(BasicBlock, (depth - 2) // 6, in_channels=in_channels, num_classes=num_classes)


@register_model
def resnet20(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-20 for CIFAR, option-A shortcuts (He et al., arXiv:1512.03385)."""
    return _basic_resnet(20, in_channels, num_classes)


@register_model
def resnet32(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-32 for CIFAR, option-A shortcuts (He et al., arXiv:1512.03385)."""
    return _basic_resnet(32, in_channels, num_classes)


@register_model
def resnet44(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-44 for CIFAR, option-A shortcuts (He et al., arXiv:1512.03385)."""
    return _basic_resnet(44, in_channels, num_classes)


@register_model
def resnet56(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-56 for CIFAR, option-A shortcuts (He et al., arXiv:1512.03385)."""
    return _basic_resnet(56, in_channels, num_classes)


@register_model
def resnet110(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-110 for CIFAR, option-A shortcuts (He et al., arXiv:1512.03385)."""
    return _basic_resnet(110, in_channels, num_classes)


@register_model
def resnet164(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> CifarResNet:
    """ResNet-164 for CIFAR, post-activation bottlenecks (He et al., arXiv:1603.05027)."""
    return CifarResNet(Bottleneck, 18, in_channels=in_channels, num_classes=num_classes)
