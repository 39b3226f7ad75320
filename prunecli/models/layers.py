"""Prunable layers: convolutions and linear layers, in module order.

The one definition every part of prunecli uses: the dependency units (surgery), the
layer numbers of ``--skip 16`` (1-based, stem = 1, as Li et al. number them), the
per-layer tables (metrics) and weight-level pruning all list layers through here.
"""

from __future__ import annotations

from torch import nn

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def is_prunable(module: nn.Module) -> bool:
    return isinstance(module, PRUNABLE_TYPES)


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv and linear layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if is_prunable(m)]


def layer_numbers(model: nn.Module) -> dict[str, int]:
    """Layer name -> its 1-based number among the prunable layers (stem = 1)."""
    return {name: i for i, (name, _) in enumerate(prunable_layers(model), start=1)}
