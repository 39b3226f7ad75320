"""Weight initialisations shared by several model families."""

from __future__ import annotations

import math

import torch.nn as nn


def slimming_init(model: nn.Module, *, linear_std: float | None = None) -> None:
    """Network Slimming's init: He-normal with n = k*k*out, BN gamma = 0.5, BN beta = 0.

    The paper starts its L1 penalty on the BN scales from 0.5. Linear layers keep PyTorch's
    weight init with a zero bias, or (``linear_std``) get N(0, linear_std) weights, as the
    reference VGG does.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 0.5)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
