"""The names users type for ``--method``: each criterion's aliases, as plain data (no torch).

A stage config resolves an alias to the criterion's registered name when it is built
(`canonical_method`), so every command that takes ``--method`` (prune, compress
--block-by-block, sensitivity, recipe stages) accepts the aliases, and lineage and
checkpoints record the registered name. The criteria registry
(prunecli.criteria._registry) registers the same aliases, so ``get_criterion("fpgm")``
works from Python too, and ``prunecli list methods`` shows them.

An alias names the *same scoring* and nothing more: FPGM is the geometric-median
criterion, Network Slimming's is the BatchNorm-scale criterion, OBD is the diagonal
Hessian. A paper's method that is a criterion *plus* a way of pruning (SFP is l2 pruned
softly while training; a lottery ticket is magnitude pruned in rounds with rewinding) is
not an alias: `COMBINATIONS` says which options make it, and the error for that name says
so (METHODS.md describes each).

Lookup ignores case and treats ``_`` and spaces as ``-``: FPGM, fpgm and Network_Slimming
all work.
"""

from __future__ import annotations

from prunecli.errors import OptionError

# registered name -> the other names people use for it (METHODS.md, the papers, the READMEs);
# every registered criterion is a key (tests check it), so that any case of its name works
METHOD_ALIASES: dict[str, tuple[str, ...]] = {
    "l1": ("l1-norm",),  # Li et al., "Pruning Filters for Efficient ConvNets"
    "l2": ("l2-norm",),
    "geomedian": ("fpgm", "geometric-median"),  # He et al., FPGM ("FPGM-only")
    "slimming": ("network-slimming", "slim", "bn", "bn-scale"),  # |gamma| of BatchNorm, Liu et al.
    "hessian": ("obd", "optimal-brain-damage"),  # LeCun et al.'s saliency 1/2 h w^2
    "magnitude": ("magnitude-pruning",),  # Han et al., |w|
    "taylor": ("taylor-fo",),  # Molchanov et al. 2019's first-order Taylor criterion
    "lamp": ("layer-adaptive-magnitude",),
    "random": (),
    "thinet": (),
    "cp": (),  # He et al.'s LASSO channel pruning; "channel pruning" names every method here, so no alias
    "edgepopup": ("edge-popup", "hidden-networks"),  # Ramanujan et al.'s learned scores
    "sss": ("sparse-structure-selection",),  # Huang & Wang's gates
    "sensitivity": ("sensitivity-pruner",),  # compress --block-by-block only (not a criterion)
}

# names of methods that are a criterion plus options: what to type instead
COMBINATIONS: dict[str, str] = {
    "sfp": "Soft Filter Pruning is l2 re-selected while training: --method l2 --soft --epochs N",
    "soft-filter-pruning": "Soft Filter Pruning is l2 re-selected while training: --method l2 --soft --epochs N",
    "fpgm-mix": "FPGM-mix is geomedian with a share chosen by L2 norm: --method geomedian --mix-norm S (0.25 for 30% + 10%)",
    "fpgm-soft": "soft FPGM is geomedian re-selected while training: --method geomedian --soft --mask-grads --epochs N",
    "lottery-ticket": "a lottery ticket is magnitude pruning in rounds with rewinding: --method magnitude --rounds R --rewind init --epochs N",
    "lth": "a lottery ticket is magnitude pruning in rounds with rewinding: --method magnitude --rounds R --rewind init --epochs N",
    "imp": "iterative magnitude pruning is --method magnitude --rounds R --epochs N (with --rewind init for lottery tickets)",
    "agp": "AGP is a schedule for any criterion: --prune-schedule agp --epochs N (e.g. --method magnitude)",
}

# criteria that cannot score whole channels, and the granularities they have: prune picks
# the only one when --granularity is not given (tests check this against the registry)
NON_CHANNEL_GRANULARITIES: dict[str, tuple[str, ...]] = {
    "magnitude": ("weight",),
}


def normalized(name: str) -> str:
    """``name`` as aliases are looked up: lower case, ``_`` and spaces as ``-``."""
    return "-".join(str(name).strip().lower().replace("_", "-").split())


_CANONICAL = {normalized(alias): name for name, aliases in METHOD_ALIASES.items() for alias in (name, *aliases)}


def canonical_method(name: str) -> str:
    """The registered name of ``name`` (an alias, or any case of a registered name).

    A name that is a combination of a criterion and options raises an OptionError that
    says what to type; any other unknown name is returned as given, for the criteria
    registry to refuse with the list of valid names.
    """
    key = normalized(name)
    if key in _CANONICAL:
        return _CANONICAL[key]
    if key in COMBINATIONS:
        raise OptionError(f"{{method}} {name!r} is not a criterion: {COMBINATIONS[key]}")
    return name
