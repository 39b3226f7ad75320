"""One unit's removal as masks and MACs, without tracing the model again.

`Pruner.mask` removes a plan from a deep copy of the whole model, traced anew: seconds per
call on a ResNet-56 on CPU. A sensitivity sweep (prunecli.stages.sensitivity) masks one
unit at a time, hundreds of times. A unit's removal changes only the layers of its
dependency group, and Torch-Pruning changes each of them with that layer's own handler.
So `GroupMasker` asks the graph the Pruner traced once for the group of the planned
channels, runs each layer's handler on a copy of *that layer alone* with the id trick
(surgery/tracking.py), and reads the masks from the entries that survived: the same
entries `Pruner.mask` finds (tests/test_sensitivity.py checks it unit by unit), at the
cost of copying a few layers.

The MACs the removal leaves are counted with ptflops's own per-layer counters, on the
shrunk copies and the input and output shapes a forward pass recorded once: channel
pruning changes channel counts, never the spatial sizes ptflops multiplies by.

A group this cannot handle exactly (a bare ``nn.Parameter`` Torch-Pruning replaces in its
parent, a layer type whose MACs ptflops counts with something other than the conv or
linear rule) is reported by `GroupMasker.exact` so the caller falls back to `Pruner.mask`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from prunecli.surgery.masks import Masks, maskable_tensors
from prunecli.surgery.units import Unit


@dataclass(eq=False)
class UnitRemoval:
    """What removing some channels of one unit does."""

    masks: Masks  # entries zeroed (original shapes; tensors that lose nothing are left out)
    macs: int  # MACs of the model with those channels removed (ptflops's count)


class GroupMasker:
    """Masks and MACs of single-unit removals on ``pruner``'s traced graph (module docstring).

    ``base_macs`` is ptflops's count of the whole unpruned model (prunecli.metrics.complexity).
    """

    def __init__(self, pruner, base_macs: int):
        self.pruner = pruner
        self.graph = pruner.graph
        self.base_macs = base_macs
        self.modules = dict(self.graph.model.named_modules())
        self.maskable = set(maskable_tensors(self.graph.model))
        self._shapes = _counted_io_shapes(self.graph.model, pruner.example)
        self._groups: dict[int, object] = {}

    # -- which units this handles

    def exact(self, unit: Unit) -> Optional[str]:
        """Why this unit's removal needs `Pruner.mask` instead (empty/None: it does not)."""
        import torch_pruning as tp

        from prunecli.metrics.complexity import _ignored_module_types

        ignored = tuple(_ignored_module_types())
        group = self._group(unit, [0])
        for item in group.items:
            target = item.dep.target
            if target.type == tp.ops.OPTYPE.PARAMETER:
                return "a bare parameter in the group"
            module = target.module
            if module not in self.graph.names:
                continue  # an operation of the trace (add, cat): nothing to mask
            counted = not isinstance(module, ignored) and _counter(module) is not None
            if counted and not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                return f"MACs of {type(module).__name__} layers"
        return None

    # -- removal

    def _group(self, unit: Unit, idxs: list[int]):
        dg = self.graph.dg
        root = self.modules[unit.tp_root]
        return dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs)

    @torch.no_grad()
    def remove(self, unit: Unit, channels: torch.Tensor) -> UnitRemoval:
        """Masks and MACs of removing ``channels`` (indices in ``unit.tp_root``'s order)."""
        from torch_pruning import _helpers

        idxs = sorted(int(i) for i in channels)
        if not idxs:
            return UnitRemoval(masks={}, macs=self.base_macs)
        group = self._group(unit, idxs)
        copies: dict[nn.Module, nn.Module] = {}  # layer -> its copy holding flat entry ids
        originals: dict[nn.Module, dict[str, torch.Size]] = {}
        for item in group.items:
            dep = item.dep
            module = dep.target.module
            if module not in self.graph.names:
                continue  # trace operations keep state of the graph's own: never touched here
            if module not in copies:
                copies[module], originals[module] = _id_copy(module)
            local = item.idxs
            if len(local) and isinstance(local[0], _helpers._HybridIndex):
                local = _helpers.to_plain_idxs(local)
            # what Dependency.__call__ does, on the copy: the handler reads its pruning dim first
            dep.handler.__self__.pruning_dim = dep.target.pruning_dim
            dep.handler(copies[module], local)
        masks: Masks = {}
        macs = self.base_macs
        for module, work in copies.items():
            name = self.graph.names[module]
            for tname, t in _float_tensors(work):
                full = f"{name}.{tname}" if name else tname
                if full not in self.maskable:
                    continue
                shape = originals[module][tname]
                keep = torch.zeros(shape.numel(), dtype=torch.bool)
                keep[t.detach().round().long().flatten().cpu()] = True
                if not bool(keep.all()):
                    masks[full] = keep.view(shape)
            if module in self._shapes:
                macs += _layer_macs(work, self._shapes[module], resized=True) - _layer_macs(module, self._shapes[module])
        return UnitRemoval(masks=masks, macs=macs)


def _float_tensors(module: nn.Module):
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if t is not None and t.is_floating_point():
            yield name, t


def _id_copy(module: nn.Module) -> tuple[nn.Module, dict[str, torch.Size]]:
    """A copy of ``module`` whose float tensors hold their own flat indices (float64, exact to 2**53)."""
    work = copy.deepcopy(module)
    shapes = {}
    for name, t in _float_tensors(work):
        shapes[name] = t.shape
        t.data = torch.arange(t.numel(), dtype=torch.float64, device=t.device).view(t.shape)
    return work, shapes


def _counter(module: nn.Module):
    from ptflops.pytorch_ops import MODULES_MAPPING

    return MODULES_MAPPING.get(type(module))  # ptflops matches the exact type, not subclasses


@torch.no_grad()
def _counted_io_shapes(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, list[tuple[torch.Size, torch.Size]]]:
    """(input, output) shapes of every conv and linear layer's calls, one input of ``example``'s shape."""
    seen: dict[nn.Module, list] = {}

    def hook(module, inputs, output):
        if inputs and isinstance(inputs[0], torch.Tensor) and isinstance(output, torch.Tensor):
            seen.setdefault(module, []).append((inputs[0].shape, output.shape))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was = model.training
    try:
        model.eval()
        model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return seen


def _layer_macs(module: nn.Module, calls: list[tuple[torch.Size, torch.Size]], *, resized: bool = False) -> int:
    """ptflops's count for ``module`` over its recorded calls (batch 1).

    ``resized``: the module was shrunk since the shapes were recorded; its channel
    dimensions (dim 1 for convs, the last for linear layers) take the module's sizes now.
    """
    counter = _counter(module)
    if counter is None:
        return 0
    total = 0
    for in_shape, out_shape in calls:
        in_shape, out_shape = list(in_shape), list(out_shape)
        if resized:
            if isinstance(module, nn.Linear):
                in_shape[-1], out_shape[-1] = module.in_features, module.out_features
            else:
                in_shape[1], out_shape[1] = module.in_channels, module.out_channels
        module.__flops__ = 0
        try:
            # ptflops reads only shapes: tensors on the meta device cost nothing
            counter(module, (torch.empty(in_shape, device="meta"),), torch.empty(out_shape, device="meta"))
            total += int(module.__flops__)
        finally:
            del module.__flops__
    return total
