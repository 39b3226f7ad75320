"""Dependency groups from Torch-Pruning: the units prunecli scores, masks and removes.

A `Unit` is one Torch-Pruning group rooted at the output channels of a conv or linear
layer: removing channel c of a unit removes it from every coupled layer at once (the
producers' filters, their BatchNorm scale and shift, the consumers' input channels,
residual adds, concatenations and depthwise convs). Units are listed in module order.
A group rooted at a channel-selection layer (prunecli.models.channel_selection) is a unit
too: it has no producers, only the selected BatchNorm and the next conv's inputs.

A `LayerWeights` is the unit of ``--granularity weight``: one layer's weight tensor,
whose entries are selected one by one. Both kinds go through the same selection rules
(prunecli.surgery.plan), which read the fields they share.

`Graph` holds a traced model: Torch-Pruning's DependencyGraph and the module names it
does not keep itself. Tracing (prunecli.models.structure.trace) turns failures into
one-line errors and hangs into a timeout.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

import torch
import torch.nn as nn

from prunecli.errors import PruneCliError
from prunecli.models.layers import PRUNABLE_TYPES, is_prunable, layer_numbers, prunable_layers
from prunecli.models.structure import TRACE_TIMEOUT_S, deadline, first_line, routing_layer_types, trace

if TYPE_CHECKING:  # pragma: no cover
    from torch_pruning.dependency import DependencyGraph, Group


@dataclass(eq=False)  # holds tensors: compare by identity
class Producer:
    """A layer holding some of a unit's channels: local index -> unit channel."""

    name: str
    module: nn.Module
    local_idxs: torch.Tensor  # indices into the module's output channels
    root_idxs: torch.Tensor  # the unit's channel index of each local index


@dataclass(eq=False)
class Unit:
    index: int  # 1-based, module order of the root
    root: str  # module name of the first producer in module order (what tables show)
    tp_root: str  # module name of Torch-Pruning's group root: channel indices are in its order
    channels: int
    producers: list[Producer]  # conv/linear layers whose outputs these channels are
    norms: list[Producer]  # BatchNorm (and other normalisation) layers on these channels
    members: list[str]  # every named module the unit touches
    layer_ids: list[int]  # 1-based conv/linear ids of the producers (Li et al.'s numbering)
    others: list[str] = field(default_factory=list)  # other layers with parameters on these channels
    routing: list[Producer] = field(default_factory=list)  # parameter-free routing layers (ShortcutA)
    # grouped convolutions (ResNeXt, RegNet) need the same positions removed in every
    # group: positions[c] is channel c's position within its conv group, `conv_groups`
    # the number of groups (1 when no grouped conv touches these channels)
    positions: Optional[torch.Tensor] = None
    conv_groups: int = 1
    unprunable: str = ""  # why these channels cannot be removed at all (empty: they can)
    # layers whose statistics span these channels (LayerNorm, GroupNorm): zeroing a channel
    # changes their mean/variance, so a mask cannot stand for removing it
    stat_norms: list[str] = field(default_factory=list)
    # kept channel counts must be a multiple of this (attention heads share the channels)
    multiple: int = 1
    group: Optional["Group"] = field(repr=False, default=None)  # the Torch-Pruning group, full indices

    @property
    def producer_names(self) -> list[str]:
        """The layers ``--skip`` and ``--layer-rate`` globs match: the producers, or the root of a unit without any."""
        return [p.name for p in self.producers] or [self.root]

    @property
    def size(self) -> int:
        """Entries the selection chooses among: channels."""
        return self.channels


@dataclass(eq=False)
class LayerWeights:
    """One layer's weight tensor as a unit of single entries (``--granularity weight``)."""

    index: int  # 1-based among the prunable layers
    root: str  # the layer's name
    module: nn.Module
    layer_id: int

    # what the selection rules read, fixed for single weights
    unprunable: str = ""
    conv_groups: int = 1
    multiple: int = 1

    @property
    def producer_names(self) -> list[str]:
        return [self.root]

    @property
    def layer_ids(self) -> list[int]:
        return [self.layer_id]

    @property
    def size(self) -> int:
        return self.module.weight.numel()


Target = Union[Unit, LayerWeights]


@dataclass(eq=False)
class Graph:
    """A traced model: Torch-Pruning's dependency graph plus module names."""

    model: nn.Module
    dg: "DependencyGraph"
    names: dict[nn.Module, str]
    name: str = "model"  # the architecture, for messages
    forward_order: list[str] = field(default_factory=list)  # prunable layers in the order the trace ran them

    @property
    def output_layer(self) -> Optional[str]:
        """The conv/linear layer that runs last (the classifier's output)."""
        return self.forward_order[-1] if self.forward_order else None


def build_graph(model: nn.Module, example_input: torch.Tensor, *, name: str = "model") -> Graph:
    """Trace ``model`` (prunecli.models.structure.trace) and keep its module names.

    The trace's own forward pass also records the order the prunable layers run in, which
    saves a second pass over the model to find its output layer.
    """
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: order.append(n)) for n, m in prunable_layers(model)]
    try:
        dg = trace(model, example_input, name=name)
    finally:
        for h in hooks:
            h.remove()
    return Graph(model=model, dg=dg, names={m: n for n, m in model.named_modules()}, name=name, forward_order=order)


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def units(graph: Graph) -> list[Unit]:
    """Every prunable group rooted at conv/linear output channels, in module order."""
    model, names, dg = graph.model, graph.names, graph.dg
    ids = layer_numbers(model)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    routing = routing_layer_types()
    # a routing layer whose outputs are a group of their own (Network Slimming's channel selection)
    roots = PRUNABLE_TYPES + tuple(t for t in routing if getattr(t, "starts_unit", False))
    try:
        with deadline(TRACE_TIMEOUT_S, f"listing the pruning groups of {graph.name}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            groups = list(dg.get_all_groups(root_module_types=roots))
    except PruneCliError:
        raise
    except Exception as e:
        raise PruneCliError(f"Torch-Pruning cannot group the layers of {graph.name}: {type(e).__name__}: {first_line(e)}") from e
    found: list[Unit] = []
    for group in groups:
        producers, norms, members, others, routes, stat_norms = [], [], [], [], [], []
        multiple = 1
        for item in group.items:
            dep = item.dep
            module = dep.target.module
            mname = names.get(module)
            if mname is None:
                continue  # an element-wise op of the trace, not a module
            if mname not in members:
                members.append(mname)
            if not dg.is_out_channel_pruning_fn(dep.handler):
                continue
            view = Producer(
                name=mname,
                module=module,
                local_idxs=torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long),
                root_idxs=torch.as_tensor([int(i) for i in item.root_idxs], dtype=torch.long),
            )
            if is_prunable(module):
                producers.append(view)
            elif isinstance(module, _NORM_TYPES):
                norms.append(view)
                if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and mname not in stat_norms:
                    stat_norms.append(mname)
            elif isinstance(module, nn.MultiheadAttention):
                multiple = math.lcm(multiple, module.num_heads)
            elif isinstance(module, routing):
                routes.append(view)
            elif any(True for _ in module.parameters(recurse=False)):
                others.append(mname)
        selections = [r for r in routes if getattr(r.module, "starts_unit", False)]
        if not producers and not selections:
            continue
        positions, conv_groups, unprunable = _group_positions(group, names, len(group.items[0].idxs))
        producers.sort(key=lambda p: order.get(p.name, 0))
        # a selection's unit has no filters: its BatchNorm names it (what tables and --skip globs show)
        root = producers[0].name if producers else (norms[0].name if norms else selections[0].name)
        found.append(
            Unit(
                index=0,
                root=root,
                tp_root=names[group.items[0].dep.target.module],
                channels=len(group.items[0].idxs),
                producers=producers,
                norms=norms,
                members=members,
                layer_ids=sorted(ids[p.name] for p in producers if p.name in ids),
                others=others,
                routing=routes,
                positions=positions,
                conv_groups=conv_groups,
                unprunable=unprunable,
                stat_norms=stat_norms,
                multiple=multiple,
                group=group,
            )
        )
    found.sort(key=lambda u: order.get(u.root, 0))
    for i, u in enumerate(found, start=1):
        u.index = i
    return found


def layer_weights(model: nn.Module) -> list[LayerWeights]:
    """Every prunable layer's weight as a unit of single entries, in module order."""
    return [LayerWeights(index=i, root=n, module=m, layer_id=i) for i, (n, m) in enumerate(prunable_layers(model), start=1)]


def _group_positions(group: "Group", names: dict[nn.Module, str], channels: int) -> tuple[Optional[torch.Tensor], int, str]:
    """Channel positions inside grouped convolutions of this group (see Unit.positions)."""
    positions: Optional[torch.Tensor] = None
    conv_groups = 1
    for item in group.items:
        module = item.dep.target.module
        if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
            continue
        if module.groups == module.in_channels == module.out_channels:
            continue  # depthwise: every channel is its own group, any subset works
        local = torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long)
        root = torch.as_tensor([int(i) for i in item.root_idxs], dtype=torch.long)
        width = module.in_channels if item.dep.handler.__name__ == "prune_in_channels" else module.out_channels
        per_group = width // module.groups
        pos = torch.full((channels,), -1, dtype=torch.long)
        pos[root] = local % per_group
        if (pos < 0).any() or len(set(pos.tolist())) * module.groups != channels:
            return None, 1, f"grouped conv {names.get(module, '?')} spans these channels unevenly"
        if positions is not None and not torch.equal(positions, pos):
            return None, 1, f"two grouped convs order these channels differently ({names.get(module, '?')})"
        positions, conv_groups = pos, module.groups
    return positions, conv_groups, ""


def output_layer(model: nn.Module, example_input: torch.Tensor) -> Optional[str]:
    """The conv/linear layer that runs last in the forward pass (the classifier's output)."""
    seen: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.append(n)) for n, m in prunable_layers(model)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen[-1] if seen else None
