"""Pruning by reconstruction: ThiNet and channel pruning (CP), one unit at a time in forward order.

Luo et al., "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression",
ICCV 2017, arXiv:1707.06342; He et al., "Channel Pruning for Accelerating Very Deep Neural
Networks", ICCV 2017, arXiv:1707.06168. Both prune the channels of layer i by how well layer
i+1, the one layer reading them, can still produce the original network's outputs, and
change layer i+1's weights to make up for what is gone. The methods' own choice and refit
are in prunecli.criteria.thinet and prunecli.criteria.cp; this module runs them.

Contract of `reconstruct` (what the ``prune`` stage and block-by-block compression call)::

    plan = reconstruct(model, original, units, selection=Selection(rate=0.5),
                       calibration=batches, method=get_criterion("thinet"))
    pruner.mask(plan)      # or pruner.remove(plan): the plan is an ordinary channel Plan

* ``model`` is changed in place: for every pruned unit, its consumer's weights on the kept
  channels are replaced by the reconstruction and its weights on the pruned channels are
  zeroed. Nothing else changes (the producer's filters, BatchNorms and biases are left for
  the mask or the removal to zero or drop); after `reconstruct` the model already computes
  what the masked model will.
* ``original`` is the network the targets come from (same module names; a deep copy of
  ``model`` taken before pruning). It is only read.
* ``units`` are Units traced on ``model`` (prunecli.surgery.units); a caller pruning one
  block passes that block's units. ``selection`` resolves their rates, skips and the
  protected output layer as every other plan does; ``scope`` must be layerwise.
* ``calibration`` yields (inputs, labels) batches on the model's device; it is read once
  and the inputs are held in memory (calib_batches x batch x image bytes), because every
  unit needs two passes over them: one through ``original`` for the targets, one through
  ``model`` (as pruned so far) for the inputs, as both papers do.
* Units are processed in ``forward_order`` (layer names in the order they run; default:
  the units' order). Only units whose channels are read by exactly one conv (groups 1,
  zero padding) or linear layer, and by nothing else, are eligible: a unit whose channels
  reach a residual add, a concatenation or two layers has no single layer to reconstruct
  and is left whole with status "unscored" and the reason (on ResNet-50 that leaves the
  first two convs of each bottleneck, as ThiNet prunes).
* ``report``, when given a list, receives one `LayerReport` per reconstructed unit.

Each sampled position of layer i+1's output (``samples_per_image`` per calibration image,
both papers use 10) is one row of the least-squares problems; positions are drawn from a
generator seeded by the method's ``seed`` and the unit's name, so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.config.prune import Selection
from prunecli.criteria import Criterion
from prunecli.criteria._reconstruct import LayerSamples, ReconstructionCriterion
from prunecli.criteria.random import stream_seed
from prunecli._progress import step_bar
from prunecli.errors import OptionError, PruneCliError
from prunecli.models.layers import is_prunable
from prunecli.surgery.plan import Plan, UnitPlan, kept_count, resolve
from prunecli.surgery.units import Unit

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class LayerReport:
    """How well one consumer reproduces the original outputs on the calibration samples.

    Errors are ||Y - Y_hat||^2 / ||Y||^2 over every sampled output (all output channels),
    Y the original network's outputs (minus bias).
    """

    unit: str  # the pruned unit's root layer
    consumer: str  # the layer that was reconstructed
    kept: int
    channels: int
    error_dense: float  # every channel kept, weights as they were (upstream pruning only)
    error_pruned: float  # channels removed, weights as they were
    error_reconstructed: float  # channels removed, weights reconstructed


@dataclass(eq=False)
class Consumer:
    """The single layer reading a unit's channels, and where each channel sits in its inputs."""

    name: str
    module: nn.Module
    features: torch.Tensor  # (C, s): flat indices into the layer's input features per position, by unit channel


def consumer_of(unit: Unit, names: dict[nn.Module, str]) -> tuple[Optional[Consumer], str]:
    """The one layer that reads ``unit``'s channels, or None and why there is none."""
    if unit.unprunable:
        return None, unit.unprunable
    if len(unit.producers) != 1:
        return None, "its channels are shared by several layers (a residual add)"
    if unit.routing or unit.stat_norms or unit.others or unit.conv_groups != 1:
        return None, "its channels pass through layers reconstruction does not model"
    group = unit.group
    dg = getattr(group, "_DG", None) if group is not None else None
    if dg is None:
        return None, "no dependency group"
    readers: dict[nn.Module, tuple[list[int], list[int]]] = {}
    for item in group.items:
        module = item.dep.target.module
        if dg.is_out_channel_pruning_fn(item.dep.handler) or not is_prunable(module):
            continue
        local, root = readers.setdefault(module, ([], []))
        local += [int(i) for i in item.idxs]
        root += [int(i) for i in item.root_idxs]
    if len(readers) != 1:
        return None, f"its channels are read by {len(readers)} layers (a residual add or a concatenation)" if readers else "no layer reads its channels"
    module, (local, root) = next(iter(readers.items()))
    name = names.get(module, "?")
    local_t, root_t = torch.tensor(local, dtype=torch.long), torch.tensor(root, dtype=torch.long)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None, f"{name} is a grouped or non-zero-padded conv"
        if sorted(local) != list(range(module.in_channels)) or sorted(root) != list(range(unit.channels)):
            return None, f"{name} reads other channels too (a concatenation)"
        kk = module.kernel_size[0] * module.kernel_size[1]
        by_channel = torch.empty(unit.channels, dtype=torch.long)
        by_channel[root_t] = local_t
        features = by_channel.view(-1, 1) * kk + torch.arange(kk).view(1, -1)
    elif isinstance(module, nn.Linear):
        if sorted(local) != list(range(module.in_features)):
            return None, f"{name} reads other features too (a concatenation)"
        counts = torch.bincount(root_t, minlength=unit.channels)
        if int(counts.min()) != int(counts.max()) or int(counts.min()) == 0:
            return None, f"{name} reads the channels unevenly"
        order = torch.argsort(root_t * (module.in_features + 1) + local_t)  # by channel, then feature
        features = local_t[order].view(unit.channels, -1)
    else:
        return None, f"{name} is a {type(module).__name__}, not a conv or linear layer"
    return Consumer(name, module, features), ""


class _Reached(Exception):
    """Raised by a hook once the layer of interest has run: the rest of the forward pass is not needed."""


def _first_call(model: nn.Module, module: nn.Module, x: torch.Tensor, *, want: str) -> torch.Tensor:
    """The input (``want="input"``) or output of ``module`` when ``model`` runs on ``x``, stopping there."""
    seen: list[torch.Tensor] = []

    def hook(mod, inputs, output):
        seen.append((inputs[0] if want == "input" else output).detach())
        raise _Reached

    handle = module.register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    if not seen:
        raise PruneCliError("the layer to reconstruct did not run on the calibration batch")
    return seen[0]


def _patches_at(module: nn.Module, x: torch.Tensor, image: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """(m, F): the layer's input features (F = in_channels * kh * kw) at the sampled output positions.

    Gathers only the sampled patches from the zero-padded input instead of unfolding every
    position (im2col of a whole batch costs as much as the conv itself).
    """
    if isinstance(module, nn.Linear):
        if x.dim() != 2:
            raise PruneCliError(f"a linear layer reading a {x.dim()}-d input cannot be reconstructed")
        return x[image]
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = module.kernel_size, module.stride, module.dilation, module.padding
    padded = F.pad(x, (pw, pw, ph, ph))
    out_w = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    oh, ow = where // out_w, where % out_w
    rows = (oh * sh).view(-1, 1) + torch.arange(kh, device=x.device).view(1, -1) * dh  # (m, kh)
    cols = (ow * sw).view(-1, 1) + torch.arange(kw, device=x.device).view(1, -1) * dw  # (m, kw)
    channels = torch.arange(x.shape[1], device=x.device)
    patch = padded[image.view(-1, 1, 1, 1), channels.view(1, -1, 1, 1), rows.view(-1, 1, kh, 1), cols.view(-1, 1, 1, kw)]
    return patch.reshape(len(image), -1)  # (m, Cin * kh * kw), the order of the weight's flattened inputs


@dataclass(eq=False)
class _Targets:
    """The original network's sampled outputs of one consumer, and where they were sampled."""

    positions: list[tuple[torch.Tensor, torch.Tensor]]  # per batch: (image, output position) of each sample
    rows: list[torch.Tensor]  # per batch: (m_b, K) outputs, float64
    generator: torch.Generator


@torch.no_grad()
def original_targets(original: nn.Module, consumers: list[Consumer], inputs: list[torch.Tensor], *, samples_per_image: int, seed: int) -> dict[str, _Targets]:
    """Every consumer's sampled outputs in the original network: one pass over the batches for all of them.

    Positions are drawn per consumer from a generator seeded by (seed, consumer name), in
    batch order, so they do not depend on which other consumers are sampled.
    """
    found = {c.name: _Targets([], [], torch.Generator().manual_seed(stream_seed(seed, f"reconstruct:{c.name}"))) for c in consumers}

    def hook(name):
        def grab(mod, inp, out):
            t = found[name]
            out = out.detach()
            out = out.reshape(out.shape[0], out.shape[1], -1) if out.dim() > 2 else out.unsqueeze(2)  # (N, K, L)
            n_img, n_pos = out.shape[0], out.shape[2]
            image = torch.arange(n_img).repeat_interleave(samples_per_image)
            where = torch.randint(n_pos, (n_img * samples_per_image,), generator=t.generator)
            image, where = image.to(out.device), where.to(out.device)
            t.positions.append((image, where))
            t.rows.append(out[image, :, where].double())

        return grab

    handles = [original.get_submodule(c.name).register_forward_hook(hook(c.name)) for c in consumers]
    try:
        for x in inputs:
            before = [len(found[c.name].rows) for c in consumers]
            original(x)
            if any(len(found[c.name].rows) != b + 1 for c, b in zip(consumers, before)):
                raise PruneCliError("a layer to reconstruct runs more or less than once per forward pass (a shared layer?)")
    finally:
        for h in handles:
            h.remove()
    return found


@torch.no_grad()
def layer_samples(model: nn.Module, consumer: Consumer, inputs: list[torch.Tensor], targets: _Targets) -> LayerSamples:
    """The consumer's sampled problem: patches from ``model`` (as pruned so far), targets from the original."""
    module = consumer.module
    weight = module.weight.detach().double()
    k = weight.shape[0]
    patches = []
    for x, (image, where) in zip(inputs, targets.positions):
        rows = _patches_at(module, _first_call(model, module, x, want="input"), image, where).double()  # (m_b, F)
        patches.append(rows[:, consumer.features.to(rows.device)])  # (m_b, C, s)
    target = torch.cat(targets.rows)
    if target.shape[1] != k:
        raise PruneCliError(f"{consumer.name}: the original network's layer has {target.shape[1]} outputs, the pruned one's {k}")
    if module.bias is not None:
        target = target - module.bias.detach().double().view(1, -1)
    patches_t = torch.cat(patches)
    grouped = weight.reshape(k, -1)[:, consumer.features.to(weight.device)]  # (K, C, s)
    out_channel = torch.randint(k, (patches_t.shape[0],), generator=targets.generator).to(patches_t.device)
    return LayerSamples(patches=patches_t, weight=grouped, target=target, out_channel=out_channel)


@torch.no_grad()
def _write(consumer: Consumer, kept: torch.Tensor, new: torch.Tensor) -> None:
    """The consumer's weights: ``new`` on the kept channels' features, zero on the pruned ones'."""
    w = consumer.module.weight
    flat = w.detach().reshape(w.shape[0], -1).clone()
    features = consumer.features.to(w.device)
    flat[:, features.flatten()] = 0
    flat[:, features[kept.to(w.device)].flatten()] = new.reshape(new.shape[0], -1).to(w.dtype)
    w.copy_(flat.view_as(w))


def _count(p: UnitPlan, selection: Selection) -> int:
    """Channels ``p``'s rate removes (the selection's count rule and rounding, as every plan)."""
    step = math.lcm(selection.round_to, p.unit.multiple)
    return p.size - kept_count(p.size, p.rate, step, p.unit.root, selection.count_rule, selection.round_mode)


def reconstruct(
    model: nn.Module,
    original: nn.Module,
    units: list[Unit],
    *,
    selection: Selection,
    calibration: Batches,
    method: ReconstructionCriterion,
    output_layer: Optional[str] = None,
    linear_layers: Optional[set[str]] = None,
    forward_order: Optional[list[str]] = None,
    report: Optional[list[LayerReport]] = None,
) -> Plan:
    """Choose and reconstruct unit by unit; change ``model``'s consumer weights; return the Plan (module docstring)."""
    if not getattr(method, "reconstructs", False):
        raise PruneCliError(f"{method.name} does not reconstruct: plan it with the Pruner")
    if selection.scope != "layerwise":
        raise OptionError(f"{{scope}} {selection.scope}: {method.name} chooses each layer's channels by reconstructing the next layer; use {{scope}} layerwise")
    plans = resolve(units, selection, output_layer=output_layer, linear_layers=linear_layers or set())
    names = {m: n for n, m in model.named_modules()}
    todo: list[tuple[UnitPlan, Consumer]] = []
    left: list[str] = []
    for p in plans:
        if p.status != "prune" or p.rate <= 0:
            continue
        consumer, why = consumer_of(p.unit, names)
        if consumer is None:
            p.status, p.reason = "unscored", why
            left.append(p.unit.root)
        else:
            todo.append((p, consumer))
    notes: list[str] = []
    if left:
        notes.append(f"{len(left)} layer group(s) {method.name} cannot reconstruct (no single layer reads them) were left whole: {', '.join(left[:5])}{', ...' if len(left) > 5 else ''}")
    if not todo:
        return Plan("channel", plans, rate=selection.rate, notes=notes)
    order = {n: i for i, n in enumerate(forward_order or [])}
    todo.sort(key=lambda pc: order.get(pc[0].unit.producers[0].name, len(order)))
    inputs = [x for x, _ in calibration]
    if not inputs:
        raise PruneCliError(f"{method.name}: the calibration data is empty")
    modes = [(m, m.training) for m in [*model.modules(), *original.modules()]]
    model.eval()
    original.eval()
    try:
        todo = [(p, c) for p, c in todo if _count(p, selection) > 0]
        targets = original_targets(original, [c for _, c in todo], inputs, samples_per_image=method.samples_per_image, seed=method.seed)
        # minutes for a large network on a CPU: a bar over the layers, naming the one at work
        with step_bar(f"{method.name}: reconstructing", len(todo), unit="layers") as bar:
            for p, consumer in todo:
                if bar is not None:
                    bar.advance(0, description=f"{method.name}: reconstructing {p.unit.root}")
                n_remove = _count(p, selection)
                samples = layer_samples(model, consumer, inputs, targets.pop(consumer.name))
                n_keep = p.size - n_remove
                kept = method.choose(samples, n_keep).cpu()
                if len(kept) != n_keep:
                    raise PruneCliError(f"{method.name} kept {len(kept)} channels of {p.unit.root}, not {n_keep}")
                new = method.refit(samples, kept)
                everything = torch.arange(p.size)
                if report is not None:
                    report.append(
                        LayerReport(
                            unit=p.unit.root,
                            consumer=consumer.name,
                            kept=n_keep,
                            channels=p.size,
                            error_dense=samples.relative_error(everything),
                            error_pruned=samples.relative_error(kept),
                            error_reconstructed=samples.relative_error(kept, new),
                        )
                    )
                _write(consumer, kept, new)
                gone = torch.ones(p.size, dtype=torch.bool)
                gone[kept] = False
                p.prune = torch.nonzero(gone).flatten()
                if bar is not None:
                    bar.advance(1)
    finally:
        for m, training in modes:
            m.training = training
    return Plan("channel", plans, rate=selection.rate, notes=notes)


@register_algorithm("reconstruction")
class Reconstruction(Algorithm):
    """Layer by layer, reconstruct the next layer's outputs (ThiNet, arXiv:1707.06342; channel pruning, arXiv:1707.06168).

    ``prune --method thinet|cp --rate R [--calib-batches N]``: each unit's channels are
    chosen by how well the one layer reading them can still produce the original
    network's outputs, and that layer's weights are refitted by least squares.
    """

    criteria_note = "thinet, cp"
    reconstructs = True

    def accepts(self, criterion: Criterion) -> Optional[str]:
        if not getattr(criterion, "reconstructs", False):
            return f"{criterion.name} scores channels without reconstructing: use one-shot, soft, gradual or iterative pruning"
        return None

    def plan(self, pruner, original: nn.Module, *, report: Optional[list[LayerReport]] = None) -> Plan:
        """`reconstruct` on the Pruner's model, units, selection and calibration data."""
        return reconstruct(
            pruner.model,
            original,
            pruner.units,
            selection=pruner.selection,
            calibration=pruner.calibration if pruner.calibration is not None else [],
            method=pruner.criterion,
            output_layer=pruner.output_layer,
            linear_layers=pruner._linear_layers(),
            forward_order=pruner.graph.forward_order,
            report=report,
        )
