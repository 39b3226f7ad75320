"""Pruning criteria: what scores a channel or a weight; one module per criterion, each
citing its paper. See `_registry` for the contract. When and how pruning happens is an
algorithm's business (prunecli.algorithms).

    from prunecli.criteria import get_criterion
    criterion = get_criterion("geomedian", mix_norm=0.1)
"""

from prunecli.criteria._registry import (
    Criterion,
    criterion_aliases,
    criterion_class,
    criterion_description,
    get_criterion,
    hyperparameters,
    list_criteria,
    register_criterion,
)

__all__ = [
    "Criterion",
    "criterion_aliases",
    "criterion_class",
    "criterion_description",
    "get_criterion",
    "hyperparameters",
    "list_criteria",
    "register_criterion",
]
