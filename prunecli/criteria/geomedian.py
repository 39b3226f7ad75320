"""He et al., "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration", CVPR 2019, arXiv:1811.00250.

A filter near the geometric median of its layer is the most replaceable one.

Torch-Pruning's `FPGMImportance` measures distances between |w|^p instead of the raw
filters, which merges filters of opposite sign; the distances here are on the raw weights.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch

from prunecli.errors import OptionError
from prunecli.criteria._registry import Criterion, lowest, register_criterion, scatter_to_unit
from prunecli.criteria.norm import filter_norms, producer_filters


def distance_sums(unit, alive: torch.Tensor) -> torch.Tensor:
    """sum_j ||F_i - F_j||_2 over each producer's alive filters, averaged over producers.

    Channels that are not ``alive`` neither get a score (0) nor count in the others' sums.
    """
    sums, views = [], []
    for p in unit.producers:
        keep = alive[p.root_idxs]
        f = producer_filters(p)[keep]
        sums.append(torch.cdist(f, f).sum(1))
        views.append(replace(p, local_idxs=p.local_idxs[keep], root_idxs=p.root_idxs[keep]))
    return scatter_to_unit(unit, sums, views)


@register_criterion("geomedian")
class GeometricMedian(Criterion):
    """He et al., "Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration", CVPR 2019, arXiv:1811.00250.

    Score of filter i = sum_j ||F_i - F_j||_2 over the layer's raw flattened filters; the
    smallest sums (nearest the geometric median) are pruned. FPGM-mix (``mix_norm`` =
    F in [0, 1]): round(F * n) channels with the smallest L2 filter norm go first, then the
    rest by distance sums computed among the norm-surviving filters only, as the reference
    does. Channel granularity only.

    Counts (``--count-rule reference``, the default): the reference removes int(C * r)
    filters per layer, and FPGM-mix rounds its two shares down separately:
    int(C * r * F) by norm plus int(C * r * (1 - F)) by distance.
    """

    granularities = ("channel",)
    global_normalizer = "mean"
    count_rule = "remove-floor"

    def __init__(self, *, mix_norm: float = 0.0):
        super().__init__()
        if not 0.0 <= float(mix_norm) <= 1.0:
            raise OptionError(f"{{mix_norm}} {mix_norm}: the FPGM-mix norm share must be in [0, 1]")
        self.mix_norm = float(mix_norm)

    def channel_scores(self, unit) -> Optional[torch.Tensor]:
        if not unit.producers:  # a channel selection's unit: no filters to compare
            return None
        return distance_sums(unit, torch.ones(unit.channels, dtype=torch.bool))

    def _norm_count(self, size: int, rate: float) -> int:
        return int(size * rate * self.mix_norm + 1e-9)

    def removed_count(self, size: int, rate: float, rule) -> int:
        if self.mix_norm and rule == "remove-floor":  # the reference's two shares, each rounded down
            return self._norm_count(size, rate) + int(size * rate * (1.0 - self.mix_norm) + 1e-9)
        return super().removed_count(size, rate, rule)

    def select_channels(self, unit, n_prune: int, rate=None) -> torch.Tensor:
        if rate is not None and self.mix_norm and n_prune == self.removed_count(unit.channels, rate, "remove-floor"):
            n_norm = self._norm_count(unit.channels, rate)
        else:
            n_norm = int(self.mix_norm * n_prune + 0.5)  # round half up; Python's round() is banker's
        by_norm = lowest(filter_norms(unit, 2), n_norm)
        alive = torch.ones(unit.channels, dtype=torch.bool)
        alive[by_norm] = False
        candidates = alive.nonzero().squeeze(1)
        by_distance = candidates[lowest(distance_sums(unit, alive)[candidates], n_prune - n_norm)]
        return torch.cat([by_norm, by_distance]).sort().values
