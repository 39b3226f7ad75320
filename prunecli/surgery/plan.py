"""From a `Selection` and scores to a `Plan`: which channels (or weights) each unit loses.

Rates are fractions *removed*. Per unit, the rate is resolved as

    rate  <  layer_rates R1,R2,... (by position)  <  layer_rate PATTERN=R (last match wins)

and a unit is left alone when a ``skip`` pattern matches it or ``protect`` covers it.
A pattern is a glob on layer names (``prunecli info CKPT --layers`` lists them), a layer
number or a range of them (``16``, ``8-13``: 1-based over conv/linear layers in module
order, stem = 1, Li et al.'s numbering); it matches a unit when it matches one of the
unit's producing layers.

How many entries a rate removes is the selection's ``count_rule`` (`removed_count`):
``keep-floor`` keeps int(C * (1 - rate)) of C (Li et al.), ``remove-floor`` removes
int(C * rate) (the FPGM and SFP references), ``remove-ceil`` removes ceil(C * rate)
(open_lth's lottery tickets), ``threshold`` removes int(C * rate) + 1 (Network Slimming's
reference keeps only scores strictly above the quantile at index int(C * rate); it also
drops every tie of that quantile, which prunecli does not: on equal scales, such as an
untrained network's, the ties would empty whole layers). The rule applies per unit layer-wise (default keep-floor), and to the
eligible total globally (default: round(rate * total)).
Layer-wise counts are then rounded to a multiple of ``round_to``, by ``round_mode``:
``nearest`` (38 -> 40 at 8, prunecli's rule) or ``down`` (38 -> 32, Torch-Pruning's
``round_to``, BasePruner._round_to); both keep at least ``round_to`` channels where
Torch-Pruning's would empty a layer that keeps fewer. Globally, scores
normalised per unit compete under one threshold; no unit is ever emptied.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from prunecli.config.prune import Selection
from prunecli.errors import OptionError
from prunecli.surgery.units import Target, Unit


@dataclass(eq=False)
class UnitPlan:
    unit: Target
    status: str  # "prune", "skipped", "protected", "unscored", "unprunable"
    rate: float = 0.0  # requested fraction removed
    prune: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    reason: str = ""

    @property
    def size(self) -> int:
        return self.unit.size

    @property
    def kept(self) -> int:
        return self.unit.size - len(self.prune)


@dataclass(frozen=True)
class LayerRow:
    """One line of the table `prune` prints."""

    name: str
    members: int
    before: int
    after: int
    status: str
    note: str = ""


@dataclass(eq=False)
class Plan:
    """What to remove: one `UnitPlan` per unit, at one granularity."""

    granularity: str  # "channel" or "weight"
    units: list[UnitPlan]
    rate: Optional[float] = None  # the base rate used (after a MACs-target search)
    notes: list[str] = field(default_factory=list)

    @property
    def pruned(self) -> list[UnitPlan]:
        """The unit plans that remove something."""
        return [p for p in self.units if p.status == "prune" and len(p.prune)]

    def rows(self) -> list[LayerRow]:
        rows = []
        for p in self.units:
            u = p.unit
            if isinstance(u, Unit):
                coupled = f"+{len(u.producers) - 1} coupled" if len(u.producers) > 1 else ""
                rows.append(LayerRow(u.root, len(u.producers), p.size, p.kept, p.status, p.reason or coupled))
            else:
                rows.append(LayerRow(u.root, 1, p.size, p.kept, p.status, p.reason or "weights"))
        return rows


def matches(pattern: str, names: list[str], ids: list[int]) -> bool:
    """A glob on layer names, a layer number (``16``) or a range of numbers (``8-13``)."""
    if pattern.isdigit():
        return int(pattern) in ids
    lo, sep, hi = pattern.partition("-")
    if sep and lo.isdigit() and hi.isdigit():
        return any(int(lo) <= i <= int(hi) for i in ids)
    return any(fnmatch.fnmatchcase(n, pattern) for n in names)


def resolve(units: list[Target], sel: Selection, *, output_layer: Optional[str], linear_layers: set[str]) -> list[UnitPlan]:
    """Decide each unit's status and requested rate; check that every pattern matches."""
    for key, patterns in (("layer_rate", [p for p, _ in sel.layer_rate]), ("skip", list(sel.skip))):
        for pattern in patterns:
            if not any(matches(pattern, u.producer_names, u.layer_ids) for u in units):
                raise OptionError(
                    f"{{{key}}} pattern {pattern!r} matches no prunable layer (layer names and numbers: prunecli info CKPT --layers)"
                )

    plans: list[UnitPlan] = []
    position = 0
    for u in units:
        if u.unprunable:
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
            plans.append(UnitPlan(u, "skipped", reason="skip"))
            continue
        if sel.max_layer_rate is not None:
            rate = min(rate, sel.max_layer_rate)
        plans.append(UnitPlan(u, "prune", rate=rate))
    if len(sel.layer_rates) > position:
        raise OptionError(f"{{layer_rates}} has {len(sel.layer_rates)} entries but there are {position} prunable layers")
    return plans


COUNT_RULES = ("keep-floor", "remove-floor", "remove-ceil", "threshold")


def removed_count(size: int, rate: float, rule: Optional[str] = "keep-floor") -> int:
    """How many of ``size`` entries ``rate`` removes under ``rule`` (module docstring; None: keep-floor).

    The 1e-9 guards keep float error from moving a count across an integer:
    16 * (1 - 0.75) is 3.9999999999999996 in floating point, and means 4.
    """
    if rate <= 0:
        return 0
    if rule in ("keep-floor", None):
        return size - int(size * (1.0 - rate) + 1e-9)
    if rule == "remove-floor":
        return int(size * rate + 1e-9)
    if rule == "remove-ceil":
        return math.ceil(size * rate - 1e-9)
    if rule == "threshold":
        return int(size * rate + 1e-9) + 1
    raise ValueError(f"unknown count rule {rule!r}; valid: {', '.join(COUNT_RULES)}")


def global_count(total: int, rate: float, rule: Optional[str]) -> int:
    """Entries one global threshold removes: round(rate * total) unless a rule is given."""
    return int(round(rate * total)) if rule is None else removed_count(total, rate, rule)


def round_kept(keep: int, channels: int, round_to: int, mode: str = "nearest") -> int:
    """``keep`` rounded to a multiple of ``round_to`` (``nearest`` or ``down``), at least round_to, at most ``channels``."""
    if round_to <= 1 or channels < round_to:
        return keep
    multiple = keep // round_to if mode == "down" else int(round(keep / round_to))
    return min(channels, max(round_to, multiple * round_to))


def kept_count(channels: int, rate: float, round_to: int, where: str, rule: Optional[str] = "keep-floor", mode: str = "nearest") -> int:
    """Channels a unit keeps at ``rate`` under ``rule``, rounded to a multiple of round_to by ``mode``."""
    keep = channels - removed_count(channels, rate, rule)
    keep = round_kept(keep, channels, round_to, mode)
    if keep < 1:
        raise OptionError(f"rate {rate:g} would leave no channels in {where} ({channels} channels); lower the rate")
    return keep


def position_scores(unit: Unit, scores: torch.Tensor) -> torch.Tensor:
    """Mean score of each position of a grouped unit (positions shared by all conv groups)."""
    pos = unit.positions
    width = int(pos.max()) + 1
    total = torch.zeros(width, dtype=torch.float64).index_add_(0, pos, scores.double())
    return total / unit.conv_groups


def channels_at(unit: Unit, positions: torch.Tensor) -> torch.Tensor:
    """Every channel of a grouped unit at the given positions (one per conv group)."""
    return torch.nonzero(torch.isin(unit.positions, positions)).flatten()


def select_layerwise(
    plans: list[UnitPlan],
    pick: Callable[[Unit, int, float], torch.Tensor],
    sel: Selection,
    scores_of: Callable[[Unit], torch.Tensor],
    count: Optional[Callable[[int, float, str], int]] = None,
) -> None:
    """``pick(unit, n, rate) -> indices``: the criterion's choice of n channels to remove.

    ``count(size, rate, rule)`` is how many a rate removes (default `removed_count`; FPGM-mix
    counts its two shares separately).

    Units with grouped convolutions lose whole positions (the same channel of every
    group), chosen by their mean score; ``scores_of(unit)`` gives the channel scores.
    """
    for p in plans:
        if p.status != "prune" or p.rate <= 0:
            continue
        u = p.unit
        if u.conv_groups > 1:
            width = p.size // u.conv_groups
            keep = kept_count(width, p.rate, 1, u.root, sel.count_rule)
            order = torch.sort(position_scores(u, scores_of(u)), stable=True).indices
            p.prune = channels_at(u, order[: width - keep])
            continue
        step = math.lcm(sel.round_to, u.multiple)
        if count is not None and step == 1:
            n = count(p.size, p.rate, sel.count_rule)
            if sel.count_rule == "threshold":
                n = min(n, p.size - 1)  # its + 1 must not empty a layer the rate leaves one channel
            if n >= p.size:
                raise OptionError(f"rate {p.rate:g} would leave no channels in {u.root} ({p.size} channels); lower the rate")
        else:
            n = p.size - kept_count(p.size, p.rate, step, u.root, sel.count_rule, sel.round_mode)
        p.prune = pick(u, n, p.rate) if n > 0 else torch.empty(0, dtype=torch.long)


def select_weights_layerwise(
    plans: list[UnitPlan], scores: dict[int, torch.Tensor], rule: Optional[str] = None, *, already: Optional[dict[int, torch.Tensor]] = None
) -> None:
    """Each layer loses the ``rate`` share of its lowest-scored weights (counted by ``rule``).

    ``already`` (unit index -> flat indices pruned before): those go again, and the rate
    applies to the rest.
    """
    already = already or {}
    for p in plans:
        if p.status != "prune":
            continue
        gone = already.get(p.unit.index, torch.empty(0, dtype=torch.long))
        alive = p.size - len(gone)
        n = _remaining_count(alive, p.rate, 1, p.unit.root, rule) if len(gone) else (alive - kept_count(alive, p.rate, 1, p.unit.root, rule) if p.rate > 0 else 0)
        s = scores[p.unit.index].clone()
        s[gone] = -math.inf  # first in the order: the already-pruned entries stay pruned
        p.prune = torch.sort(s, stable=True).indices[: len(gone) + n]
        p.rate = len(p.prune) / p.size if len(gone) else p.rate


def _remaining_count(alive: int, rate: float, step: int, where: str, rule: Optional[str]) -> int:
    """How many of the ``alive`` entries a round removes; a round never takes the last one
    (later rounds of iterative pruning stop at one channel or weight instead of failing)."""
    if rate <= 0 or alive <= 1:
        return 0
    try:
        return alive - kept_count(alive, rate, step, where, rule)
    except OptionError:
        return alive - 1


def select_layerwise_remaining(plans: list[UnitPlan], scores: dict[int, torch.Tensor], sel: Selection, already: dict[int, torch.Tensor]) -> None:
    """Layer-wise channel selection over the alive channels only (``already``: the dead ones).

    Each unit removes its dead channels again plus the rate's count of its alive ones,
    the lowest channel scores first. The criterion's own ``select_channels`` is not used
    here: FPGM's distances, for one, would count the dead (zero) filters.
    """
    for p in plans:
        if p.status != "prune":
            continue
        u = p.unit
        gone = already.get(u.index, torch.empty(0, dtype=torch.long))
        alive = p.size - len(gone)
        step = math.lcm(sel.round_to, u.multiple) if u.conv_groups == 1 else 1
        n = _remaining_count(alive, p.rate, step, u.root, sel.count_rule)
        s = scores[u.index].clone()
        s[gone] = -math.inf
        p.prune = torch.sort(torch.sort(s, stable=True).indices[: len(gone) + n]).values
        p.rate = len(p.prune) / p.size


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


def select_global(
    plans: list[UnitPlan], scores: dict[int, torch.Tensor], sel: Selection, normaliser: Optional[str], *, already: Optional[dict[int, torch.Tensor]] = None
) -> None:
    """One threshold over all eligible channels; every unit keeps >= max(1, round_to) channels.

    A grouped unit competes with its positions (mean normalised score), each of which
    removes one channel per conv group. ``already`` (unit index -> dead channels of
    ungrouped units) are removed again; the rate applies to the alive channels.
    """
    already = already or {}
    eligible = [p for p in plans if p.status == "prune"]
    gone = {p.unit.index: set(already[p.unit.index].tolist()) if p.unit.conv_groups == 1 and p.unit.index in already else set() for p in eligible}
    total = sum(p.size - len(gone[p.unit.index]) for p in eligible)
    target = global_count(total, sel.rate or 0.0, sel.count_rule)
    entries = []  # (score, unit index, slot); a slot is a channel, or a position of a grouped unit
    width, weight = {}, {}
    for p in eligible:
        u = p.unit
        s = normalise(scores[u.index], normaliser)
        g = u.conv_groups
        if g > 1:
            s = position_scores(u, s)
        width[u.index], weight[u.index] = len(s), g
        entries += [(float(s[c]), u.index, c) for c in range(len(s)) if c not in gone[u.index]]
    entries.sort()
    by_index = {p.unit.index: p for p in eligible}
    chosen: dict[int, list[int]] = {i: sorted(gone[i]) for i in by_index}
    floor = {}
    for i, p in by_index.items():
        step = math.lcm(sel.round_to, p.unit.multiple)
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
            step = math.lcm(sel.round_to, p.unit.multiple)
            if step > 1 and p.size >= step and slots:
                keep = p.size - len(slots)
                if sel.round_mode == "down":
                    # take the unit's next-lowest slots as well, down to the multiple below (at least one step kept)
                    keep_rounded = max(step, (keep // step) * step)
                    more = [c for _, i, c in entries if i == ui and c not in set(slots)][: max(0, keep - keep_rounded)]
                    slots = slots + more
                else:
                    keep_rounded = min(p.size, int(math.ceil(keep / step)) * step)
                    slots = slots[: p.size - keep_rounded]  # give back the highest-scored of the chosen
            p.prune = torch.tensor(sorted(slots), dtype=torch.long)
        p.rate = len(p.prune) / p.size


def select_weights_global(
    plans: list[UnitPlan], scores: dict[int, torch.Tensor], sel: Selection, normaliser: Optional[str], *, already: Optional[dict[int, torch.Tensor]] = None
) -> None:
    """One threshold over the (normalised) weight scores of every eligible layer; no layer emptied.

    ``already`` (unit index -> flat indices pruned before) are removed again and take no
    part in the threshold: the rate applies to the remaining weights.
    """
    already = already or {}
    eligible = [p for p in plans if p.status == "prune"]
    if not eligible:
        return
    normed, alive = {}, {}
    for p in eligible:
        i = p.unit.index
        normed[i] = normalise(scores[i], normaliser).clone()
        alive[i] = torch.ones(p.size, dtype=torch.bool)
        if i in already:
            alive[i][already[i]] = False
            normed[i][already[i]] = -math.inf
    allv = torch.cat([normed[p.unit.index][alive[p.unit.index]] for p in eligible])
    target = min(global_count(allv.numel(), sel.rate or 0.0, sel.count_rule), allv.numel())
    threshold = torch.kthvalue(allv, target).values if target > 0 else -math.inf
    for p in eligible:
        s = normed[p.unit.index]
        n = int((s <= threshold).sum())
        cap = p.size - 1
        if sel.max_layer_rate is not None:
            cap = min(cap, int(p.size * sel.max_layer_rate + 1e-9))
        n = max(min(n, cap), int((~alive[p.unit.index]).sum()))
        p.prune = torch.sort(s, stable=True).indices[:n]
        p.rate = n / p.size
