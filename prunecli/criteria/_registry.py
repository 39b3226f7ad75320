"""Pruning methods: `register_method`, `list_methods`, `get_method`, and the `Criterion` contract.

A method module holds one `Criterion` subclass whose docstring opens with the paper
(title, venue, arXiv id) and registers it with ``@register_method("name")``.

Contract (units are Torch-Pruning dependency groups, see prunecli.surgery.units.Unit):

* ``channel_scores(unit, ctx) -> Tensor[unit.channels]`` -- higher means more important;
  channel c of the unit is entry c (producers map their filters to unit channels through
  ``Producer.local_idxs`` / ``Producer.root_idxs``).
* ``select_channels(unit, n_prune, ctx) -> LongTensor`` -- which n_prune channels to remove;
  the default removes the lowest scores (ties: lower index first). FPGM-mix overrides it.
* ``weight_scores(name, param, ctx) -> Tensor`` (same shape as ``param``) -- for
  ``--granularity weight``; higher means keep.
* ``prepare(model, units, ctx)`` -- one pass over calibration batches for criteria that
  need gradients (``needs_data = True``); called once before any scoring.
* ``global_normalizer`` -- how channel scores of one unit are made comparable with other
  units' for ``--scope global``: "mean" (divide by the unit's mean score), "lamp", or None
  (raw scores already comparable, e.g. BatchNorm scales).
* ``weight_global_normalizer`` -- the same for weight scores of different layers; None by
  default (one global magnitude threshold, as in Han et al.).
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch

from prunecli._registry import Registry

_METHODS: Registry[type] = Registry("method")


def register_method(name: str):
    def wrap(cls):
        cls.name = name
        return _METHODS.register(name, cls)

    return wrap


def list_methods() -> list[str]:
    _import_methods()
    return _METHODS.names()


def get_method(name: str) -> "Criterion":
    _import_methods()
    return _METHODS.get(name)()


def method_description(name: str) -> str:
    _import_methods()
    doc = inspect.getdoc(_METHODS.get(name)) or ""
    return doc.splitlines()[0] if doc else ""


@dataclass
class ScoringContext:
    """What criteria may use besides the weights."""

    model: torch.nn.Module
    seed: int = 0
    device: torch.device = torch.device("cpu")
    # calibration data: a callable returning an iterable of (inputs, labels) on `device`
    calibration: Optional[Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]] = None
    mix_norm: float = 0.0  # FPGM-mix: share of the pruned channels chosen by norm
    state: dict[str, Any] = field(default_factory=dict)  # what prepare() accumulated


class Criterion:
    name: str = ""
    granularities: tuple[str, ...] = ("channel",)
    needs_data: bool = False
    global_normalizer: Optional[str] = "mean"
    weight_global_normalizer: Optional[str] = None

    def prepare(self, model, units, ctx: ScoringContext) -> None:
        pass

    def channel_scores(self, unit, ctx: ScoringContext) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no channel-level scores")

    def select_channels(self, unit, n_prune: int, ctx: ScoringContext) -> torch.Tensor:
        return lowest(self.channel_scores(unit, ctx), n_prune)

    def weight_scores(self, name: str, param: torch.Tensor, ctx: ScoringContext) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} has no weight-level scores")


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


_MODULES = ("norm", "geomedian", "slimming", "taylor", "lamp", "hessian", "random", "magnitude")


def _import_methods() -> None:
    for mod in _MODULES:
        importlib.import_module(f"prunecli.criteria.{mod}")
