"""Iterative pruning in rounds, with weight rewinding: lottery-ticket IMP.

Han et al., "Learning both Weights and Connections for Efficient Neural Networks", NIPS
2015, arXiv:1506.02626 (prune, retrain, repeat); Frankle & Carbin, "The Lottery Ticket
Hypothesis: Finding Sparse, Trainable Neural Networks", ICLR 2019, arXiv:1803.03635
(rewind the survivors to their initial values before each retraining); Frankle et al.,
"Linear Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020,
arXiv:1912.05671 (rewind to an early epoch K instead).

``prunecli prune CKPT --method magnitude --granularity weight --rounds R --rewind init
--epochs E`` : each round removes ``--rate`` of the entries still alive, resets the
survivors to the rewind weights (``train --save-rewind K`` keeps them in the parent
checkpoint), then trains E epochs with a fresh optimizer and lr schedule. After R rounds
a layer's density is (1 - p)^R, to within each round's rounding.
"""

from __future__ import annotations

from typing import Optional

import torch

from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.algorithms._training import MakePruner, PruningCallback
from prunecli.engine.trainer import FitState
from prunecli.surgery.masks import apply_masks, combine


class IterativeCallback(PruningCallback):
    """At the start of every round (every ``round_epochs`` epochs): prune the rate of the
    remaining entries on the current weights, then rewind the survivors.

    ``rewind``: a state dict (parameters and buffers, BatchNorm statistics included) the
    model is reset to before the masks are re-applied, or None to keep training from the
    current weights (plain iterative pruning). The Trainer restarts the optimizer and the
    lr schedule at each round (``cycle_epochs``).
    """

    key = "iterative_pruning"

    def __init__(self, make_pruner: MakePruner, *, round_epochs: int, rewind: Optional[dict[str, torch.Tensor]] = None):
        super().__init__(make_pruner)
        self.round_epochs = max(1, int(round_epochs))
        self.rewind = rewind

    def on_epoch_start(self, state: FitState) -> None:
        if state.epoch % self.round_epochs:
            return
        masked = self.select(state, remaining=True)
        masks = combine(state.masks, masked.masks)
        if self.rewind is not None:
            with torch.no_grad():
                state.model.load_state_dict({k: v.to(state.device) for k, v in self.rewind.items()}, strict=True)
                apply_masks(state.model, masks)
        state.set_masks(masks)


@register_algorithm("iterative")
class Iterative(Algorithm):
    """Iterative pruning in rounds with optional rewinding (Han et al. 2015; Frankle & Carbin, "The Lottery Ticket Hypothesis", ICLR 2019, arXiv:1803.03635).

    ``prune --rounds R --epochs E [--rewind init|epoch:K]``: each round removes the rate of
    the remaining entries, rewinds the survivors, and trains E epochs.
    """

    criteria_note = "any criterion"
    trains = True

    def callback(self, make_pruner: MakePruner, *, round_epochs: int, rewind=None) -> IterativeCallback:
        return IterativeCallback(make_pruner, round_epochs=round_epochs, rewind=rewind)
