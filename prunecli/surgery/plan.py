"""From settings and scores to a plan: which channels (or weights) each unit loses.

Rates are fractions *removed*. Per unit, the rate is resolved as

    --rate  <  --layer-rates R1,R2,... (by position)  <  --layer-rate PATTERN=R (last match wins)

and a unit is left alone when a ``--skip`` pattern matches it or ``--protect`` covers it.
A pattern is a glob on layer names (``prunecli info CKPT --layers`` lists them), a layer
number or a range of them (``16``, ``8-13``: 1-based over conv/linear layers in module
order, stem = 1, Li et al.'s numbering); it matches a unit when it matches one of the
unit's producing layers.

Layer-wise, a unit of C channels keeps int(C * (1 - rate)) of them (Li et al.), rounded
to a multiple of ``--round-to``. Globally, scores normalised per unit compete under one
threshold; no unit is ever emptied.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from prunecli.errors import PruneCliError, UsageError

PROTECT = ("none", "output", "head")


@dataclass
class Selection:
    rate: Optional[float] = None
    scope: str = "layerwise"
    layer_rate: list[tuple[str, float]] = field(default_factory=list)
    layer_rates: list[float] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    protect: str = "output"
    round_to: int = 1
    max_layer_rate: Optional[float] = None


@dataclass
class UnitPlan:
    unit: object  # prunecli.surgery.units.Unit
    status: str  # "prune", "skipped", "protected", "unscored"
    rate: float = 0.0  # requested fraction removed
    prune: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    reason: str = ""

    @property
    def channels(self) -> int:
        return self.unit.channels

    @property
    def kept(self) -> int:
        return self.unit.channels - len(self.prune)


def parse_layer_rate(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise UsageError(f"--layer-rate {text!r}: expected PATTERN=RATE, e.g. 'layer1.*.conv1=0.6'")
    try:
        rate = float(value)
    except ValueError:
        raise UsageError(f"--layer-rate {text!r}: {value!r} is not a number") from None
    return pattern, rate


def check_rate(rate: float, what: str) -> None:
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise PruneCliError(f"{what} {rate}: a rate is the fraction removed and must be in [0, 1)")


def matches(pattern: str, names: list[str], ids: list[int]) -> bool:
    """A glob on layer names, a layer number (``16``) or a range of numbers (``8-13``)."""
    if pattern.isdigit():
        return int(pattern) in ids
    lo, sep, hi = pattern.partition("-")
    if sep and lo.isdigit() and hi.isdigit():
        return any(int(lo) <= i <= int(hi) for i in ids)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def resolve(units, sel: Selection, *, output_layer: Optional[str], linear_layers: set[str]) -> list[UnitPlan]:
    """Decide each unit's status and requested rate; validate every pattern and rate."""
    if sel.protect not in PROTECT:
        raise UsageError(f"--protect {sel.protect!r}: valid: {', '.join(PROTECT)}")
    if sel.rate is not None:
        check_rate(sel.rate, "--rate")
    for i, r in enumerate(sel.layer_rates, start=1):
        check_rate(r, f"--layer-rates (entry {i})")
    for pattern, r in sel.layer_rate:
        check_rate(r, f"--layer-rate {pattern}=")
    if sel.max_layer_rate is not None and not (0.0 < sel.max_layer_rate <= 1.0):
        raise PruneCliError(f"--max-layer-rate {sel.max_layer_rate}: must be in (0, 1]")
    if sel.round_to < 1:
        raise PruneCliError(f"--round-to {sel.round_to}: must be >= 1")
    if sel.scope == "global" and (sel.layer_rate or sel.layer_rates):
        raise UsageError("--scope global picks per-layer rates itself: drop --layer-rate/--layer-rates (use --skip or --max-layer-rate)")

    for pattern in [p for p, _ in sel.layer_rate] + list(sel.skip):
        if not any(matches(pattern, u.producer_names, u.layer_ids) for u in units):
            raise PruneCliError(
                f"pattern {pattern!r} matches no prunable layer (layer names and numbers: prunecli info CKPT --layers)"
            )

    plans: list[UnitPlan] = []
    position = 0
    for u in units:
        if getattr(u, "unprunable", ""):
            plans.append(UnitPlan(u, "unprunable", reason=u.unprunable))
            continue
        if sel.protect != "none" and output_layer in u.producer_names:
            plans.append(UnitPlan(u, "protected", reason="output layer"))
            continue
        if sel.protect == "head" and any(n in linear_layers for n in u.producer_names):
            plans.append(UnitPlan(u, "protected", reason="classifier head"))
            continue
        rate = sel.rate if sel.rate is not None else 0.0
        if position < len(sel.layer_rates):
            rate = sel.layer_rates[position]
        position += 1
        for pattern, r in sel.layer_rate:
            if matches(pattern, u.producer_names, u.layer_ids):
                rate = r
        if any(matches(p, u.producer_names, u.layer_ids) for p in sel.skip):
            plans.append(UnitPlan(u, "skipped", reason="--skip"))
            continue
        if sel.max_layer_rate is not None:
            rate = min(rate, sel.max_layer_rate)
        plans.append(UnitPlan(u, "prune", rate=rate))
    if len(sel.layer_rates) > position:
        raise PruneCliError(f"--layer-rates has {len(sel.layer_rates)} entries but there are {position} prunable layers")
    return plans


def kept_count(channels: int, rate: float, round_to: int, where: str) -> int:
    """Channels a unit keeps at ``rate``: int(C * (1 - rate)), rounded to a multiple of round_to."""
    keep = int(channels * (1.0 - rate) + 1e-9)
    if round_to > 1 and channels >= round_to:
        keep = min(channels, max(round_to, int(round(keep / round_to)) * round_to))
    if keep < 1:
        raise PruneCliError(f"rate {rate:g} would leave no channels in {where} ({channels} channels); lower the rate")
    return keep


def position_scores(unit, scores: torch.Tensor) -> torch.Tensor:
    """Mean score of each position of a grouped unit (positions shared by all conv groups)."""
    pos = unit.positions
    width = int(pos.max()) + 1
    total = torch.zeros(width, dtype=torch.float64).index_add_(0, pos, scores.double())
    return total / unit.conv_groups


def channels_at(unit, positions: torch.Tensor) -> torch.Tensor:
    """Every channel of a grouped unit at the given positions (one per conv group)."""
    return torch.nonzero(torch.isin(unit.positions, positions)).flatten()


def select_layerwise(plans: list[UnitPlan], pick, sel: Selection, scores_of=None) -> None:
    """``pick(unit, n) -> indices``: the criterion's choice of n channels to remove.

    Units with grouped convolutions lose whole positions (the same channel of every
    group), chosen by their mean score; ``scores_of(unit)`` gives the channel scores.
    """
    for p in plans:
        if p.status != "prune" or p.rate <= 0:
            continue
        u = p.unit
        if getattr(u, "conv_groups", 1) > 1:
            width = p.channels // u.conv_groups
            keep = kept_count(width, p.rate, 1, u.root)
            order = torch.sort(position_scores(u, scores_of(u)), stable=True).indices
            p.prune = channels_at(u, order[: width - keep])
            continue
        keep = kept_count(p.channels, p.rate, math.lcm(sel.round_to, getattr(u, "multiple", 1)), u.root)
        n = p.channels - keep
        p.prune = pick(u, n) if n > 0 else torch.empty(0, dtype=torch.long)


def normalise(scores: torch.Tensor, how: Optional[str]) -> torch.Tensor:
    s = scores.double()
    if how is None:
        return s
    if how == "mean":
        m = s.mean()
        return s / m if m != 0 else s
    if how == "lamp":
        order = torch.argsort(s ** 2)
        sq = (s ** 2)[order]
        tail = sq.flip(0).cumsum(0).flip(0)  # sum over v >= u in ascending order
        out = torch.empty_like(s)
        out[order] = sq / tail.clamp(min=1e-300)
        return out
    raise ValueError(f"unknown normaliser {how!r}")


def select_global(plans: list[UnitPlan], scores: dict[int, torch.Tensor], sel: Selection, normaliser: Optional[str]) -> None:
    """One threshold over all eligible channels; every unit keeps >= max(1, round_to) channels.

    A grouped unit competes with its positions (mean normalised score), each of which
    removes one channel per conv group.
    """
    eligible = [p for p in plans if p.status == "prune"]
    total = sum(p.channels for p in eligible)
    target = int(round((sel.rate or 0.0) * total))
    entries = []  # (score, unit index, slot); a slot is a channel, or a position of a grouped unit
    width, weight = {}, {}
    for p in eligible:
        u = p.unit
        s = normalise(scores[u.index], normaliser)
        g = getattr(u, "conv_groups", 1)
        if g > 1:
            s = position_scores(u, s)
        width[u.index], weight[u.index] = len(s), g
        entries += [(float(s[c]), u.index, c) for c in range(len(s))]
    entries.sort()
    by_index = {p.unit.index: p for p in eligible}
    chosen: dict[int, list[int]] = {i: [] for i in by_index}
    floor = {}
    for i, p in by_index.items():
        step = math.lcm(sel.round_to, getattr(p.unit, "multiple", 1))
        min_keep = max(1, min(step, width[i])) if weight[i] == 1 else 1
        if sel.max_layer_rate is not None:
            min_keep = max(min_keep, width[i] - int(width[i] * sel.max_layer_rate + 1e-9))
        floor[i] = min_keep
    removed = 0
    for _, ui, slot in entries:
        if removed >= target:
            break
        if width[ui] - len(chosen[ui]) > floor[ui]:
            chosen[ui].append(slot)
            removed += weight[ui]
    for ui, slots in chosen.items():
        p = by_index[ui]
        if weight[ui] > 1:
            p.prune = channels_at(p.unit, torch.tensor(slots, dtype=torch.long))
        else:
            step = math.lcm(sel.round_to, getattr(p.unit, "multiple", 1))
            if step > 1 and p.channels >= step and slots:
                keep = p.channels - len(slots)
                keep_rounded = min(p.channels, int(math.ceil(keep / step)) * step)
                slots = slots[: p.channels - keep_rounded]  # give back the highest-scored of the chosen
            p.prune = torch.tensor(sorted(slots), dtype=torch.long)
        p.rate = len(p.prune) / p.channels
