"""One-shot pruning: score once on the given weights, select once, mask or remove.

The setting of Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017,
arXiv:1608.08710, and the prune-once baseline of every later paper: prune a trained
network in one step, then fine-tune (a separate stage).
"""

from __future__ import annotations

from typing import Optional

from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.algorithms._training import MakePruner, PruningCallback
from prunecli.engine.trainer import FitState
from prunecli.surgery.masks import combine
from prunecli.surgery.plan import Plan
from prunecli.surgery.pruner import Pruner


@register_algorithm("one-shot")
class OneShot(Algorithm):
    """Score once, select once (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017, arXiv:1608.08710).

    With ``target_macs`` the base rate is searched so that the compressed model loses at
    least that fraction of its MACs, counted on the real compressed model.
    """

    criteria_note = "any criterion"

    def plan(self, pruner: Pruner, *, target_macs: Optional[float] = None) -> Plan:
        return pruner.plan_for_macs(target_macs) if target_macs is not None else pruner.plan()


class OneShotCallback(PruningCallback):
    """``prune --epochs N`` without --soft/--prune-schedule/--rounds: select once before the
    first epoch, then train with the masks enforced (prune and fine-tune in one stage)."""

    key = "one_shot_pruning"

    def __init__(self, make_pruner: MakePruner, *, target_macs: Optional[float] = None):
        super().__init__(make_pruner)
        self.target_macs = target_macs

    def on_fit_start(self, state: FitState) -> None:
        super().on_fit_start(state)
        if state.resumed:
            return
        if self.target_macs is not None:
            was = state.model.training
            state.model.eval()
            try:
                plan = self.pruner.plan_for_macs(self.target_macs)
                masked = self.pruner.mask(plan)
            finally:
                state.model.train(was)
        else:
            masked = self.select(state)
        state.set_masks(combine(self.base, masked.masks))
