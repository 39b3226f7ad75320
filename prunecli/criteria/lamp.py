"""Lee et al., "Layer-adaptive Sparsity for the Magnitude-based Pruning", ICLR 2021, arXiv:2010.07611.

LAMP divides each squared magnitude by the sum of the squared magnitudes that are not
smaller, so the largest entry of every layer scores 1 and one global threshold gives each
layer its own sparsity. Torch-Pruning's `_lamp` normaliser computes the same quantity as
total - prefix sum, which loses the small entries to cancellation in float32; here the
suffix sums are accumulated directly, in float64.
"""

from __future__ import annotations

from typing import Optional

import torch

from prunecli.criteria._registry import Criterion, register_criterion, scatter_to_unit
from prunecli.criteria.norm import producer_filters


def lamp_normalize(squares: torch.Tensor) -> torch.Tensor:
    """x_u / sum_{v >= u} x_v for non-negative x, entries sorted ascending (ties: index order)."""
    flat = squares.detach().flatten().double()
    order = torch.sort(flat, stable=True).indices
    ascending = flat[order]
    suffix = ascending.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(flat)
    # an all-zero tail has nothing to keep: score 0 rather than 0/0
    out[order] = ascending / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    return out.view(squares.shape)


@register_criterion("lamp")
class LAMP(Criterion):
    """Lee et al., "Layer-adaptive Sparsity for the Magnitude-based Pruning", ICLR 2021, arXiv:2010.07611.

    Weight granularity (the paper's): w_u^2 / sum_{v >= u} w_v^2 within each layer, weights
    sorted ascending by w^2. Channel granularity: the same normalisation of the unit's
    squared-L2 filter norms (mean over coupled producers). Already comparable across
    layers, so no global normaliser.
    """

    granularities = ("channel", "weight")
    global_normalizer = None

    def channel_scores(self, unit) -> Optional[torch.Tensor]:
        if not unit.producers:  # a channel selection's unit: no filters to measure
            return None
        squares = [producer_filters(p).pow(2).sum(1) for p in unit.producers]
        return lamp_normalize(scatter_to_unit(unit, squares, unit.producers))

    def weight_scores(self, name, param) -> torch.Tensor:
        return lamp_normalize(param.detach().pow(2)).to(param.device)
