"""Conv-2/4/6/8 and LeNet-300-100: the small networks of the lottery-ticket and edge-popup papers.

Conv-N (Frankle & Carbin, arXiv:1803.03635; Ramanujan et al., arXiv:1911.13299) is N 3x3
convolutions in pairs of widths 64, 128, 256, 512, each pair followed by a 2x2 max-pool,
then a 256-256-classes fully connected head. There is no bias and no BatchNorm anywhere:
edge-popup scores every parameter, and the parameter counts the papers print (conv2
4,300,992 ... conv8 5,275,840 at 3x32x32) count weights only.

LeNet-300-100 (LeCun et al. 1998, the lottery-ticket paper's MNIST network) is a plain MLP
on the flattened image, with biases.

Module names: ``features.N`` is the conv stack, ``classifier.N`` the fully connected head,
so ``--layers 'classifier.4'`` selects the output layer.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from prunecli.models._registry import register_model

_PAIR_WIDTHS = (64, 128, 256, 512)  # the output width of conv pair 1, 2, 3, 4
_HEAD_WIDTHS = (256, 256)


class ConvNet(nn.Module):
    """Pairs of bias-free 3x3 conv + ReLU, a 2x2 max-pool after each pair, a bias-free MLP head."""

    def __init__(
        self,
        pair_widths: Sequence[int],
        *,
        in_channels: int,
        num_classes: int,
        image_size: int,
        head_widths: Sequence[int] = _HEAD_WIDTHS,
    ):
        super().__init__()
        final_size = image_size // 2 ** len(pair_widths)  # each max-pool floors the size
        if final_size < 1:
            raise ValueError(
                f"{2 * len(pair_widths)} convs max-pool {len(pair_widths)} times, so image_size must be "
                f">= {2 ** len(pair_widths)}; got {image_size}"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for width in pair_widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)

        head: list[nn.Module] = []
        features = channels * final_size * final_size
        for width in head_widths:
            head += [nn.Linear(features, width, bias=False), nn.ReLU(inplace=True)]
            features = width
        head.append(nn.Linear(features, num_classes, bias=False))
        self.classifier = nn.Sequential(*head)
        _init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class MLP(nn.Module):
    """Fully connected ReLU network on the flattened image (with biases)."""

    def __init__(self, hidden_widths: Sequence[int], *, in_features: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = []
        features = in_features
        for width in hidden_widths:
            layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            features = width
        layers.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*layers)
        _init_relu_net(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))


def _init_relu_net(model: nn.Module) -> None:
    # Without BatchNorm nothing rescales the activations, so the init must keep their
    # variance through up to 8 convs + 3 linears: He-normal on fan_in (edge-popup's
    # default). PyTorch's default init shrinks the std ~2.4x per layer (sqrt(6)); with it,
    # conv8 stayed at chance on digits after 5 epochs of SGD at lr 0.01.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _convnet(num_convs: int, in_channels: int, num_classes: int, image_size: int) -> ConvNet:
    pairs = _PAIR_WIDTHS[: num_convs // 2]
    return ConvNet(pairs, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


@register_model
def conv2(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-2: 2 convs (64) + 256-256 head, no bias/BN (Frankle & Carbin, arXiv:1803.03635)."""
    return _convnet(2, in_channels, num_classes, image_size)


@register_model
def conv4(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-4: 4 convs (64, 128) + 256-256 head, no bias/BN (Frankle & Carbin, arXiv:1803.03635)."""
    return _convnet(4, in_channels, num_classes, image_size)


@register_model
def conv6(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-6: 6 convs (64-256) + 256-256 head, no bias/BN (Frankle & Carbin, arXiv:1803.03635)."""
    return _convnet(6, in_channels, num_classes, image_size)


@register_model
def conv8(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> ConvNet:
    """Conv-8: 8 convs (64-512) + 256-256 head, no bias/BN (Ramanujan et al., arXiv:1911.13299)."""
    return _convnet(8, in_channels, num_classes, image_size)


@register_model
def lenet300_100(*, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> MLP:
    """LeNet-300-100 MLP on the flattened image (LeCun et al. 1998; Frankle & Carbin, arXiv:1803.03635)."""
    return MLP((300, 100), in_features=in_channels * image_size * image_size, num_classes=num_classes)
