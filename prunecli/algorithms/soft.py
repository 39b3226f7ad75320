"""Soft pruning while training: Soft Filter Pruning (SFP) and FPGM as published.

He et al., "Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks",
IJCAI 2018, arXiv:1808.06866; He et al., "Filter Pruning via Geometric Median for Deep
Convolutional Neural Networks Acceleration", CVPR 2019, arXiv:1811.00250.

``prunecli prune CKPT --method l2 --soft --rate R --epochs N`` is SFP;
``--method geomedian --soft --mask-grads`` is FPGM's reference training.
"""

from __future__ import annotations

from typing import Optional

import torch

from prunecli._console import log
from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.algorithms._training import MakePruner, PruningCallback, filter_masks, fold_constant_channels, layer_selection, recalibrate_batchnorm, share_masks as _share
from prunecli.criteria import Criterion
from prunecli.engine.trainer import FitState
from prunecli.surgery.masks import apply_masks, bind_masks, combine


class SoftPruningCallback(PruningCallback):
    """Re-selects at fit start and every ``every`` epochs (and at the last epoch), zeroing the selection.

    Between selections only the selected *filters* are zeroed (the producing conv/linear
    weight rows, `filter_masks`), as the SFP and FPGM references do; the BatchNorm after
    them and the next layer's input channels stay, so gradients still reach the filters.
    Without ``mask_grads`` the zeroed filters keep their gradients and train on between
    selections, so a filter pruned at one epoch end can come back at the next (SFP). With
    ``mask_grads`` (FPGM's reference) the selection is enforced as a hard mask until the
    next one: its gradients are zeroed every step and, because SGD momentum and weight
    decay would still move a zero-gradient weight, the weights are re-zeroed after every
    step too, so pruned entries stay exactly zero between selections. The final selection
    (at the last epoch) becomes the checkpoint's hard mask either way.

    ``hard_epochs`` K > 0 (``--hard-epochs``, not in the papers) makes the selection at the
    end of epoch N - K the final one: the last K epochs train with it applied hard, on whole
    dependency groups, so the network adapts to what ``compress`` removes. Without it, the
    hard mask also drops what the zeroed filters' BatchNorm shifts still passed on; a
    constant folded into the next layer's bias is exact only away from its zero padding,
    so a soft run loses accuracy when it is made hard (most on small images).
    """

    key = "soft_pruning"

    def __init__(self, make_pruner: MakePruner, *, every: int = 1, mask_grads: bool = False, grouping: str = "dependency", hard_epochs: int = 0):
        super().__init__(make_pruner)
        self.every = max(1, int(every))
        self.hard_epochs = max(0, int(hard_epochs))
        self.mask_grads = bool(mask_grads)
        self.grouping = grouping
        self.unremovable: Optional[int] = None  # --grouping layer: filters masked that compress cannot remove
        self._grad_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._grad_version: Optional[int] = None

    def on_fit_start(self, state: FitState) -> None:
        super().on_fit_start(state)
        if not state.resumed and state.epoch < state.epochs:
            self._reselect(state, final=False)  # the references mask once before training starts

    def before_eval(self, state: FitState) -> None:
        last_soft = state.epochs - self.hard_epochs  # the epoch whose selection is final
        if state.epoch > last_soft:
            return  # the hard epochs: the final masks are enforced by the trainer
        final = state.epoch == last_soft
        if final or state.epoch % self.every == 0:
            self._reselect(state, final=final)

    def _reselect(self, state: FitState, *, final: bool) -> None:
        if self.grouping == "layer":
            self._reselect_layers(state, final=final)
            return
        if final:  # hard from now on: the whole dependency group, exactly what compress removes
            self.select(state, apply=False)
            plan = self.last_plan
            apply_masks(state.model, filter_masks(plan))  # the soft state of this last selection
            fold_constant_channels(state, plan)  # what the zeroed filters' BatchNorm shifts still add
            masked = self.pruner.mask(plan)
            state.set_masks(combine(self.base, masked.masks))
            recalibrate_batchnorm(state)  # statistics of the layers after the removed channels
            return
        self.select(state, apply=False)
        soft = filter_masks(self.last_plan)  # the filters only, as the references zero them
        if self.mask_grads:
            state.set_masks(combine(self.base, soft))  # enforced (and gradients masked) until the next selection
            apply_masks(state.model, soft)
        else:
            apply_masks(state.model, soft)  # zeroed once; the filters train on and may come back
            state.masks_changed()

    @torch.no_grad()
    def _reselect_layers(self, state: FitState, *, final: bool) -> None:
        """--grouping layer: per-layer filter masks (`layer_selection`), as the references train.

        At the end the per-layer masks become hard, and the channels every producer of a
        unit dropped are masked across their whole dependency group, so ``compress``
        removes them; the other masked filters stay as zero weights (reported).
        """
        pruner = self.pruner
        pruner.rescore()
        was = state.model.training
        state.model.eval()
        try:
            removable, soft = layer_selection(pruner)
            _share(state, soft)
            apply_masks(state.model, soft)
            if final:
                if removable.pruned:
                    fold_constant_channels(state, removable)
                group = pruner.mask(removable).masks if removable.pruned else {}
                masks = combine(combine(self.base, soft), group)
                state.set_masks(masks)
                recalibrate_batchnorm(state)
                covered = sum(len(p.prune) * len(p.unit.producers) for p in removable.pruned)
                zeroed = sum(int((~m).flatten(1).all(1).sum()) for m in soft.values())
                self.unremovable = zeroed - covered
            elif self.mask_grads:
                state.set_masks(combine(self.base, soft))
            else:
                state.masks_changed()
        finally:
            state.model.train(was)

    def on_fit_end(self, state: FitState) -> None:
        if self.unremovable:
            log(
                f"--grouping layer: {self.unremovable} masked filters feed residual adds whose other inputs kept "
                "those channels: compress cannot remove them (they stay as zero weights)"
            )

    @torch.no_grad()
    def after_backward(self, state: FitState) -> None:
        if not self.mask_grads:
            return
        if self._grad_version != state.masks_version:
            self._grad_pairs = [(t, m) for t, m in bind_masks(state.model, state.masks) if isinstance(t, torch.nn.Parameter)]
            self._grad_version = state.masks_version
        for t, m in self._grad_pairs:
            if t.grad is not None:
                t.grad.mul_(m)


@register_algorithm("soft")
class Soft(Algorithm):
    """Soft pruning while training: re-select every epoch, pruned filters may return (He et al., SFP, IJCAI 2018, arXiv:1808.06866; FPGM, CVPR 2019, arXiv:1811.00250).

    ``prune --soft --epochs N`` (``--mask-grads`` for FPGM's reference, ``--reselect-every K``).
    Any channel criterion; the selection is the criterion's, at the given rate, on the
    weights as they are at each epoch end.
    """

    criteria_note = "channel criteria"
    trains = True

    def accepts(self, criterion: Criterion) -> Optional[str]:
        why = super().accepts(criterion)
        if why:
            return why
        if "channel" not in criterion.granularities:
            return f"{criterion.name} scores single weights: soft pruning re-selects filters (use l1, l2, geomedian ...)"
        return None

    def callback(
        self, make_pruner: MakePruner, *, every: int = 1, mask_grads: bool = False, grouping: str = "dependency", hard_epochs: int = 0
    ) -> SoftPruningCallback:
        return SoftPruningCallback(make_pruner, every=every, mask_grads=mask_grads, grouping=grouping, hard_epochs=hard_epochs)
