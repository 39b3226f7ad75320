"""Physical removal: a plan's channels leave every coupled layer through Torch-Pruning.

`apply_plan` removes each unit's planned channels through its dependency group on a
traced model; `dead_channels` finds the channels whose output is identically zero (what
``compress`` removes); `check_runs` refuses a pruned model that no longer runs.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn

from prunecli.errors import PruneCliError
from prunecli.models.structure import after_structure_change, first_line
from prunecli.surgery.plan import Plan
from prunecli.surgery.units import Graph, Unit


def apply_plan(graph: Graph, plan: Plan) -> None:
    """Physically remove each unit's planned channels from ``graph.model``.

    The plan may come from another trace of the same architecture: units are found by
    their group root's module name, and channel indices are in that root's order.
    """
    modules = dict(graph.model.named_modules())
    dg = graph.dg
    for p in plan.pruned:
        unit = p.unit
        assert isinstance(unit, Unit), "weight-level plans keep every shape: nothing to remove"
        root = modules[unit.tp_root]
        idxs = [int(i) for i in p.prune]
        # Torch-Pruning does not validate indices: an out-of-range one leaves a layer whose
        # out_channels and weight rows disagree (METHODS.md), so check them here
        if min(idxs) < 0 or max(idxs) >= unit.channels:
            raise PruneCliError(f"internal: channel index out of range for {unit.root}")
        group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs)
        if not dg.check_pruning_group(group):
            raise PruneCliError(f"pruning {len(idxs)} of {unit.channels} channels would empty a layer coupled to {unit.root}")
        group.prune()
    after_structure_change(graph.model)


def check_runs(model: nn.Module, example: torch.Tensor, name: str) -> None:
    """A pruned model must still run; some architectures hard-code sizes Torch-Pruning cannot adapt."""
    was = model.training
    try:
        with torch.no_grad(), must_run(name):
            model.eval()
            model(example)
    finally:
        model.train(was)


@contextlib.contextmanager
def must_run(name: str) -> Iterator[None]:
    """A pruned model's forward pass inside: its failure is `check_runs`'s one-line error.

    For callers that run the pruned model anyway (the masked == compressed probe) and so
    skip `check_runs`'s own pass.
    """
    try:
        yield
    except PruneCliError:
        raise
    except Exception as e:
        raise PruneCliError(
            f"the pruned {name} no longer runs ({type(e).__name__}: {first_line(e)}); Torch-Pruning does not adapt "
            "this architecture's hard-coded sizes; nothing written"
        ) from e


def _alive_rows(module: nn.Module, local: torch.Tensor) -> torch.Tensor:
    """For each local output index: does the module hold any non-zero entry of that channel?"""
    alive = torch.zeros(len(local), dtype=torch.bool)
    for name, p in module.named_parameters(recurse=False):
        t = p.detach()
        if isinstance(module, nn.modules.conv._ConvTransposeNd) and name == "weight":
            t = t.transpose(0, 1)
        rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
        if rows.shape[1] == 0:
            continue
        # the largest |entry| of each row, then the rows asked for: one pass over the weight and
        # 4-5x faster than gathering the rows and comparing each entry (1.1 vs 5.7 ms for a
        # 512x4608 conv on one CPU thread); `!= 0` keeps a row holding NaN alive, as `any` did
        alive |= (rows.abs().amax(dim=1) != 0)[local.to(rows.device)].cpu()
    return alive


def dead_channels(unit: Unit) -> torch.Tensor:
    """Unit channels whose output is identically zero (all producer and norm entries zero)."""
    if unit.others:
        return torch.empty(0, dtype=torch.long)  # layers whose layout we do not read: keep everything
    alive = torch.zeros(unit.channels, dtype=torch.long)
    for view in unit.producers + unit.norms:
        alive.index_add_(0, view.root_idxs, _alive_rows(view.module, view.local_idxs).long())
    for view in unit.routing:  # e.g. an option-A shortcut still carrying an input channel
        alive.index_add_(0, view.root_idxs, view.module.channel_alive(view.local_idxs).long())
    return torch.nonzero(alive == 0).flatten()
