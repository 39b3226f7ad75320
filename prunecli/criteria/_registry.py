"""Pruning criteria: `register_criterion`, `list_criteria`, `get_criterion`, and the contract.

A *criterion* scores structures; *when* and *how* pruning happens is an algorithm's
business (prunecli.algorithms). A criterion module holds one `Criterion` subclass whose
docstring opens with the paper (title, venue, arXiv id) and registers it with
``@register_criterion("name")``; the names users also type for it (fpgm for geomedian)
are listed in prunecli.config.methods and accepted everywhere a name is. Hyper-parameters are constructor arguments, validated
there: ``get_criterion("geomedian", mix_norm=0.1)``.

Contract (units are Torch-Pruning dependency groups, see prunecli.surgery.units.Unit):

* ``channel_scores(unit) -> Tensor[unit.channels]`` -- higher means more important;
  channel c of the unit is entry c (producers map their filters to unit channels through
  ``Producer.local_idxs`` / ``Producer.root_idxs``). None: this criterion cannot score
  the unit (slimming without a BatchNorm), which is then left whole.
* ``select_channels(unit, n_prune, rate=None) -> LongTensor`` -- which n_prune channels
  to remove (``rate``: the unit's requested rate); the default removes the lowest scores
  (ties: lower index first). FPGM-mix overrides it.
* ``count_rule`` -- how many entries a rate removes in this method's reference code
  (prunecli.surgery.plan.removed_count): what ``--count-rule reference`` resolves to.
  ``removed_count(size, rate, rule)`` is the layer-wise count; FPGM-mix overrides it.
* ``weight_scores(name, param) -> Tensor`` (same shape as ``param``) -- for
  ``--granularity weight``; higher means keep.
* ``prepare(model, units, calibration)`` -- called once before any scoring; criteria that
  need gradients (``needs_data = True``) read the calibration batches here, on the
  model's device, and keep what they accumulate on the instance.
* ``global_normalizer`` -- how channel scores of one unit are made comparable with other
  units' for ``--scope global``: "mean" (divide by the unit's mean score), "lamp", or None
  (raw scores already comparable, e.g. BatchNorm scales).
* ``weight_global_normalizer`` -- the same for weight scores of different layers; None by
  default (one global magnitude threshold, as in Han et al.).
* ``scores_selection`` -- True when the criterion scores channel-selection units (which
  have a BatchNorm but no filters): ``prune --stream-bn select`` is then its default.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Iterable, Optional

import torch

from prunecli._registry import Registry
from prunecli.config.methods import METHOD_ALIASES, canonical_method
from prunecli.errors import OptionError, PruneCliError

_CRITERIA: Registry[type["Criterion"]] = Registry("method")


def register_criterion(name: str):
    """Register a Criterion class as ``name``, with the aliases prunecli.config.methods lists for it."""

    def wrap(cls):
        cls.name = name
        _CRITERIA.register(name, cls)
        for alias in METHOD_ALIASES.get(name, ()):
            _CRITERIA.alias(alias, name)
        return cls

    return wrap


def list_criteria() -> list[str]:
    _import_criteria()
    return _CRITERIA.names()


def criterion_class(name: str) -> type["Criterion"]:
    _import_criteria()
    return _CRITERIA.get(canonical_method(name))


def criterion_aliases(name: str) -> list[str]:
    """The other names ``--method`` accepts for the criterion ``name`` (fpgm for geomedian)."""
    _import_criteria()
    return _CRITERIA.aliases(_CRITERIA.canonical(canonical_method(name)))


def hyperparameters(cls: type["Criterion"]) -> list[str]:
    """The constructor arguments of a criterion class."""
    return [n for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind is p.KEYWORD_ONLY]


def get_criterion(name: str, **hparams: Any) -> "Criterion":
    """The criterion ``name`` built with its hyper-parameters; an unknown one names who takes it."""
    cls = criterion_class(name)
    accepted = hyperparameters(cls)
    for key in hparams:
        if key not in accepted:
            takers = [n for n in list_criteria() if key in hyperparameters(_CRITERIA.get(n))]
            raise OptionError(
                f"criterion {name!r} takes no {{{key}}} (its hyper-parameters: {', '.join('{' + a + '}' for a in accepted) or 'none'}"
                f"{'; {' + key + '} goes with ' + ', '.join(takers) if takers else ''})"
            )
    return cls(**hparams)


def criterion_description(name: str) -> str:
    doc = inspect.getdoc(criterion_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class Criterion:
    name: str = ""
    granularities: tuple[str, ...] = ("channel",)
    needs_data: bool = False
    global_normalizer: Optional[str] = "mean"
    weight_global_normalizer: Optional[str] = None
    # Li et al.'s int(C * (1 - rate)) kept: the rule of every method whose reference does not say otherwise
    count_rule: str = "keep-floor"
    # scores a channel selection's unit (a BatchNorm and the next conv's inputs, no filters):
    # prune --stream-bn select inserts those units for it (prunecli.models.channel_selection)
    scores_selection: bool = False
    # the algorithm that learns this method's mask while training (edgepopup, sss): the
    # criterion has no scores of its own before that training; None for every other
    learned: Optional[str] = None

    def __init__(self) -> None:
        pass

    def prepare(self, model: torch.nn.Module, units: list, calibration: Optional[Batches]) -> None:
        pass

    def channel_scores(self, unit) -> Optional[torch.Tensor]:
        raise NotImplementedError(f"{self.name} has no channel-level scores")

    def select_channels(self, unit, n_prune: int, rate: Optional[float] = None) -> torch.Tensor:
        return lowest(self.channel_scores(unit), n_prune)

    def removed_count(self, size: int, rate: float, rule: Optional[str]) -> int:
        from prunecli.surgery.plan import removed_count

        return removed_count(size, rate, rule)

    def weight_scores(self, name: str, param: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no weight-level scores")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in hyperparameters(type(self)))
        return f"{type(self).__name__}({args})"


def require_calibration(calibration: Optional[Batches], name: str) -> Batches:
    if calibration is None:
        raise PruneCliError(f"{name} needs calibration data (a dataset to compute gradients on)")
    return calibration


def lowest(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` smallest scores; ties go to the lower index (stable sort)."""
    order = torch.sort(scores.detach().double().cpu(), stable=True).indices
    return order[:n].sort().values


def scatter_to_unit(unit, values: list[torch.Tensor], producers) -> torch.Tensor:
    """Average per-producer channel values (local order) into unit channel order."""
    total = torch.zeros(unit.channels, dtype=torch.float64)
    count = torch.zeros(unit.channels, dtype=torch.float64)
    for v, p in zip(values, producers):
        total.index_add_(0, p.root_idxs, v.detach().double().cpu())
        count.index_add_(0, p.root_idxs, torch.ones(len(p.root_idxs), dtype=torch.float64))
    return total / count.clamp(min=1)


_MODULES = ("norm", "geomedian", "slimming", "taylor", "lamp", "hessian", "random", "magnitude", "thinet", "cp", "edgepopup", "sss")


def _import_criteria() -> None:
    for mod in _MODULES:
        importlib.import_module(f"prunecli.criteria.{mod}")
