"""CIFAR VGG-11/13/16/19 with BatchNorm, the networks of the L1-norm and Network Slimming papers.

Simonyan & Zisserman's VGG (arXiv:1409.1556) adapted to 32x32 inputs: 3x3 convs (padding 1,
no bias: a BatchNorm follows) with BN + ReLU, 2x2 max-pools, a global average pool and a
small head. Two heads, chosen with ``head``:

* ``"li"``: Linear(512, 512) - BatchNorm1d - ReLU - Linear(512, classes), as in Li et al.,
  "Pruning Filters for Efficient ConvNets" (arXiv:1608.08710); at 3x32x32 VGG-16 has
  14,987,722 params and 3.13e8 MACs, the paper's 1.5e7 and 3.13e8;
* ``"slimming"``: one Linear(512, classes), as in Liu et al., "Learning Efficient
  Convolutional Networks through Network Slimming" (arXiv:1708.06519); VGG-19 has 20.04M
  params, the paper's number.

``cfg`` (a list of widths and ``"M"`` for a max-pool) builds a pruned width configuration
directly, for training a pruned architecture from scratch ("Rethinking the Value of
Network Pruning", arXiv:1810.05270).

Module names: ``features.N`` (conv, BN, ReLU, pool), ``avgpool``, ``classifier`` (the
Linear of the slimming head) or ``classifier.N`` (the li head).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn

from prunecli.models._init import slimming_init
from prunecli.models._registry import register_model

CfgItem = Union[int, str]

_CFGS: dict[int, list[CfgItem]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
_HEADS = ("li", "slimming")
_LI_HIDDEN = 512  # the li head's hidden width, fixed in the paper whatever the last conv width


class VGG(nn.Module):
    """Conv-BN-ReLU stack described by ``cfg``, global average pool, then the ``head``."""

    def __init__(self, cfg: Sequence[CfgItem], *, in_channels: int, num_classes: int, image_size: int, head: str):
        super().__init__()
        cfg = _checked_cfg(cfg)
        pools = sum(1 for v in cfg if v == "M")
        if image_size // 2**pools < 1:
            raise ValueError(f"this VGG max-pools {pools} times, so image_size must be >= {2**pools}; got {image_size}")
        if head not in _HEADS:
            raise ValueError(f"unknown head {head!r}; valid: {', '.join(_HEADS)}")

        self.features = _make_features(cfg, in_channels)
        # The references use AvgPool2d(2) on the 2x2 map a 32x32 input leaves; pooling to
        # 1x1 is the same there and also fits other input sizes.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        width = [v for v in cfg if v != "M"][-1]
        if head == "li":
            self.classifier: nn.Module = nn.Sequential(
                nn.Linear(width, _LI_HIDDEN),
                nn.BatchNorm1d(_LI_HIDDEN),
                nn.ReLU(inplace=True),
                nn.Linear(_LI_HIDDEN, num_classes),
            )
        else:
            self.classifier = nn.Linear(width, num_classes)
        slimming_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _checked_cfg(cfg: Sequence[CfgItem]) -> list[CfgItem]:
    """``cfg`` with widths as ints (a YAML file may give "64"); ValueError if malformed."""
    out: list[CfgItem] = []
    for v in cfg:
        if isinstance(v, str) and v.upper() == "M":
            out.append("M")
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0:
            out.append(v)
        elif isinstance(v, str) and v.isdigit() and int(v) > 0:
            out.append(int(v))
        else:
            raise ValueError(f"cfg entries must be positive widths or 'M', got {v!r}")
    if not any(v != "M" for v in out):
        raise ValueError("cfg has no conv layer")
    return out


def _make_features(cfg: Sequence[CfgItem], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            channels = v
    return nn.Sequential(*layers)


def _vgg(depth: int, in_channels: int, num_classes: int, image_size: int, head: str, cfg) -> VGG:
    return VGG(
        _CFGS[depth] if cfg is None else cfg,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=image_size,
        head=head,
    )


@register_model
def vgg11(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, head: str = "slimming", cfg=None) -> VGG:
    """VGG-11 with BN for CIFAR, slimming head by default (Liu et al., arXiv:1708.06519)."""
    return _vgg(11, in_channels, num_classes, image_size, head, cfg)


@register_model
def vgg13(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, head: str = "slimming", cfg=None) -> VGG:
    """VGG-13 with BN for CIFAR, slimming head by default (Liu et al., arXiv:1708.06519)."""
    return _vgg(13, in_channels, num_classes, image_size, head, cfg)


@register_model
def vgg16(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, head: str = "li", cfg=None) -> VGG:
    """VGG-16 with BN for CIFAR, 512-512 head by default (Li et al., arXiv:1608.08710)."""
    return _vgg(16, in_channels, num_classes, image_size, head, cfg)


@register_model
def vgg19(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, head: str = "slimming", cfg=None) -> VGG:
    """VGG-19 with BN for CIFAR, slimming head by default (Liu et al., arXiv:1708.06519)."""
    return _vgg(19, in_channels, num_classes, image_size, head, cfg)
