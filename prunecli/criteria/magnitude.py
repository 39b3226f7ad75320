"""Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NIPS 2015, arXiv:1506.02626.

Unstructured magnitude pruning: a weight's score is |w|. It has no channel scores; the
filter-level magnitude criteria are l1 and l2.
"""

from __future__ import annotations

import torch

from prunecli.errors import OptionError
from prunecli.criteria._registry import Criterion, register_criterion


@register_criterion("magnitude")
class Magnitude(Criterion):
    """Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NIPS 2015, arXiv:1506.02626.

    Weight score = |w|; weight granularity only (use l1 or l2 for filters). Counts
    (``--count-rule reference``): ceil(n * p) of the n remaining weights, as the lottery-
    ticket reference (open_lth) prunes each round.
    """

    granularities = ("weight",)
    global_normalizer = None
    count_rule = "remove-ceil"

    def channel_scores(self, unit) -> torch.Tensor:
        raise OptionError("magnitude scores single weights: use {granularity} weight, or l1 / l2 for channels")

    def weight_scores(self, name, param) -> torch.Tensor:
        return param.detach().abs()
