"""Dependency groups from Torch-Pruning: the units prunecli scores, masks and removes.

A `Unit` is one Torch-Pruning group rooted at the output channels of a conv or linear
layer: removing channel c of a unit removes it from every coupled layer at once (the
producers' filters, their BatchNorm scale and shift, the consumers' input channels,
residual adds, concatenations and depthwise convs). Units are listed in module order.

Building the graph traces the model once. Tracing failures become one-line errors that
name the model, and a trace that takes longer than `TRACE_TIMEOUT_S` (Torch-Pruning hangs
on Swin / MaxViT) is stopped with a message instead of hanging.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn

from prunecli.errors import PruneCliError

# what a user should know when Torch-Pruning fails on a model family (METHODS.md)
_KNOWN_LIMITS = {
    "shufflenet": (
        " (a known Torch-Pruning 1.6.1 limitation: its index mapping fails on ShuffleNetV2's channel shuffle,"
        " a view + transpose of the channels; channels cannot be removed, weight-level masks still work)"
    ),
}

TRACE_TIMEOUT_S = 60  # a trace of ResNet-50 takes 0.1 s; Swin never finishes


@dataclass(eq=False)  # holds tensors: compare by identity
class Producer:
    """A layer whose output channels a unit removes: local filter index -> unit channel."""

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
    passthrough: list[Producer] = field(default_factory=list)  # parameter-free layers that route data (ShortcutA)
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
    group: Any = field(repr=False, default=None)  # the Torch-Pruning group, full indices

    @property
    def producer_names(self) -> list[str]:
        return [p.name for p in self.producers]


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise PruneCliError if the block runs longer than ``seconds`` (main thread, Unix)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise PruneCliError(f"{what} did not finish within {seconds:.0f}s (Torch-Pruning hangs on some architectures, e.g. Swin and MaxViT)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def build_graph(model: nn.Module, example_input: torch.Tensor, *, name: str = "model"):
    """Trace ``model`` into a Torch-Pruning DependencyGraph with prunecli's custom pruners."""
    import torch_pruning as tp

    from prunecli.surgery.custom import CUSTOM_PRUNERS

    was_training = model.training
    try:
        # Torch-Pruning warns on stderr while tracing (recursion depth, unwrapped parameters);
        # its failures become our one-line errors instead
        with deadline(TRACE_TIMEOUT_S, f"tracing {name} for its dependency graph"), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=dict(CUSTOM_PRUNERS), verbose=False
            )
    except PruneCliError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        hint = next((h for key, h in _KNOWN_LIMITS.items() if key in name.lower()), "")
        raise PruneCliError(f"Torch-Pruning cannot trace {name}: {type(e).__name__}: {msg}{hint}") from None
    finally:
        model.train(was_training)  # build_dependency leaves the model in eval mode
    graph._prunecli_names = {m: n for n, m in model.named_modules()}
    return graph


def conv_linear_ids(model: nn.Module) -> dict[str, int]:
    """1-based ids of conv/linear layers in module order (stem = 1), as Li et al. number them."""
    ids, i = {}, 0
    for n, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            i += 1
            ids[n] = i
    return ids


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def units(model: nn.Module, graph, *, name: str = "model") -> list[Unit]:
    """Every prunable group rooted at conv/linear output channels, in module order."""
    names = graph._prunecli_names
    ids = conv_linear_ids(model)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    found: list[Unit] = []
    try:
        with deadline(TRACE_TIMEOUT_S, f"listing the pruning groups of {name}"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            groups = list(graph.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)))
    except PruneCliError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise PruneCliError(f"Torch-Pruning cannot group the layers of {name}: {type(e).__name__}: {msg}") from None
    for group in groups:
        producers, norms, members, others, passthrough, stat_norms = [], [], [], [], [], []
        multiple = 1
        for item in group.items:
            dep = item.dep
            module = dep.target.module
            mname = names.get(module)
            if mname is None:
                continue  # an element-wise op of the trace, not a module
            if mname not in members:
                members.append(mname)
            if not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            view = Producer(
                name=mname,
                module=module,
                local_idxs=torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long),
                root_idxs=torch.as_tensor([int(i) for i in item.root_idxs], dtype=torch.long),
            )
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                producers.append(view)
            elif isinstance(module, _NORM_TYPES):
                norms.append(view)
                if isinstance(module, (nn.LayerNorm, nn.GroupNorm)) and mname not in stat_norms:
                    stat_norms.append(mname)
            elif isinstance(module, nn.MultiheadAttention):
                multiple = math.lcm(multiple, module.num_heads)
            elif hasattr(module, "channel_alive"):
                passthrough.append(view)
            elif isinstance(module, nn.Module) and any(True for _ in module.parameters(recurse=False)):
                others.append(mname)
        if not producers:
            continue
        positions, conv_groups, unprunable = _group_positions(group, names, len(group.items[0].idxs))
        producers.sort(key=lambda p: order.get(p.name, 0))
        root = producers[0].name
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
                passthrough=passthrough,
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


def _group_positions(group, names, channels: int):
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
        width = (module.in_channels if item.dep.handler.__name__ == "prune_in_channels" else module.out_channels)
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
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, n=n: seen.append(n))
        for n, m in model.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
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
