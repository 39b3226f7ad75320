"""Pruning algorithms: when and how pruning happens (one-shot; soft, gradual, iterative,
learned, reconstruction and block-by-block come with the training-time issues). See
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
