"""Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017, arXiv:1708.06519.

The BatchNorm scale of a channel is its importance. Torch-Pruning's BNScaleImportance on a
BatchNorm-only view of the group gives the same |gamma|; the formula is one line, so it is
written out instead of building that view.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from prunecli.criteria._registry import Criterion, register_criterion, scatter_to_unit


def batchnorms(unit) -> list:
    """The unit's affine BatchNorm layers (GroupNorm / LayerNorm scales are not the paper's)."""
    return [n for n in unit.norms if isinstance(n.module, nn.modules.batchnorm._BatchNorm) and n.module.affine]


@register_criterion("slimming")
class NetworkSlimming(Criterion):
    """Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017, arXiv:1708.06519.

    Channel score = |gamma| of its BatchNorm, averaged over the unit's BatchNorms when a
    residual add couples several. The paper trains with an L1 penalty on every gamma first
    and then cuts with one global threshold on the raw |gamma|, hence no normaliser.
    A unit without an affine BatchNorm (e.g. the classifier) has no gamma: channel_scores
    returns None and the caller skips and reports that unit. Channel granularity only.

    Counts (``--count-rule reference``): the reference takes the threshold at index
    int(N * p) of the sorted |gamma| and keeps only the channels strictly above it, so it
    prunes int(N * p) + 1 channels ("threshold" rule) plus every tie of the threshold;
    prunecli does not take the ties (on equal scales, e.g. untrained, they would empty
    layers). Unlike the reference, no layer is ever emptied (it fails at ResNet-164 /
    CIFAR-100 / 60%).

    On pre-activation nets (PreResNet, DenseNet) the BatchNorms that read the residual or
    concatenated stream are pruned through a channel-selection layer by default, as the
    reference does: only the next conv's inputs go (``prune --stream-bn``,
    prunecli.models.channel_selection). The stream's own groups hold no BatchNorm then, so
    they are unscored and keep their width, as in the reference.
    """

    granularities = ("channel",)
    global_normalizer = None
    count_rule = "threshold"
    scores_selection = True

    def channel_scores(self, unit) -> Optional[torch.Tensor]:
        bns = batchnorms(unit)
        if not bns:
            return None
        gammas = [bn.module.weight.detach().cpu()[bn.local_idxs].abs() for bn in bns]
        return scatter_to_unit(unit, gammas, bns)
