"""Gradual pruning: Zhu & Gupta's automated gradual pruner (AGP).

Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
compression", ICLR 2018 workshop, arXiv:1710.01878. The sparsity rises from 0 to the
final rate s_f along s_t = s_f * (1 - (1 - t/T)^3) over the first T epochs, re-selected
every K epochs, then the network trains on with the final masks. Distiller, NNI and
SparseML all ship it.

``prunecli prune CKPT --method l1 --rate 0.5 --prune-schedule agp --epochs N
[--prune-epochs T] [--reselect-every K]``; channels or single weights.
"""

from __future__ import annotations

from typing import Optional

from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.algorithms._training import MakePruner, PruningCallback, scaled
from prunecli.engine.trainer import FitState
from prunecli.surgery.masks import combine


def agp_fraction(epoch: int, ramp_epochs: int) -> float:
    """Share of the final sparsity reached after ``epoch`` epochs: 1 - (1 - t/T)^3, 1 from T on."""
    t = min(max(epoch, 0), ramp_epochs) / ramp_epochs
    return 1.0 - (1.0 - t) ** 3


class GradualCallback(PruningCallback):
    """At the end of every ``every``-th epoch up to ``ramp_epochs`` (and at T itself), select at
    s_f * agp_fraction(t) and enforce those masks (hard) until the next selection.

    Every rate of the selection (the base rate, --layer-rates, --layer-rate) ramps by the
    same factor. Entries pruned at one step are zero at the next, so norm criteria keep
    them pruned; criteria that rank zero filters elsewhere (geomedian) may swap them.
    """

    key = "gradual_pruning"

    def __init__(self, make_pruner: MakePruner, *, ramp_epochs: int, every: int = 1):
        super().__init__(make_pruner)
        self.ramp = max(1, int(ramp_epochs))
        self.every = max(1, int(every))
        self._final = None

    def on_fit_start(self, state: FitState) -> None:
        super().on_fit_start(state)
        self._final = self.pruner.selection

    def before_eval(self, state: FitState) -> None:
        t = state.epoch
        if t > self.ramp or (t % self.every and t != self.ramp):
            return
        factor = agp_fraction(t, self.ramp)
        masked = self.select(state, selection=scaled(self._final, factor))
        state.set_masks(combine(self.base, masked.masks))


@register_algorithm("gradual")
class Gradual(Algorithm):
    """Gradual pruning along a cubic sparsity ramp (Zhu & Gupta, "To prune, or not to prune", arXiv:1710.01878).

    ``prune --prune-schedule agp --epochs N [--prune-epochs T] [--reselect-every K]``:
    s_t = s_f * (1 - (1 - t/T)^3), masks hard between selections. Channels or weights.
    """

    criteria_note = "any criterion"
    trains = True

    def callback(self, make_pruner: MakePruner, *, ramp_epochs: int, every: int = 1) -> GradualCallback:
        return GradualCallback(make_pruner, ramp_epochs=ramp_epochs, every=every)

    def accepts(self, criterion) -> Optional[str]:
        return super().accepts(criterion)
