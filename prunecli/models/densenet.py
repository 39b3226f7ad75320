"""CIFAR DenseNet-40 (k = 12), the DenseNet of Network Slimming.

Huang et al., "Densely Connected Convolutional Networks" (arXiv:1608.06993), in the form
Liu et al. prune in "Learning Efficient Convolutional Networks through Network Slimming"
(arXiv:1708.06519): a 3x3 stem conv to 16 channels, three dense blocks of (depth - 4) / 3
layers, each layer BN-ReLU-conv3x3(k) concatenated onto its input (no bottleneck), and
between blocks a transition BN-ReLU-conv1x1 that keeps the channel count (compression 1)
followed by a 2x2 average pool; a final BN-ReLU, global average pool and linear layer.

The stem width: Huang et al. give the non-bottleneck DenseNet a 16-channel stem, and the
Slimming paper's table (1.02M params, 5.33e8 FLOPs) matches it: the default here gives
1,019,722 params and 2.65e8 MACs (FLOPs ~ 2 x MACs) at 3x32x32, 10 classes. Network
Slimming's PyTorch reference code uses 2k = 24 channels instead (1,059,298 params, 2.83e8
MACs): ``--model-arg stem_channels=24``.

Network Slimming's reference also inserts a ``channel_selection`` layer after every BN,
each of which reads the concatenated stream. The model is built without it;
``stream_norms()`` names those BatchNorms, and ``prune --method slimming`` inserts
prunecli's selection layer in front of them (prunecli.models.channel_selection).

Module names: ``conv1`` (stem), ``dense1``..``dense3`` (blocks of layers with ``bn``,
``conv``), ``trans1``, ``trans2`` (``bn``, ``conv``, ``pool``), ``bn`` (final), ``fc``.
"""

from __future__ import annotations


import torch
import torch.nn as nn

from prunecli.models._init import slimming_init
from prunecli.models._registry import register_model


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth_rate`` channels, concatenated after the input."""

    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1, then a 2x2 average pool that halves the map."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNet(nn.Module):
    """Stem, three dense blocks with two transitions between them, final BN-ReLU, pool, fc."""

    def __init__(
        self,
        layers_per_block: int,
        growth_rate: int,
        stem_channels: int,
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
    ):
        super().__init__()
        if image_size < 4:
            raise ValueError(f"DenseNet's two transitions halve the map twice, so image_size must be >= 4; got {image_size}")
        channels = stem_channels
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.dense1, channels = _dense_block(channels, layers_per_block, growth_rate)
        self.trans1 = Transition(channels, channels)  # compression 1: the width is kept
        self.dense2, channels = _dense_block(channels, layers_per_block, growth_rate)
        self.trans2 = Transition(channels, channels)
        self.dense3, channels = _dense_block(channels, layers_per_block, growth_rate)
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        slimming_init(self)

    def stream_norms(self) -> list[str]:
        """Every BatchNorm: each reads the concatenation (dense layers, transitions, the final ``bn``)."""
        names: list[str] = []
        for block, transition in (("dense1", "trans1"), ("dense2", "trans2"), ("dense3", None)):
            names += [f"{block}.{i}.bn" for i in range(len(getattr(self, block)))]
            if transition:
                names.append(f"{transition}.bn")
        return names + ["bn"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trans1(self.dense1(self.conv1(x)))
        x = self.trans2(self.dense2(x))
        x = self.relu(self.bn(self.dense3(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _dense_block(in_channels: int, num_layers: int, growth_rate: int) -> tuple[nn.Sequential, int]:
    """The block and its output width (each layer adds ``growth_rate`` channels)."""
    layers = [DenseLayer(in_channels + i * growth_rate, growth_rate) for i in range(num_layers)]
    return nn.Sequential(*layers), in_channels + num_layers * growth_rate


@register_model
def densenet40(
    *,
    in_channels: int = 3,
    num_classes: int = 10,
    image_size: int = 32,
    depth: int = 40,
    growth_rate: int = 12,
    stem_channels: int = 16,
) -> DenseNet:
    """DenseNet-40 (k=12) for CIFAR, Network Slimming's (Huang et al., arXiv:1608.06993; Liu et al., arXiv:1708.06519)."""
    if depth < 7 or (depth - 4) % 3:
        raise ValueError(f"depth must be 3n + 4 with n >= 1 (e.g. 40, 100), got {depth}")
    if growth_rate < 1:
        raise ValueError(f"growth_rate must be >= 1, got {growth_rate}")
    if stem_channels < 1:
        raise ValueError(f"stem_channels must be >= 1, got {stem_channels}")
    return DenseNet(
        (depth - 4) // 3,
        growth_rate,
        stem_channels,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
    )
