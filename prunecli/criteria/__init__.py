"""Pruning criteria: one module per method, each citing its paper. See `_registry`."""

from prunecli.criteria._registry import (
    Criterion,
    ScoringContext,
    get_method,
    list_methods,
    method_description,
    register_method,
)

__all__ = ["Criterion", "ScoringContext", "get_method", "list_methods", "method_description", "register_method"]
