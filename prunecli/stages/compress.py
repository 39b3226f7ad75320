"""`compress`: remove masked channels physically and prove nothing else changed.

A channel of a unit is removed when its output is identically zero: every entry of it in
the unit's producing layers (filter and bias) and normalisation layers (scale and shift)
is zero. Structured masks from `prune` zero exactly those entries; weight-level masks
rarely zero a whole channel, and then only those channels go. Removal goes through the
Torch-Pruning dependency group, so coupled layers shrink together, and the model is
checked against the masked one on a probe batch before anything is written.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from prunecli.checkpoint import Checkpoint, lineage_entry, load_checkpoint, rebuild_model, save_checkpoint
from prunecli.engine.distributed import resolve_device
from prunecli.errors import PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.latency import measure_latencies
from prunecli.models.structure import example_input
from prunecli.surgery.units import Unit, build_graph, units
from prunecli.surgery.plan import UnitPlan
from prunecli.surgery.equivalence import difference, outputs, probe_batch
from prunecli.surgery.masks import apply_masks
from prunecli.stages.prune import apply_plan, check_runs
from prunecli.surgery.tracking import prune_tracking_entries



@dataclass
class CompressReport:
    output: Path
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    size_before: int
    size_after: int
    latency_ms_before: Optional[float]
    latency_ms_after: Optional[float]
    latency_batch_size: int
    max_abs_diff: float
    removed: list[tuple[str, int, int]]  # (unit root, channels before, after)
    masked_weights_left: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "latency_ms_before": self.latency_ms_before,
            "latency_ms_after": self.latency_ms_after,
            "max_abs_diff": self.max_abs_diff,
            "output": str(self.output),
            "size_before": self.size_before,
            "size_after": self.size_after,
            "latency_batch_size": self.latency_batch_size,
            "masked_weights_left": self.masked_weights_left,
            "layers_shrunk": len(self.removed),
        }


def _entry_rows(module: nn.Module, local: torch.Tensor) -> torch.Tensor:
    """For each local output index: does the module hold any non-zero entry of that channel?"""
    alive = torch.zeros(len(local), dtype=torch.bool)
    for name, p in module.named_parameters(recurse=False):
        t = p.detach()
        if isinstance(module, nn.modules.conv._ConvTransposeNd) and name == "weight":
            t = t.transpose(0, 1)
        rows = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
        alive |= (rows[local] != 0).any(dim=1).cpu()
    return alive


def dead_channels(unit: Unit) -> torch.Tensor:
    """Unit channels whose output is identically zero (all producer and norm entries zero)."""
    if unit.others:
        return torch.empty(0, dtype=torch.long)  # layers whose layout we do not read: keep everything
    alive = torch.zeros(unit.channels, dtype=torch.long)
    for view in unit.producers + unit.norms:
        alive.index_add_(0, view.root_idxs, _entry_rows(view.module, view.local_idxs).long())
    for view in unit.passthrough:  # e.g. an option-A shortcut still carrying an input channel
        alive.index_add_(0, view.root_idxs, view.module.channel_alive(view.local_idxs).long())
    return torch.nonzero(alive == 0).flatten()


def compress_checkpoint(
    source: Path,
    *,
    output: Path,
    options: dict[str, Any],
    batch_size: int = 32,
    device: str = "cpu",
    latency: bool = True,
    repeats: int = 10,
) -> CompressReport:
    ckpt = load_checkpoint(source)
    spec = ckpt.model
    model = rebuild_model(ckpt).eval()
    apply_masks(model, ckpt.masks)
    example = example_input(spec)
    shape = tuple(example.shape[1:])
    reference = copy.deepcopy(model)
    probe = probe_batch(spec)
    expected = outputs(reference, probe)

    graph = build_graph(model, example, name=spec.name)
    plans: list[UnitPlan] = []
    notes: list[str] = []
    for u in units(model, graph, name=spec.name):
        dead = dead_channels(u)
        if len(dead) == u.channels:  # a layer that is entirely zero keeps one (zero) channel
            dead = dead[1:]
            notes.append(f"{u.root}: every channel was zero; one zero channel kept so the layer still exists")
        if len(dead):
            plans.append(UnitPlan(u, "prune", prune=dead))
    if not plans:
        hint = "" if ckpt.masks else f" (prune first, e.g. prunecli prune {source} --method l1 --rate 0.5)"
        notes.append(f"no channel is entirely zero: nothing removed{hint}")

    kept = prune_tracking_entries(model, lambda m: apply_plan(m, graph, plans))
    check_runs(model, example, spec.name)
    masks = {}
    for name, mask in ckpt.masks.items():
        new = mask.flatten()[kept[name].flatten()].view(kept[name].shape)
        if not bool(new.all()):
            masks[name] = new
    diff, same = difference(expected, outputs(model, probe))
    if not same:
        culprit = _locate(reference, spec, example, probe, expected, plans)
        raise PruneCliError(
            f"{source}: the compressed model differs from the masked one (max |diff| {diff:.3g}) after removing "
            f"channels of the group at {culprit}; the masks do not describe a removable structure there; nothing written"
        )

    before, after = count_complexity(reference, shape), count_complexity(model, shape)
    lat_before = lat_after = None
    dev = resolve_device(device)
    if latency:
        lb, la = measure_latencies([reference, model], shape, batch_size=batch_size, device=dev, repeats=repeats)
        lat_before, lat_after = lb.median_ms, la.median_ms
    extra = dict(ckpt.extra)
    extra["compress"] = {"removed": [[p.unit.root, p.channels, p.kept] for p in plans]}
    metrics = dict(ckpt.metrics)
    metrics.update(macs=after.macs, params=after.params, macs_before_compress=before.macs, max_abs_diff=diff)
    out = Checkpoint(
        model=spec,
        state_dict=model.state_dict(),
        dataset=ckpt.dataset,
        structure=list(ckpt.structure or []) + [list(step) for step in graph.pruning_history()],
        masks=masks,
        metrics=metrics,
        lineage=ckpt.lineage + [lineage_entry("compress", options, parent=source)],
        extra=extra,
    )
    save_checkpoint(out, output)
    left = sum(int((~m).sum()) for m in masks.values())
    if left:
        notes.append(f"{left:,} masked weights stay as zeros inside the smaller layers (weight-level sparsity gives no speed-up here)")
    return CompressReport(
        output=output,
        macs_before=before.macs,
        macs_after=after.macs,
        params_before=before.params,
        params_after=after.params,
        size_before=os.path.getsize(source),
        size_after=os.path.getsize(output),
        latency_ms_before=lat_before,
        latency_ms_after=lat_after,
        latency_batch_size=batch_size,
        max_abs_diff=diff,
        removed=[(p.unit.root, p.channels, p.kept) for p in plans],
        masked_weights_left=left,
        notes=notes,
    )


def _locate(reference, spec, example, probe, expected, plans) -> str:
    """Remove the groups one at a time on a fresh copy; name the first that breaks equality."""
    work = copy.deepcopy(reference)
    graph = build_graph(work, example, name=spec.name)
    fresh = {u.root: u for u in units(work, graph, name=spec.name)}
    for p in plans:
        u = fresh.get(p.unit.root)
        if u is None:
            continue
        apply_plan(work, graph, [UnitPlan(u, "prune", prune=p.prune)])
        if not difference(expected, outputs(work, probe))[1]:
            return f"{u.root} (coupled: {', '.join(u.members[:6])}{' ...' if len(u.members) > 6 else ''})"
    return "an unidentified group"
