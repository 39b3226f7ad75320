"""Which entries of every tensor survive a physical pruning: the "id trick".

Before pruning, every floating-point parameter and buffer is replaced by its own flat
indices (as float64, exact up to 2**53); Torch-Pruning's handlers only slice, so after
pruning each tensor holds the indices of the entries it kept. The real values are then
put back by gathering. This works for every layer type Torch-Pruning knows (and our
custom ones) without per-type rules, so a mask derived from it means exactly what
`compress` will do, and weight-level masks can be carried into the smaller shapes.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch


def _float_tensors(model: torch.nn.Module):
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t is not None and t.is_floating_point():
            yield name, t


@torch.no_grad()
def prune_tracking_entries(model: torch.nn.Module, apply: Callable[[torch.nn.Module], None]) -> dict[str, torch.Tensor]:
    """Run ``apply(model)`` (which prunes it physically); return name -> kept flat indices.

    The returned index tensors have the new shapes: entry i of the pruned tensor came
    from flat entry ``kept[name][i]`` of the original. Values are restored afterwards.
    """
    originals: dict[str, torch.Tensor] = {}
    for name, t in _float_tensors(model):
        originals[name] = t.detach().clone()
        t.data = torch.arange(t.numel(), dtype=torch.float64, device=t.device).view(t.shape)
    try:
        apply(model)
    finally:
        kept: dict[str, torch.Tensor] = {}
        for name, t in _float_tensors(model):
            if name not in originals:
                continue
            ids = t.detach().round().long()
            kept[name] = ids
            t.data = originals[name].flatten()[ids.flatten()].view(ids.shape).to(originals[name].dtype)
    return kept


def masks_from_kept(shapes: dict[str, torch.Size], kept: dict[str, torch.Tensor], names) -> dict[str, torch.Tensor]:
    """Boolean masks (original shapes, True = kept) for the parameters ``names``."""
    masks = {}
    for name in names:
        mask = torch.zeros(math.prod(shapes[name]), dtype=torch.bool)
        mask[kept[name].flatten().cpu()] = True
        masks[name] = mask.view(shapes[name])
    return masks
