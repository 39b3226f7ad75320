"""Edge-popup scores as a criterion: how seed 000 ranks weights and channels by learned scores.

Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?", CVPR 2020,
arXiv:1911.13299, give every weight a score and keep the top scores; seed 000 adds a
channel mode and the rank formulas below. The scores are *trained* by the edgepopup
algorithm (prunecli.algorithms.edgepopup), which binds them to this criterion; the
formulas live here so that they can be read, and tested, on their own.

Channel rank of a unit's channel c, over every weight w of the producing layers' rows
that produce c (all producers of a dependency group together, so coupled layers are
ranked as one):

* ``absolute``: mean |s_w| (hidden-networks' channel score);
* ``relevant`` with ``rank_abs``: sum |s_w| / sum |s_init_w|;
* ``relevant`` without it: sum s_w / sum |s_init_w|.

Mean |s| scales with 1/sqrt(fan_in) under kaiming init, so under one global threshold
an absolute rank empties the wide fan-in layers first (the FC head); the relevant rank
divides that scale out (METHODS.md, "Learned-score neuron pruning").
"""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from prunecli.criteria._registry import Criterion, register_criterion


def row_sums(scores: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Sum over each output row (filter or neuron) of a weight-shaped score tensor, float64."""
    s = scores.detach().double()
    s = s.abs() if absolute else s
    return s.reshape(s.shape[0], -1).sum(1)


def channel_rank(unit, scores: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor], *, rank: str = "absolute", rank_abs: bool = True) -> Optional[torch.Tensor]:
    """The rank of each channel of ``unit`` (float64, CPU; higher = keep), or None when no
    producer of it has scores. ``scores`` / ``initial`` map a layer name to its weight-shaped
    (current / initial) scores."""
    num = torch.zeros(unit.channels, dtype=torch.float64)
    den = torch.zeros(unit.channels, dtype=torch.float64)
    found = False
    for q in unit.producers:
        s = scores.get(q.name)
        if s is None:
            continue
        found = True
        local = q.local_idxs.cpu()
        roots = q.root_idxs.cpu()
        if rank == "absolute":
            rows = row_sums(s.cpu()[local])
            count = torch.full((len(local),), float(s[0].numel()), dtype=torch.float64)
            num.index_add_(0, roots, rows)
            den.index_add_(0, roots, count)
        else:
            rows = row_sums(s.cpu()[local], absolute=rank_abs)
            base = row_sums(initial[q.name].cpu()[local])
            num.index_add_(0, roots, rows)
            den.index_add_(0, roots, base)
    if not found:
        return None
    return num / den.clamp(min=1e-300)


@register_criterion("edgepopup")
class EdgePopup(Criterion):
    """Learned scores per weight, the top kept (Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?", CVPR 2020, arXiv:1911.13299).

    ``prune --method edgepopup --epochs N``: the weights are frozen and a score per weight
    is trained through a straight-through estimator (prunecli.algorithms.edgepopup);
    ``--granularity weight`` keeps the top |score| weights, ``channel`` the top channels
    by ``--rank`` (see the module docstring). Counts as hidden-networks: a rate r removes
    int(r * n) entries of a layer.
    """

    granularities = ("channel", "weight")
    global_normalizer = None  # the rank formulas make units comparable themselves
    count_rule = "remove-floor"  # hidden-networks: j = int((1 - k) * numel) lowest scores removed
    learned = "edgepopup"

    def __init__(self, *, rank: str = "absolute", rank_abs: bool = True):
        super().__init__()
        if rank not in ("absolute", "relevant"):
            raise ValueError(f"rank {rank!r}: absolute or relevant")
        self.rank = rank
        self.rank_abs = bool(rank_abs)
        self.scores: dict[str, torch.Tensor] = {}  # bound by the algorithm: layer name -> scores
        self.initial: dict[str, torch.Tensor] = {}

    def bind(self, scores: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]) -> None:
        self.scores, self.initial = dict(scores), dict(initial)

    def channel_scores(self, unit) -> Optional[torch.Tensor]:
        return channel_rank(unit, self.scores, self.initial, rank=self.rank, rank_abs=self.rank_abs)

    def weight_scores(self, name: str, param: torch.Tensor) -> torch.Tensor:
        layer = name[: -len(".weight")] if name.endswith(".weight") else name
        s = self.scores.get(layer)
        if s is None:
            raise KeyError(f"no edge-popup scores for {layer}")
        return s.detach().abs()
