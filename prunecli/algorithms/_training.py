"""What the training-time algorithms share: a Trainer callback that re-selects with a Pruner.

Soft (SFP/FPGM), gradual (AGP) and iterative (lottery-ticket) pruning are each one
`PruningCallback` subclass on the Trainer (prunecli.engine.trainer): the callback builds
a `Pruner` on the live model at fit start and, when its schedule says so, scores the
weights as they are *now*, selects, and zeroes the selection in place
(`PruningCallback.select`). Which masks the trainer then enforces is the subclass's
choice (`FitState.set_masks`).

Under torchrun every rank scores its own copy of the (identical) weights; data-driven
criteria see different batches on different ranks, so the plan of rank 0 is broadcast
and applied everywhere: the ranks never diverge.

A callback's resume state is the masks the run started with (``base``: the parent's
hard masks), so a resumed run re-selects exactly as the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from prunecli.config.prune import Selection
from prunecli.errors import PruneCliError
from prunecli.engine.trainer import Callback, FitState
from prunecli.surgery.masks import Masks
from prunecli.surgery.plan import Plan
from prunecli.surgery.pruner import Masked, Pruner

MakePruner = Callable[[nn.Module], Pruner]


@dataclass(frozen=True)
class Selected:
    """One selection made during training: when, at which base rate, and how much it zeroed."""

    epoch: int  # epochs completed when it was made (0: before the first)
    rate: Optional[float]
    entries: int  # parameter entries the selection zeroes (whole dependency groups)
    kept_fraction: float  # of the selected tensors' entries


def scaled(sel: Selection, factor: float) -> Selection:
    """Every rate of ``sel`` times ``factor`` (AGP's ramp applies to per-layer rates too)."""
    from dataclasses import replace

    return replace(
        sel,
        rate=None if sel.rate is None else sel.rate * factor,
        layer_rates=[r * factor for r in sel.layer_rates],
        layer_rate=[(p, r * factor) for p, r in sel.layer_rate],
    )


def _broadcast_plan(plan: Plan, state: FitState) -> None:
    """Rank 0's choice on every rank (data-driven scores differ between ranks' batches)."""
    if not state.dist.enabled:
        return
    import torch.distributed as dist

    chosen = [p.prune.cpu() for p in plan.units]
    box = [chosen if state.dist.is_main else None]
    dist.broadcast_object_list(box, src=0)
    for p, prune in zip(plan.units, box[0]):
        p.prune = prune


def share_masks(state: FitState, masks: Masks) -> None:
    """Rank 0's masks on every rank, in place (see `_broadcast_plan`)."""
    if not state.dist.enabled:
        return
    import torch.distributed as dist

    box = [{k: v.cpu() for k, v in masks.items()} if state.dist.is_main else None]
    dist.broadcast_object_list(box, src=0)
    masks.clear()
    masks.update(box[0])


class PruningCallback(Callback):
    """Base: a Pruner on the live model; `select` re-scores, selects and zeroes in place."""

    def __init__(self, make_pruner: MakePruner):
        self.make_pruner = make_pruner
        self.pruner: Optional[Pruner] = None
        self.base: Masks = {}  # the hard masks the run started with (the parent's)
        self.selections: list[Selected] = []  # made by this process (a resumed run lists its own)
        self.last_plan: Optional[Plan] = None

    def on_fit_start(self, state: FitState) -> None:
        self.pruner = self.make_pruner(state.model)
        if not state.resumed:
            self.base = {k: v.detach().cpu().clone() for k, v in state.masks.items()}

    @torch.no_grad()
    def select(self, state: FitState, *, selection: Optional[Selection] = None, remaining: bool = False, apply: bool = True) -> Masked:
        """Score the current weights, select (``selection`` replaces the Pruner's) and zero it in place
        (``apply=False``: leave the model as it is). The plan is kept in ``last_plan``."""
        pruner = self.pruner
        assert pruner is not None, "select before on_fit_start"
        if selection is not None:
            pruner.selection = selection
        pruner.rescore()
        was_training = state.model.training
        state.model.eval()  # the trace and data-driven scores see inference behaviour (BN statistics)
        try:
            plan = pruner.plan(remaining=remaining)
            _broadcast_plan(plan, state)
            masked = pruner.mask(plan, apply=apply)
            self.last_plan = plan
        finally:
            state.model.train(was_training)
        zeroed = sum(int((~m).sum()) for m in masked.masks.values())
        total = sum(m.numel() for m in masked.masks.values())
        self.selections.append(Selected(state.epoch, plan.rate, zeroed, 1.0 - zeroed / total if total else 1.0))
        return masked

    def state_dict(self) -> dict[str, Any]:
        return {"base": dict(self.base)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        base = state.get("base") or {}
        self.base = {str(k): v.to(torch.bool) for k, v in base.items() if isinstance(v, torch.Tensor)}


def filter_masks(plan: Plan) -> Masks:
    """Masks of the producers' output filters only (conv/linear weight rows), for a channel plan.

    What the SFP and FPGM references zero between selections: the filter itself, not the
    BatchNorm after it nor the next layer's input channels, so a zeroed filter still gets
    gradients and can come back. `Pruner.mask` zeroes the whole dependency group instead
    (what removal will do); the final selection uses that.
    """
    masks: Masks = {}
    for p in plan.pruned:
        for q in p.unit.producers:
            local = q.local_idxs[torch.isin(q.root_idxs, p.prune)]
            if not len(local):
                continue
            name = f"{q.name}.weight"
            m = masks.get(name)
            if m is None:
                m = torch.ones_like(q.module.weight, dtype=torch.bool, device="cpu")
            if getattr(q.module, "transposed", False):  # ConvTranspose stores (in, out/groups, k...)
                m[:, local] = False
            else:
                m[local] = False
            masks[name] = m
    return masks


def layer_selection(pruner: Pruner) -> tuple[Plan, Masks]:
    """``--grouping layer``: every producing conv/linear of a prunable unit selects its own filters.

    The FPGM and SFP references mask each conv of a CIFAR ResNet with its own selection,
    including the convs whose outputs add into one residual stream; a dependency group
    cannot honour that (the channels of an add must go together), but the papers'
    accuracies were trained so. Each producer is scored alone (a one-producer view of its
    unit) with the unit's rate and the criterion's count rule.

    Returns the plan of the channels that *can* be removed (those every producer of a
    unit selected: a dependency group loses them whole) and the per-layer filter masks.
    """
    from dataclasses import replace

    from prunecli.surgery.plan import UnitPlan, resolve
    from prunecli.surgery.units import Producer

    criterion = pruner.criterion
    if criterion.needs_data:
        raise PruneCliError(f"--grouping layer scores each layer's own filters from its weights: {criterion.name} needs data (use l1, l2 or geomedian)")
    sel = pruner.selection
    plans = resolve(pruner.units, sel, output_layer=pruner.output_layer, linear_layers=pruner._linear_layers())
    masks: Masks = {}
    removable: list[UnitPlan] = []
    for p in plans:
        if p.status != "prune" or p.rate <= 0:
            continue
        unit = p.unit
        chosen_by_all: Optional[set[int]] = None
        for q in unit.producers:
            width = len(q.local_idxs)
            view = replace(
                unit,
                channels=width,
                producers=[Producer(q.name, q.module, q.local_idxs, torch.arange(width))],
                norms=[],
                positions=None,
                conv_groups=1,
            )
            n = criterion.removed_count(width, p.rate, sel.count_rule)
            if n <= 0:
                chosen_by_all = set()
                continue
            if n >= width:
                n = width - 1  # a layer never loses every filter
            scores = criterion.channel_scores(view)
            if scores is None:
                raise PruneCliError(f"--grouping layer scores each layer's own filters: {criterion.name} cannot (use l1, l2 or geomedian)")
            picked = criterion.select_channels(view, n, rate=p.rate)
            local = q.local_idxs[picked]
            m = masks.get(f"{q.name}.weight")
            if m is None:
                m = torch.ones_like(q.module.weight, dtype=torch.bool, device="cpu")
            if getattr(q.module, "transposed", False):
                m[:, local] = False
            else:
                m[local] = False
            masks[f"{q.name}.weight"] = m
            roots = set(q.root_idxs[picked].tolist())
            chosen_by_all = roots if chosen_by_all is None else chosen_by_all & roots
        if chosen_by_all:
            removable.append(UnitPlan(unit, "prune", rate=len(chosen_by_all) / unit.channels, prune=torch.tensor(sorted(chosen_by_all), dtype=torch.long)))
    return Plan("channel", removable, rate=sel.rate), masks


@torch.no_grad()
def recalibrate_batchnorm(state: FitState, max_batches: int = 100) -> int:
    """Re-estimate every BatchNorm's running statistics on training batches (adaptive BN).

    After a hard mask removes channels that soft training had left at a constant (a
    zeroed filter still leaves its BatchNorm's shift), the layers after them see a
    different input distribution than their running statistics describe. Li et al.,
    "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network Pruning", ECCV 2020,
    arXiv:2007.02491, show that re-estimating them recovers most of the accuracy. A plain
    average over up to ``max_batches`` batches of the current epoch, in train mode, no
    weight changes; returns the number of batches used.
    """
    bns = [m for m in state.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns or state.train_batches is None:
        return 0
    saved = [(m, m.momentum) for m in bns]
    was = state.model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    state.model.train()
    used = 0
    limit = min(max_batches, state.max_steps or max_batches)
    try:
        for x, _ in state.train_batches:
            state.model(x)
            used += 1
            if used >= limit:
                break
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        state.model.train(was)
    # every rank saw its own batches: the ranks keep the average, so their models stay equal
    _average_across_ranks([t for m in bns for t in (m.running_mean, m.running_var) if t is not None], state)
    return used


def _average_across_ranks(tensors: list[torch.Tensor], state: FitState) -> None:
    """In place: each tensor becomes its mean over the torchrun ranks (no-op in one process)."""
    if not state.dist.enabled:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.all_reduce(t)
        t.div_(state.dist.world_size)


def _in_channel_consumers(unit) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(module, local input indices, unit channel of each) for the conv/linear layers reading ``unit``."""
    from prunecli.models.layers import is_prunable

    group = unit.group
    if group is None:
        return []
    dg = group._DG if hasattr(group, "_DG") else None
    out = []
    for item in group.items:
        dep = item.dep
        is_out = dg.is_out_channel_pruning_fn(dep.handler) if dg is not None else dep.handler.__name__ != "prune_in_channels"
        module = dep.target.module
        if is_out or not is_prunable(module):
            continue
        out.append((module, torch.as_tensor([int(i) for i in item.idxs]), torch.as_tensor([int(i) for i in item.root_idxs])))
    return out


@torch.no_grad()
def fold_constant_channels(state: FitState, plan: Plan, max_batches: int = 4) -> int:
    """Fold what the pruned channels still contribute as constants into the biases of the layers reading them.

    A filter zeroed by soft pruning still leaves its BatchNorm's shift (and the
    activation of it) as a constant channel, and through residual adds that constant
    reaches the classifier; removing the channel drops it. Before the hard mask, each
    consumer with a bias measures, in eval mode on a few training batches, the mean output
    those constant input channels produce and adds it to its bias, as SFP's reference adds
    the pruned channels' BatchNorm values back when it builds the small model. Consumers
    without a bias are followed by a BatchNorm in the usual nets; `recalibrate_batchnorm`
    re-estimates its statistics afterwards. The hooks keep one running sum per consumer,
    not the activations; under torchrun the ranks average their sums. Returns the number
    of layers adjusted.
    """
    targets = []
    for p in plan.pruned:
        for module, local, roots in _in_channel_consumers(p.unit):
            if getattr(module, "bias", None) is None or getattr(module, "groups", 1) != 1 or getattr(module, "transposed", False):
                continue
            gone = local[torch.isin(roots, p.prune)]
            if len(gone):
                targets.append((module, gone))
    if not targets or state.train_batches is None:
        return 0
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}

    def measure(i, module, gone):
        def hook(_, args):
            x = args[0]
            only = torch.zeros_like(x)
            only[:, gone] = x[:, gone]
            if isinstance(module, nn.Linear):
                delta = torch.nn.functional.linear(only, module.weight)
                total, n = delta.reshape(-1, delta.shape[-1]).double().sum(0), delta.numel() // delta.shape[-1]
            else:
                delta = module._conv_forward(only, module.weight, None)
                total, n = delta.transpose(0, 1).reshape(delta.shape[1], -1).double().sum(1), delta.numel() // delta.shape[1]
            sums[i] = sums[i] + total if i in sums else total
            counts[i] = counts.get(i, 0) + n

        return hook

    handles = [m.register_forward_pre_hook(measure(i, m, gone)) for i, (m, gone) in enumerate(targets)]
    was = state.model.training
    state.model.eval()
    try:
        for n, (x, _) in enumerate(state.train_batches):
            state.model(x)
            if n + 1 >= max_batches:
                break
    finally:
        for h in handles:
            h.remove()
        state.model.train(was)
    adjusted = 0
    for i, (module, _) in enumerate(targets):
        if i not in sums:
            continue
        k = sums[i] / counts[i]
        _average_across_ranks([k], state)
        module.bias.add_(k.to(module.bias.dtype))
        adjusted += 1
    return adjusted
