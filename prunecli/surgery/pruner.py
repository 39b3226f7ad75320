"""The Pruner: plan, mask and remove channels (or single weights) of a model in memory.

    pruner = Pruner(model, get_criterion("geomedian"), Selection(rate=0.4), example_input=x)
    plan = pruner.plan()        # scores -> which channels each dependency unit loses
    pruner.mask(plan)           # zero whole dependency groups; every shape stays
    pruner.remove(plan)         # or remove them physically; returns the replayable history

Everything happens on the model's device. Criteria that need gradients read
``calibration``, an iterable of (inputs, labels) batches on that device, once.

A mask means exactly what removal will do: `mask` removes the plan from a copy of the
model while tracking which entries survive (surgery/tracking.py), and those entries are
the mask. The copy comes back with the masks, so callers can measure the compressed
model or keep it.

The criterion is anything with the `Scorer` interface (prunecli.criteria implements it);
the Pruner does not know criteria by name.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional, Protocol

import torch
import torch.nn as nn

from prunecli.config.prune import Selection, check_target_macs
from prunecli._progress import step_bar
from prunecli.errors import OptionError, PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.models.layers import prunable_layers
from prunecli.surgery.masks import Masks, apply_masks, maskable_tensors
from prunecli.surgery.plan import (
    Plan,
    UnitPlan,
    resolve,
    select_global,
    select_layerwise,
    select_layerwise_remaining,
    select_weights_global,
    select_weights_layerwise,
)
from prunecli.surgery.removal import apply_plan, check_runs, dead_channels
from prunecli.surgery.tracking import masks_from_kept, prune_tracking_entries, removed_copy
from prunecli.surgery.units import Graph, Unit, build_graph, layer_weights, output_layer, units

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Scorer(Protocol):
    """What the Pruner needs of a criterion (prunecli.criteria.Criterion implements it)."""

    name: str
    granularities: tuple[str, ...]
    needs_data: bool
    global_normalizer: Optional[str]
    weight_global_normalizer: Optional[str]

    def prepare(self, model: nn.Module, units: list[Unit], calibration: Optional[Batches]) -> None: ...

    def channel_scores(self, unit: Unit) -> Optional[torch.Tensor]: ...

    def select_channels(self, unit: Unit, n_prune: int, rate: Optional[float] = None) -> torch.Tensor: ...

    def removed_count(self, size: int, rate: float, rule: Optional[str]) -> int: ...

    def weight_scores(self, name: str, param: torch.Tensor) -> torch.Tensor: ...


@dataclass(eq=False)
class Masked:
    """What `Pruner.mask` did."""

    masks: Masks  # entries this plan zeroes (original shapes; tensors that lose nothing are left out)
    compressed: Optional[nn.Module]  # a copy with the plan removed physically (channel plans only)
    history: list  # Torch-Pruning's record of that removal, replayable on a fresh model
    kept: dict[str, torch.Tensor]  # tensor name -> the copy's kept flat indices (surgery/tracking.py)


@dataclass(eq=False)
class Removal:
    """What `Pruner.remove` did to the model."""

    history: list  # Torch-Pruning's record of this removal, replayable on a fresh model
    kept: dict[str, torch.Tensor]  # tensor name -> kept flat indices of the original tensor


class Pruner:
    """Plans, masks and removes on ``model``, in place, on its device (see the module docstring).

    ``criterion`` and ``selection`` are needed by `plan` and `plan_for_macs` only;
    `plan_zeroed` (what ``compress`` removes) needs neither. ``example_input`` is a batch
    of the model's input shape (zeros will do) used to trace the model.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Optional[Scorer] = None,
        selection: Optional[Selection] = None,
        *,
        example_input: torch.Tensor,
        granularity: str = "channel",
        calibration: Optional[Batches] = None,
        name: str = "model",
    ):
        if granularity not in ("channel", "weight"):
            raise OptionError(f"{{granularity}} {granularity!r}: valid: channel, weight")
        if criterion is not None and granularity not in criterion.granularities:
            raise OptionError(
                f"criterion {criterion.name!r} prunes at {{granularity}} {', '.join(criterion.granularities)}, not {granularity!r}"
            )
        self.model = model
        self.criterion = criterion
        self.selection = selection or Selection()
        self.granularity = granularity
        self.calibration = calibration
        self.name = name
        self._example = example_input
        self._graph: Optional[Graph] = None
        self._units: Optional[list[Unit]] = None
        self._scores: Optional[dict[int, torch.Tensor]] = None
        self._notes: list[str] = []
        self._output_layer: Optional[str] = None

    # -- what the model is made of

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    @property
    def example(self) -> torch.Tensor:
        """The example input, on the model's device (wherever the model has moved since)."""
        if self._example.device != self.device:
            self._example = self._example.to(self.device)
        return self._example

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = build_graph(self.model, self.example, name=self.name)
        return self._graph

    @property
    def units(self) -> list[Unit]:
        if self._units is None:
            self._units = units(self.graph)
        return self._units

    @property
    def output_layer(self) -> Optional[str]:
        if self._output_layer is None:
            # channel plans trace the model anyway, and the trace saw the layers run
            self._output_layer = self.graph.output_layer if self.granularity == "channel" else output_layer(self.model, self.example)
        return self._output_layer

    def _linear_layers(self) -> set[str]:
        return {n for n, m in prunable_layers(self.model) if isinstance(m, nn.Linear)}

    # -- plans

    def plan(self, rate: Optional[float] = None, *, remaining: bool = False) -> Plan:
        """The selection's plan (``rate`` replaces its base rate).

        ``remaining``: rates apply to the entries still alive, and the already-pruned ones
        (channels whose output is identically zero, weights exactly zero) are removed
        again without counting: iterative pruning's "p of the remaining weights" per
        round (Han et al. 2015; Frankle & Carbin 2019).
        """
        sel = self.selection if rate is None else replace(self.selection, rate=rate)
        if self.granularity == "weight":
            return self._weight_plan(sel, remaining)
        return self._channel_plan(sel, remaining)

    def rescore(self) -> None:
        """Forget the scores: the next plan scores the weights as they are now (re-selection while training)."""
        self._scores = None
        self._notes = []

    def _needs_criterion(self) -> Scorer:
        if self.criterion is None:
            raise PruneCliError("this Pruner has no criterion: pass one to plan by scores")
        return self.criterion

    def _channel_scores(self) -> dict[int, torch.Tensor]:
        """Each eligible unit's channel scores (float64, CPU), computed once."""
        if self._scores is not None:
            return self._scores
        criterion = self._needs_criterion()
        criterion.prepare(self.model, self.units, self.calibration)
        scores: dict[int, torch.Tensor] = {}
        unscored: list[str] = []
        for p in resolve(self.units, self.selection, output_layer=self.output_layer, linear_layers=self._linear_layers()):
            if p.status != "prune":
                continue
            s = criterion.channel_scores(p.unit)
            if s is None:
                unscored.append(p.unit.root)
            else:
                scores[p.unit.index] = s.detach().double().cpu()
        if unscored:
            if not scores:
                raise PruneCliError(f"criterion {criterion.name!r} cannot score any prunable layer of {self.name} (e.g. slimming needs BatchNorm)")
            self._notes.append(f"{len(unscored)} layer group(s) {criterion.name} cannot score were left whole: {', '.join(unscored[:5])}")
        self._scores = scores
        return scores

    def _channel_plan(self, sel: Selection, remaining: bool = False) -> Plan:
        criterion = self._needs_criterion()
        scores = self._channel_scores()
        plans = resolve(self.units, sel, output_layer=self.output_layer, linear_layers=self._linear_layers())
        for p in plans:
            if p.status == "prune" and p.unit.index not in scores:
                p.status, p.reason = "unscored", f"{criterion.name} cannot score it"
        already = {p.unit.index: dead_channels(p.unit) for p in plans if p.status == "prune"} if remaining else {}
        already = {i: d for i, d in already.items() if len(d)}
        if sel.scope == "global":
            select_global(plans, scores, sel, criterion.global_normalizer, already=already)
        elif already:
            select_layerwise_remaining(plans, scores, sel, already)
        else:
            select_layerwise(
                plans,
                lambda u, n, r: criterion.select_channels(u, n, rate=r),
                sel,
                scores_of=lambda u: scores[u.index],
                count=criterion.removed_count,
            )
        for p in plans:
            if p.status == "prune" and len(p.prune) >= p.size:
                raise PruneCliError(f"pruning would empty {p.unit.root} ({p.size} channels); lower the rate")
        return Plan("channel", plans, rate=sel.rate, notes=list(self._notes))

    def _weight_plan(self, sel: Selection, remaining: bool = False) -> Plan:
        criterion = self._needs_criterion()
        layers = layer_weights(self.model)
        if self._scores is None:
            criterion.prepare(self.model, [], self.calibration)
        plans = resolve(layers, sel, output_layer=self.output_layer, linear_layers=self._linear_layers())
        if self._scores is None:
            self._scores = {
                p.unit.index: criterion.weight_scores(f"{p.unit.root}.weight", p.unit.module.weight).detach().double().cpu().flatten()
                for p in plans
                if p.status == "prune"
            }
        already = {}
        if remaining:
            for p in plans:
                if p.status == "prune":
                    zero = torch.nonzero(p.unit.module.weight.detach().flatten().cpu() == 0).flatten()
                    if len(zero):
                        already[p.unit.index] = zero
        if sel.scope == "global":
            select_weights_global(plans, self._scores, sel, criterion.weight_global_normalizer, already=already)
        else:
            select_weights_layerwise(plans, self._scores, sel.count_rule, already=already)
        note = "weight-level masks keep every shape: compress removes only channels that end up entirely zero"
        return Plan("weight", plans, rate=sel.rate, notes=[note])

    def plan_zeroed(self) -> Plan:
        """Remove every channel whose output is identically zero (what ``compress`` does)."""
        plans: list[UnitPlan] = []
        notes: list[str] = []
        for u in self.units:
            dead = dead_channels(u)
            if len(dead) == u.channels:  # a layer that is entirely zero keeps one (zero) channel
                dead = dead[1:]
                notes.append(f"{u.root}: every channel was zero; one zero channel kept so the layer still exists")
            if len(dead):
                plans.append(UnitPlan(u, "prune", prune=dead))
        return Plan("channel", plans, notes=notes)

    def plan_for_macs(
        self, target: float, *, plan_at: Optional[Callable[[float], Plan]] = None, upper: Optional[float] = None, what: str = "rate"
    ) -> Plan:
        """The plan whose removal takes away at least ``target`` of the MACs, at the lowest base rate.

        Bisection on the base rate; each candidate is removed from a copy and counted with
        ptflops, so the answer holds for the compressed model, not for an estimate.
        ``plan_at(x)`` searches another family of plans that grows with x, over [0, ``upper``]
        (``prune --from-sensitivity`` scales its per-layer rates by x); ``what`` names x in errors.
        """
        check_target_macs(target, self.granularity)
        shape = tuple(self.example.shape[1:])
        base = count_complexity(self.model, shape).macs
        plan_at = plan_at or self.plan

        def reduction(rate: float) -> tuple[float, Plan]:
            plan = plan_at(rate)
            return 1.0 - count_complexity(self._removed_copy(plan), shape).macs / base, plan

        if upper is None:
            eligible = [p for p in self.plan(0.0).units if p.status == "prune"]
            # the largest base rate that leaves every unit at least one channel (or position)
            widths = [p.size // max(1, p.unit.conv_groups) for p in eligible]
            feasible = min((1.0 - 1.0 / w for w in widths if w > 1), default=0.0)
            upper = min(0.99, self.selection.max_layer_rate or 0.99, feasible)
        lo, hi = 0.0, upper
        # each step removes a copy and counts it: seconds per step on a large model, so a bar
        steps = 1 + min(20, max(1, math.ceil(math.log2(max(upper, 1e-3) / 1e-3))))
        with step_bar(f"searching the {what} for --target-macs", steps, unit="plans") as bar:
            top, best = reduction(hi)
            if bar is not None:
                bar.advance(1)
            if top < target:
                digits = 1
                while round(top * 100, digits) >= round(target * 100, digits) and digits < 6:  # 99.99% must not read 100.0%
                    digits += 1
                raise OptionError(f"{{target_macs}} {target}: these settings remove at most {top * 100:.{digits}f}% of the MACs (at {what} {hi:g})")
            best_rate = hi
            for _ in range(20):
                mid = (lo + hi) / 2
                red, plan = reduction(mid)
                if bar is not None:
                    bar.advance(1)
                if red >= target:
                    hi, best, best_rate = mid, plan, mid
                else:
                    lo = mid
                if hi - lo < 1e-3:
                    break
        best.rate = round(best_rate, 4)
        return best

    # -- acting on a plan

    def _removed_copy(self, plan: Plan) -> nn.Module:
        return self._removed(plan)[0]

    def mask(self, plan: Plan, *, apply: bool = True, check: bool = True) -> Masked:
        """Zero what ``plan`` removes, in place: whole dependency groups for channel plans.

        ``apply=False`` only computes the masks (the model is left as it is). ``check=False``
        skips running the compressed copy, for a caller that runs it next anyway (inside
        prunecli.surgery.removal.must_run).
        """
        if plan.granularity == "weight":
            return self._mask_weights(plan, apply)
        blocked = [p.unit for p in plan.pruned if p.unit.stat_norms]
        if blocked:
            u = blocked[0]
            raise PruneCliError(
                f"a mask cannot stand for removing channels of {u.root}: {u.stat_norms[0]} normalises over them "
                "(LayerNorm/GroupNorm statistics change when a channel is zeroed); remove them directly instead "
                "(Pruner.remove; on the command line, prune --compress)"
            )
        shapes = {n: t.shape for n, t in maskable_tensors(self.model).items()}
        work, history, kept = self._removed(plan)
        if check:
            check_runs(work, self.example, self.name)
        # a tensor lost entries exactly when fewer ids came back than it had (ids are distinct)
        cut = [n for n, shape in shapes.items() if n in kept and kept[n].numel() < shape.numel()]
        masks = masks_from_kept(shapes, kept, cut)
        if apply:
            apply_masks(self.model, masks)
        return Masked(masks=masks, compressed=work, history=history, kept=kept)

    def _removed(self, plan: Plan) -> tuple[nn.Module, list, dict[str, torch.Tensor]]:
        """A copy of the model with ``plan`` removed: (copy, Torch-Pruning's history of it, kept indices).

        Removed from the model itself through its own trace and put back
        (prunecli.surgery.tracking.removed_copy); a graph holding unwrapped parameters
        (ViT's tokens), whose nodes Torch-Pruning replaces while pruning, is removed from a
        deep copy traced anew instead. So is a model in the middle of training (gradients
        held, or in train mode), and any model under torch.distributed: put back there,
        the two-process `prune --soft --epochs 2` of tests/test_distributed.py ended 3e-3
        away from the one-process run (masks equal), where the copy keeps them within float
        tolerance (why was not found: DDP's hooks on the parameters are the suspect). The
        saving matters for prune and compress, not for an epoch-end reselection.
        """
        graph = self.graph
        training = self.model.training or any(p.grad is not None for p in self.model.parameters())
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if _restorable(graph) and not training and not distributed:
            history = graph.dg.pruning_history()
            done = len(history)
            nodes = [n.module for n in graph.dg.module2node.values() if isinstance(n.module, nn.Module)]
            work, kept = removed_copy(self.model, lambda m: apply_plan(graph, plan), also=nodes)
            added = [list(h) for h in history[done:]]
            del history[done:]  # the model is whole again: so is its graph's record
            return work, added, kept
        work = copy.deepcopy(self.model)
        graph = build_graph(work, self.example, name=self.name)
        kept = prune_tracking_entries(work, lambda m: apply_plan(graph, plan))
        return work, [list(h) for h in graph.dg.pruning_history()], kept

    @torch.no_grad()
    def _mask_weights(self, plan: Plan, apply: bool = True) -> Masked:
        masks: Masks = {}
        for p in plan.pruned:
            w = p.unit.module.weight
            m = torch.ones(w.numel(), dtype=torch.bool)
            m[p.prune] = False
            masks[f"{p.unit.root}.weight"] = m.view(w.shape)
        if apply:
            apply_masks(self.model, masks)
        return Masked(masks=masks, compressed=None, history=[], kept={})

    def remove(self, plan: Plan, *, check: bool = True) -> Removal:
        """Remove ``plan`` physically from the model; its units and scores are traced anew afterwards.

        ``check=False`` skips the forward pass that checks the smaller model still runs, for
        a caller that runs it next anyway (inside prunecli.surgery.removal.must_run).
        """
        if plan.granularity != "channel":
            raise PruneCliError("weight-level plans keep every shape: mask them instead of removing")
        graph = self.graph
        done = len(graph.dg.pruning_history())
        kept = prune_tracking_entries(self.model, lambda m: apply_plan(graph, plan))
        if check:
            check_runs(self.model, self.example, self.name)
        self._units, self._scores, self._output_layer = None, None, None
        return Removal(history=[list(h) for h in graph.dg.pruning_history()[done:]], kept=kept)


def _restorable(graph: Graph) -> bool:
    """Can a removal through ``graph`` be undone by restoring module state (`removed_copy`)?

    Not when the graph holds unwrapped parameters: Torch-Pruning then swaps its own nodes
    for the pruned parameters.
    """
    from torch_pruning import ops

    return not any(getattr(node, "type", None) == ops.OPTYPE.PARAMETER for node in graph.dg.module2node.values())
