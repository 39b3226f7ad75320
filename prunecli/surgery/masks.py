"""Masks: tensor name -> bool tensor of the tensor's shape (True = kept).

Masks cover parameters and the buffers a layer declares in ``maskable_buffers`` (the
option-A shortcut's channel gate). A masked model keeps its shapes; pruned entries are
exactly zero and stay zero through fine-tuning because `enforce` runs after every
optimizer step.
"""

from __future__ import annotations

import torch

from prunecli.errors import CheckpointError


def maskable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, plus the buffers layers declare maskable, by state-dict name."""
    out = dict(model.named_parameters())
    for mname, module in model.named_modules():
        for b in getattr(module, "maskable_buffers", ()):
            t = getattr(module, b, None)
            if isinstance(t, torch.Tensor):
                out[f"{mname}.{b}" if mname else b] = t
    return out


@torch.no_grad()
def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked entries once (no validation: see MaskEnforcer for that)."""
    tensors = maskable_tensors(model)
    for name, m in masks.items():
        if name in tensors:
            tensors[name].mul_(m.to(device=tensors[name].device, dtype=tensors[name].dtype))


class MaskEnforcer:
    """Zeroes the masked entries of a model's parameters (call after each optimizer step)."""

    def __init__(self, model: torch.nn.Module, masks: dict[str, torch.Tensor], *, where: str = "checkpoint"):
        params = maskable_tensors(model)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for name, mask in masks.items():
            if name not in params:
                raise CheckpointError(f"{where}: mask for {name!r}, which the model does not have")
            p = params[name]
            if tuple(mask.shape) != tuple(p.shape):
                raise CheckpointError(
                    f"{where}: mask for {name!r} has shape {tuple(mask.shape)}, the parameter {tuple(p.shape)}"
                )
            self.pairs.append((p, mask.to(device=p.device, dtype=p.dtype)))

    def __bool__(self) -> bool:
        return bool(self.pairs)

    @torch.no_grad()
    def enforce(self) -> None:
        for p, m in self.pairs:
            p.mul_(m)
