"""Latency-targeted selection: per-unit widths that keep the most importance per millisecond saved.

``prune --target-latency F`` removes the fraction F of the model's latency as a latency
table predicts it (prunecli.metrics.latency_table), choosing channels as HALP does
(Shen et al., "Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022): every
unit offers its next removal (its lowest-scored channels not yet removed, a rounding step
of them), priced at the importance it loses (the sum of their scores) over the latency it
saves (the table's prediction before minus after, given every unit's current width). The
cheapest offer per millisecond is taken, the offers of the units sharing a layer with it
are priced again, and so on until the predicted latency is at most (1 - F) of the dense
model's. A unit on a latency plateau (a kernel that costs the same for 40 channels as for
48) saves nothing by its next step: it also offers the removals that reach its next grid
widths, priced over what they save together, so the greedy can take a staircase step.

Scores: the criterion's channel scores (what `Pruner.plan` ranks by). With ``--scope
global`` they are normalised as the criterion's global selection normalises them; with
``--scope layerwise`` each unit's scores are divided by their mean, so every layer's
average channel is worth 1 and the allocation still trades layers against each other
(a latency target is a property of the whole model; "layerwise" there means the scores
are made comparable per layer, not that every layer loses the same share). Either way a
unit's channel is worth its score times the number of layers producing it: removing it
removes a filter from each (HALP sums the importance over the group's layers), and a
residual unit coupling ten convs is not as cheap to empty as one conv's output.

Constraints: ``--skip``, ``--protect``, unscorable units stay whole; ``--layer-rate(s)``
and ``--max-layer-rate`` cap a unit's removed share (a rate of 0 leaves it whole); kept
counts are multiples of the unit's rounding step (``--round-to N``; ``--round-to auto``:
the widths where the table steps down); a unit keeps at least one step.

Bound: where each unit's latency is linear in its own width and no layer couples two
units, the offers' prices only rise as a unit shrinks (scores are taken lowest first),
the greedy is the exact solution of the fractional relaxation, and its integral answer
loses at most the importance of one removal step more than the optimum. Where a layer
couples two units (its input and its output width), the latency is bilinear and the
greedy is a heuristic; tests/test_latency_table.py checks it against a brute force.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from prunecli.metrics.latency_table import LatencyTable, Link
from prunecli.surgery.plan import channels_at, normalise, position_scores
from prunecli.surgery.units import Unit

# with a latency target there is no base rate: a unit may lose at most this share unless a
# --layer-rate/--max-layer-rate caps it lower (the same ceiling as --target-macs's search)
NO_CAP = 0.99


def unit_links(pruner) -> tuple[list[Link], dict[str, int]]:
    """Which unit gives each conv/linear layer its input and output channels, and every unit's width."""
    graph = pruner.graph
    dg = graph.dg
    links: list[Link] = []
    widths: dict[str, int] = {}
    for u in pruner.units:
        widths[u.root] = u.channels
        if u.group is None:
            continue
        for item in u.group.items:
            module = item.dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            name = graph.names.get(module)
            if name is None:
                continue
            links.append(Link(u.root, name, "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"))
    return links, widths


@dataclass
class Offer:
    """What a unit allocates over: its channel slots, their scores ascending, its allowed kept counts."""

    root: str
    slots: int  # channels, or positions of a grouped unit
    group: int  # channels per slot (a grouped unit's conv groups; else 1)
    order: torch.Tensor  # slot indices, lowest normalised score first
    prefix: list[float]  # prefix[k]: importance of the k lowest slots
    keeps: list[int]  # allowed kept slot counts, ascending (the full width included)


@dataclass
class Allocation:
    widths: dict[str, int]  # root -> channels kept
    predicted_ms: float
    dense_ms: float  # the table's prediction at full width
    removed_importance: float
    offers: dict[str, Offer] = field(default_factory=dict)


def make_offer(root: str, slot_scores: torch.Tensor, group: int, step: int, max_rate: float, step_widths: Optional[list[int]] = None) -> Offer:
    """An `Offer` of a unit with these (normalised) slot scores, rounding step (slots) and cap on the removed share.

    ``step_widths``: allowed widths in channels (``--round-to auto``) instead of multiples of ``step``.
    """
    slots = len(slot_scores)
    order = torch.sort(slot_scores.double(), stable=True).indices
    prefix = [0.0]
    for v in slot_scores.double()[order].tolist():
        prefix.append(prefix[-1] + max(float(v), 0.0))
    floor = max(1, slots - int(slots * max_rate + 1e-9))
    if step_widths:
        keeps = {w // group for w in step_widths if w % group == 0}
    else:
        keeps = {m * step for m in range(1, slots // step + 1)} if slots >= step else set()
    keeps = sorted({k for k in keeps if floor <= k <= slots} | {slots})
    return Offer(root, slots, group, order, prefix, keeps)


def allocate(table: LatencyTable, offers: list[Offer], target_ms: float, *, lookahead: int = 3) -> Allocation:
    """Greedy HALP-style allocation until the table predicts at most ``target_ms`` (module docstring)."""
    by_root = {o.root: o for o in offers}
    keep = {o.root: o.slots for o in offers}  # kept slots
    widths = {r: keep[r] * by_root[r].group for r in keep}
    layers_of = {r: table.unit_layers(r) for r in by_root}
    neighbours = {r: set() for r in by_root}
    for r, ls in layers_of.items():
        for layer in ls:
            for other in (layer.in_unit, layer.out_unit):
                if other in by_root and other != r:
                    neighbours[r].add(other)
    dense_act = sum(layer.out_max * layer.out_elems for layer in table.layers) or 1
    rest_per_channel = {r: (table.rest_ms - table.rest_fixed_ms) * sum(layer.out_elems for layer in table.layers if layer.out_unit == r) / dense_act for r in by_root}

    def local(r: str, w: int) -> float:
        trial = {**widths, r: w}
        return sum(table.layer_ms(layer, trial) for layer in layers_of[r]) + rest_per_channel[r] * w

    def grid_below(r: str, w: int) -> list[int]:
        marks = set(table.unit_grids.get(r, []))
        for layer in layers_of[r]:
            c = table.configs[layer.config]
            if layer.out_unit == r:
                marks.update(c.out_grid)
            if layer.in_unit == r and not layer.depthwise:
                marks.update(x // max(1, layer.in_scale) for x in c.in_grid)
        return sorted((m for m in marks if m < w), reverse=True)[:lookahead]

    def best(r: str) -> Optional[tuple[float, int, float]]:
        """(importance per ms, new kept slots, ms saved) of unit r's cheapest next removal."""
        o = by_root[r]
        k = keep[r]
        lower = [x for x in o.keeps if x < k]
        if not lower:
            return None
        cands = {lower[-1]}
        for g in grid_below(r, k * o.group):
            at = [x for x in lower if x * o.group <= g]
            if at:
                cands.add(at[-1])
        now = local(r, k * o.group)
        choice = None
        for c in cands:
            saved = now - local(r, c * o.group)
            if saved <= 1e-12:
                continue
            cost = o.prefix[o.slots - c] - o.prefix[o.slots - k]
            price = cost / saved
            if choice is None or price < choice[0] - 1e-15 or (abs(price - choice[0]) <= 1e-15 and c > choice[1]):
                choice = (price, c, saved)
        return choice

    offers_now = {r: best(r) for r in by_root}
    predicted = table.predict(widths)
    dense = table.predict({})
    removed = 0.0
    while predicted > target_ms:
        live = [(v[0], r) for r, v in offers_now.items() if v is not None]
        if not live:
            break
        _, r = min(live)
        price, new_keep, _ = offers_now[r]
        o = by_root[r]
        removed += o.prefix[o.slots - new_keep] - o.prefix[o.slots - keep[r]]
        keep[r] = new_keep
        widths[r] = new_keep * o.group
        predicted = table.predict(widths)
        for other in {r} | neighbours[r]:
            offers_now[other] = best(other)
    return Allocation(widths=dict(widths), predicted_ms=predicted, dense_ms=dense, removed_importance=removed, offers=by_root)


def pruned_slots(offer: Offer, kept_channels: int) -> torch.Tensor:
    """The slots a unit loses to keep ``kept_channels``: its lowest-scored ones."""
    n = offer.slots - kept_channels // offer.group
    return torch.sort(offer.order[:n]).values


def unit_scores(unit: Unit, scores: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    """A unit's slot scores, normalised (``how``: the criterion's global normaliser, or "mean" per layer)."""
    s = normalise(scores, how)
    return position_scores(unit, s) if unit.conv_groups > 1 else s


def slot_channels(unit: Unit, slots: torch.Tensor) -> torch.Tensor:
    """Channel indices of slots (a grouped unit's positions -> one channel per group)."""
    return channels_at(unit, slots) if unit.conv_groups > 1 else slots


def unit_step(unit: Unit, round_to: int) -> int:
    """A unit's rounding step in slots (grouped units: one position, as the layer-wise selection rounds them)."""
    return 1 if unit.conv_groups > 1 else math.lcm(round_to, unit.multiple)


def latency_offers(pruner, table: LatencyTable, *, round_auto: bool = False) -> tuple[list[Offer], list]:
    """The Pruner's eligible units as offers (scores, caps, rounding), and the resolved unit plans.

    Caps: a unit's resolved rate under a selection whose base rate is `NO_CAP`, so
    ``--layer-rate``/``--layer-rates``/``--max-layer-rate`` cap it and nothing else does.
    """
    from dataclasses import replace

    from prunecli.surgery.plan import resolve

    criterion = pruner._needs_criterion()
    scores = pruner._channel_scores()
    sel = replace(pruner.selection, rate=NO_CAP)
    plans = resolve(pruner.units, sel, output_layer=pruner.output_layer, linear_layers=pruner._linear_layers())
    how = criterion.global_normalizer if sel.scope == "global" else "mean"
    offers = []
    for p in plans:
        if p.status == "prune" and p.unit.index not in scores:
            p.status, p.reason = "unscored", f"{criterion.name} cannot score it"
        if p.status != "prune" or p.unit.root not in table.units:
            continue
        u = p.unit
        # a channel of a unit is a filter in each layer producing it: its importance is the sum over them
        # (HALP's group importance), where the criterion's score is one filter's worth (norms average over
        # producers, and the normalisation makes the average 1). Without it, ResNet-56's residual units
        # (9-10 producers, every block's input and output) were the cheapest per ms and went to 1 channel
        s = unit_scores(u, scores[u.index], how) * max(1, len(u.producers))
        steps = table.step_widths(u.root) if round_auto else None
        offers.append(make_offer(u.root, s, max(1, u.conv_groups), unit_step(u, sel.round_to), p.rate, steps))
    return offers, plans


def plan_for_widths(plans: list, offers: list[Offer], widths: dict[str, int], notes: Optional[list[str]] = None):
    """The channel `Plan` that leaves every offered unit at ``widths[root]`` channels, lowest scores removed."""
    from prunecli.surgery.plan import Plan

    by_root = {o.root: o for o in offers}
    for p in plans:
        o = by_root.get(p.unit.root)
        if p.status != "prune" or o is None:
            p.rate = 0.0
            continue
        slots = pruned_slots(o, widths.get(o.root, p.size))
        p.prune = slot_channels(p.unit, slots)
        p.rate = len(p.prune) / p.size if p.size else 0.0
    return Plan("channel", plans, rate=None, notes=list(notes or []))


def snap_width(keep: int, steps: list[int], mode: str = "nearest") -> int:
    """``keep`` snapped to one of the step widths: the nearest (ties: the wider), or the widest at or below (``down``)."""
    if not steps:
        return keep
    if mode == "down":
        below = [w for w in steps if w <= keep]
        return max(below) if below else min(steps)
    return min(steps, key=lambda w: (abs(w - keep), -w))


def snap_plan(pruner, plan, table: LatencyTable, mode: str = "nearest"):
    """``--round-to auto`` on a rate's plan: each pruned unit's kept count snapped to its table's step widths.

    The channels removed are then the unit's lowest-scored ones (the criterion's scores),
    as many as the snapped count asks. Grouped units (kept per position) are left as planned.
    """
    scores = pruner._channel_scores()
    snapped = 0
    for p in plan.units:
        u = p.unit
        if p.status != "prune" or u.conv_groups > 1 or u.root not in table.units or u.index not in scores or not len(p.prune):
            continue
        keep = snap_width(p.kept, table.step_widths(u.root), mode)
        keep = max(1, min(p.size, keep))
        if keep != p.kept:
            snapped += 1
            p.prune = torch.sort(torch.sort(scores[u.index], stable=True).indices[: p.size - keep]).values
            p.rate = len(p.prune) / p.size
    plan.notes.append(f"round-to auto: {snapped} layer(s) moved to the widths where the latency table steps down ({mode})")
    return plan
