"""Sparse Structure Selection's gates, as the criterion ``prune --method sss`` names.

Huang & Wang, "Data-Driven Sparse Structure Selection for Deep Neural Networks", ECCV
2018, arXiv:1707.01213. SSS has no scores to rank before training: a scaling factor
(gate) per residual block, per group of a grouped convolution or per channel is trained
with the weights under an L1 penalty, and what its gate drives to zero is removed. The
training is the sss algorithm's (prunecli.algorithms.sss); this marker tells the prune
stage which granularities SSS has and that its mask is learned.
"""

from __future__ import annotations

from prunecli.criteria._registry import Criterion, register_criterion


@register_criterion("sss")
class SparseStructureSelection(Criterion):
    """Gates trained with an L1 penalty by accelerated proximal gradient; zero gates remove blocks, groups or channels (Huang & Wang, ECCV 2018, arXiv:1707.01213).

    ``prune --method sss --epochs N --granularity block|group|channel [--sss-gamma 0.01]``:
    a gate per residual block (the paper's depth selection), per cardinality group of a
    ResNeXt block, or per channel inside a block; then ``compress`` drops the dead blocks
    and removes the dead channels.
    """

    granularities = ("block", "group", "channel")
    global_normalizer = None  # the gates decide: nothing is ranked
    learned = "sss"
