"""Surgery on a model in memory: dependency units, plans, masks, physical removal, and the
Pruner that ties them together (plan -> mask or remove), plus the masked == compressed check.

    from prunecli.surgery import Pruner, Selection
"""

from prunecli.config.prune import Selection
from prunecli.surgery.plan import Plan, UnitPlan
from prunecli.surgery.pruner import Masked, Pruner, Removal, Scorer

__all__ = ["Masked", "Plan", "Pruner", "Removal", "Scorer", "Selection", "UnitPlan"]
