"""Pruning algorithms: when and how pruning happens. One-shot (one_shot.py); while training:
soft re-selection, SFP/FPGM (soft.py), gradual AGP (gradual.py), iterative rounds with
rewinding, lottery tickets (iterative.py); the shared callback is in _training.py. See
`_registry` for the contract; criteria (what scores a structure) are in prunecli.criteria.
"""

from prunecli.algorithms._registry import (
    Algorithm,
    algorithm_class,
    algorithm_description,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)

__all__ = ["Algorithm", "algorithm_class", "algorithm_description", "get_algorithm", "list_algorithms", "register_algorithm"]
