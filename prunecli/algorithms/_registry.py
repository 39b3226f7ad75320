"""Pruning algorithms: `register_algorithm`, `list_algorithms`, `get_algorithm`.

An *algorithm* decides when and how pruning happens: one-shot, soft re-selection
(SFP/FPGM), gradual (AGP), iterative (lottery tickets), learned (edge-popup, SSS),
reconstruction (ThiNet, CP), block by block (Sensitivity Pruner). A *criterion*
(prunecli.criteria) scores what to remove; any algorithm takes any criterion that
``accepts`` allows. An algorithm module holds one `Algorithm` subclass whose docstring
opens with what it does and the paper it follows, registered with
``@register_algorithm("name")``; hyper-parameters are constructor arguments.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Optional

from prunecli._registry import Registry
from prunecli.criteria import Criterion

_ALGORITHMS: Registry[type["Algorithm"]] = Registry("algorithm")


def register_algorithm(name: str):
    def wrap(cls):
        cls.name = name
        return _ALGORITHMS.register(name, cls)

    return wrap


def list_algorithms() -> list[str]:
    _import_algorithms()
    return _ALGORITHMS.names()


def algorithm_class(name: str) -> type["Algorithm"]:
    _import_algorithms()
    return _ALGORITHMS.get(name)


def get_algorithm(name: str, **hparams: Any) -> "Algorithm":
    return algorithm_class(name)(**hparams)


def algorithm_description(name: str) -> str:
    doc = inspect.getdoc(algorithm_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


class Algorithm:
    """Base of the algorithms: ``accepts`` says which criteria fit."""

    name: str = ""
    # what `prunecli list methods` says about the criteria this algorithm takes
    criteria_note: str = "any criterion"
    # whether it prunes while training (prune --epochs N): its `callback` builds the Trainer callback
    trains: bool = False
    # whether it runs the methods that choose channels by reconstructing the next layer (ThiNet, CP)
    reconstructs: bool = False

    def accepts(self, criterion: Criterion) -> Optional[str]:
        """None if ``criterion`` fits this algorithm, else why it does not."""
        learned = getattr(criterion, "learned", None)
        if learned is not None and learned != self.name:
            return f"{criterion.name} learns its mask while training ({learned}): use {{epochs}} N with {{method}} {criterion.name}"
        if getattr(criterion, "reconstructs", False) and not self.reconstructs:
            return (
                f"{criterion.name} prunes once, layer by layer, reconstructing each next layer from calibration data: "
                "it does not prune while training (drop {epochs}; finetune the result)"
            )
        return None


_MODULES = ("one_shot", "soft", "gradual", "iterative", "reconstruction", "edgepopup", "sss")


def _import_algorithms() -> None:
    for mod in _MODULES:
        importlib.import_module(f"prunecli.algorithms.{mod}")
