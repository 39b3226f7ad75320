"""`prune`: score, select, and write a masked checkpoint (same shapes, pruned entries zero).

Structured (channel) pruning works on a copy of the model: trace it, list the dependency
units, score them with the method, plan the removal, then remove the planned channels from
the copy *physically* while tracking which entries survive (surgery/tracking.py). The masks
are exactly those entries, so the masked model computes what `compress` will produce; the
copy's MACs are what the compressed model will have.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from prunecli.checkpoint import Checkpoint, lineage_entry, load_checkpoint, rebuild_model, save_checkpoint
from prunecli.errors import PruneCliError, UsageError
from prunecli.criteria import ScoringContext, get_method
from prunecli.metrics.complexity import count_complexity
from prunecli.surgery.custom import after_structure_change
from prunecli.models.structure import example_input
from prunecli.surgery.units import build_graph, conv_linear_ids, output_layer, units
from prunecli.surgery.masks import apply_masks, maskable_tensors
from prunecli.surgery.plan import Selection, UnitPlan, kept_count, normalise, resolve, select_global, select_layerwise
from prunecli.surgery.tracking import masks_from_kept, prune_tracking_entries

GRANULARITIES = ("channel", "weight")
SCOPES = ("layerwise", "global")


@dataclass
class PruneConfig:
    method: str
    selection: Selection
    granularity: str = "channel"
    target_macs: Optional[float] = None  # fraction of MACs to remove; replaces --rate
    mix_norm: float = 0.0
    seed: int = 0
    dataset: Optional[str] = None
    data: Optional[str] = None
    calib_batches: int = 8
    batch_size: int = 64
    workers: int = 4
    compress: bool = False  # remove the channels now and write a compressed checkpoint


@dataclass
class LayerRow:
    name: str
    members: int
    before: int
    after: int
    status: str
    note: str = ""


@dataclass
class PruneReport:
    output: Path
    method: str
    granularity: str
    rows: list[LayerRow]
    macs_before: int
    macs_after: int  # after compress (channel granularity); equal to before for weights
    params_before: int
    params_after: int
    weights_masked: int  # entries zeroed by this prune
    rate_used: Optional[float] = None  # the base rate (after --target-macs search)
    notes: list[str] = field(default_factory=list)
    compressed: bool = False
    max_abs_diff: Optional[float] = None  # --compress: masked vs compressed, when comparable


# ---------------------------------------------------------------------------- entry point


def prune_checkpoint(source: Path, cfg: PruneConfig, *, output: Path, options: dict[str, Any]) -> PruneReport:
    if cfg.granularity not in GRANULARITIES:
        raise UsageError(f"--granularity {cfg.granularity!r}: valid: {', '.join(GRANULARITIES)}")
    if cfg.selection.scope not in SCOPES:
        raise UsageError(f"--scope {cfg.selection.scope!r}: valid: {', '.join(SCOPES)}")
    method = get_method(cfg.method)
    if cfg.granularity not in method.granularities:
        raise PruneCliError(
            f"method {cfg.method!r} prunes at granularity {', '.join(method.granularities)}, not {cfg.granularity!r}"
        )
    sel = cfg.selection
    if sel.rate is None and cfg.target_macs is None and not sel.layer_rate and not sel.layer_rates:
        raise UsageError("say how much to prune: --rate R, --target-macs F, or --layer-rate/--layer-rates")
    if cfg.target_macs is not None:
        if sel.rate is not None:
            raise UsageError("--target-macs searches for the rate: do not also give --rate")
        if not (0.0 < cfg.target_macs < 1.0):
            raise PruneCliError(f"--target-macs {cfg.target_macs}: the fraction of MACs to remove must be in (0, 1)")
        if cfg.granularity == "weight":
            raise PruneCliError("--target-macs needs --granularity channel: removing single weights does not reduce MACs")
    if cfg.compress and cfg.granularity != "channel":
        raise UsageError("--compress removes channels: it needs --granularity channel")
    if not (0.0 <= cfg.mix_norm <= 1.0):
        raise PruneCliError(f"--mix-norm {cfg.mix_norm}: must be in [0, 1]")
    if cfg.mix_norm and cfg.method != "geomedian":
        raise UsageError("--mix-norm is FPGM-mix: it goes with --method geomedian")
    if cfg.mix_norm and sel.scope == "global":
        raise UsageError("--mix-norm selects within each layer: use --scope layerwise")

    ckpt = load_checkpoint(source)
    model = rebuild_model(ckpt).eval()
    apply_masks(model, ckpt.masks)
    spec = ckpt.model
    example = example_input(spec)
    ctx = ScoringContext(model=model, seed=cfg.seed, mix_norm=cfg.mix_norm)
    if method.needs_data:
        ctx.calibration = _calibration(ckpt, cfg)

    before = count_complexity(model, example.shape[1:])
    result = None
    if cfg.granularity == "channel":
        result = _channel_masks(model, spec, example, method, cfg, ctx)
        masks, rows, after, rate_used, notes = result.masks, result.rows, result.after, result.rate_used, result.notes
    else:
        masks, rows, notes = _weight_masks(model, example, method, cfg, ctx)
        after, rate_used = before, sel.rate

    combined = _combine(ckpt.masks, masks)
    newly = sum(int((~m).sum()) - int((~ckpt.masks[n]).sum()) if n in ckpt.masks else int((~m).sum()) for n, m in combined.items())
    apply_masks(model, combined)
    extra = dict(ckpt.extra)
    extra["prune"] = {
        "method": cfg.method,
        "granularity": cfg.granularity,
        "scope": sel.scope,
        "rate": rate_used,
        "target_macs": cfg.target_macs,
        "layers": [vars(r) for r in rows],
    }
    lineage = ckpt.lineage + [lineage_entry("prune", options, parent=source)]
    max_diff = None
    if cfg.compress:
        out, max_diff, more = _compressed_checkpoint(ckpt, model, result, extra, lineage, before, after)
        notes += more
    else:
        out = Checkpoint(
            model=spec,
            state_dict=model.state_dict(),
            dataset=ckpt.dataset,
            structure=ckpt.structure,
            masks=combined,
            metrics={"macs_before": before.macs, "macs_after_compress": after.macs, "params_after_compress": after.params},
            lineage=lineage,
            extra=extra,
        )
    save_checkpoint(out, output)
    return PruneReport(
        output=output,
        method=cfg.method,
        granularity=cfg.granularity,
        rows=rows,
        macs_before=before.macs,
        macs_after=after.macs,
        params_before=before.params,
        params_after=after.params,
        weights_masked=newly,
        rate_used=rate_used,
        notes=notes,
        compressed=cfg.compress,
        max_abs_diff=max_diff,
    )


def _compressed_checkpoint(ckpt: Checkpoint, masked: nn.Module, result: _ChannelResult, extra, lineage, before, after):
    """--compress: the pruned copy itself becomes the checkpoint (checked against the masks when they are exact)."""
    from prunecli.surgery.equivalence import difference, outputs, probe_batch

    notes = []
    work = result.work
    carried = {}
    for name, mask in ckpt.masks.items():  # masks from an earlier weight-level prune stay, re-indexed
        new = mask.flatten()[result.kept[name].flatten()].view(result.kept[name].shape)
        if not bool(new.all()):
            carried[name] = new
    apply_masks(work, carried)
    diff = None
    if any(p.unit.stat_norms for p in result.plans if p.status == "prune" and len(p.prune)):
        notes.append("not checked against a masked model: LayerNorm/GroupNorm statistics change when channels go; finetune and evaluate")
    else:
        probe = probe_batch(ckpt.model)
        diff, same = difference(outputs(masked, probe), outputs(work, probe))
        if not same:
            raise PruneCliError(f"the compressed model differs from the masked one (max |diff| {diff:.3g}); nothing written")
    metrics = {"macs": after.macs, "params": after.params, "macs_before_compress": before.macs}
    if diff is not None:
        metrics["max_abs_diff"] = diff
    out = Checkpoint(
        model=ckpt.model,
        state_dict=work.state_dict(),
        dataset=ckpt.dataset,
        structure=list(ckpt.structure or []) + result.history,
        masks=carried,
        metrics=metrics,
        lineage=lineage,
        extra=extra,
    )
    return out, diff, notes


# ---------------------------------------------------------------------------- channels


@dataclass
class _ChannelResult:
    masks: dict
    rows: list
    after: Any
    rate_used: Optional[float]
    notes: list
    plans: list
    work: nn.Module  # the copy, physically pruned
    history: list  # Torch-Pruning's record of that pruning
    kept: dict  # tensor name -> kept flat indices (surgery/tracking.py)


def _channel_masks(model, spec, example, method, cfg: PruneConfig, ctx) -> _ChannelResult:
    """Plan on a traced copy, remove the plan from the copy while tracking survivors."""
    work = copy.deepcopy(model)
    graph = build_graph(work, example, name=spec.name)
    all_units = units(work, graph, name=spec.name)
    out_layer = output_layer(work, example)
    linear = {n for n, m in work.named_modules() if isinstance(m, nn.Linear)}
    ctx.model = work
    method.prepare(work, all_units, ctx)

    notes: list[str] = []
    scores: dict[int, torch.Tensor] = {}
    unscored: list[str] = []
    eligible = resolve(all_units, replace(cfg.selection, rate=cfg.selection.rate or 0.0), output_layer=out_layer, linear_layers=linear)
    for p in eligible:
        if p.status != "prune":
            continue
        s = method.channel_scores(p.unit, ctx)
        if s is None:
            unscored.append(p.unit.root)
        else:
            scores[p.unit.index] = s.detach().double().cpu()
    if unscored:
        if not scores:
            raise PruneCliError(f"method {cfg.method!r} cannot score any prunable layer of {spec.name} (e.g. slimming needs BatchNorm)")
        notes.append(f"{len(unscored)} layer group(s) {cfg.method} cannot score were left whole: {', '.join(unscored[:5])}")

    def plan_for(rate: Optional[float]) -> list[UnitPlan]:
        sel = cfg.selection if rate is None else replace(cfg.selection, rate=rate)
        plans = resolve(all_units, sel, output_layer=out_layer, linear_layers=linear)
        for p in plans:
            if p.status == "prune" and p.unit.index not in scores:
                p.status, p.reason = "unscored", f"{cfg.method} cannot score it"
        if sel.scope == "global":
            select_global(plans, scores, sel, method.global_normalizer)
        else:
            select_layerwise(plans, lambda u, n: method.select_channels(u, n, ctx), sel, scores_of=lambda u: scores[u.index])
        return plans

    rate_used = cfg.selection.rate
    if cfg.target_macs is not None:
        # the largest base rate that leaves every unit at least one channel (or position)
        widths = [p.channels // max(1, p.unit.conv_groups) for p in eligible if p.status == "prune"]
        feasible = min((1.0 - 1.0 / w for w in widths if w > 1), default=0.0)
        plans, rate_used = _search_rate(model, spec, example, plan_for, cfg, feasible)
    else:
        plans = plan_for(None)

    for p in plans:
        if p.status == "prune" and len(p.prune) >= p.channels:
            raise PruneCliError(f"pruning would empty {p.unit.root} ({p.channels} channels); lower the rate")
    blocked = [p for p in plans if p.status == "prune" and len(p.prune) and p.unit.stat_norms]
    if blocked and not cfg.compress:
        u = blocked[0].unit
        raise PruneCliError(
            f"a mask cannot stand for removing channels of {u.root}: {u.stat_norms[0]} normalises over them "
            "(LayerNorm/GroupNorm statistics change when a channel is zeroed); use prune --compress to remove them directly"
        )
    shapes = {n: t.shape for n, t in maskable_tensors(work).items()}
    kept = prune_tracking_entries(work, lambda m: apply_plan(m, graph, plans))
    check_runs(work, example, spec.name)
    masks = masks_from_kept(shapes, kept, shapes)
    masks = {n: m for n, m in masks.items() if not bool(m.all())}
    after = count_complexity(work, example.shape[1:])
    rows = [
        LayerRow(
            name=p.unit.root,
            members=len(p.unit.producers),
            before=p.channels,
            after=p.kept,
            status=p.status,
            note=p.reason or (f"+{len(p.unit.producers) - 1} coupled" if len(p.unit.producers) > 1 else ""),
        )
        for p in plans
    ]
    return _ChannelResult(masks, rows, after, rate_used, notes, plans, work, [list(h) for h in graph.pruning_history()], kept)


def apply_plan(model: nn.Module, graph, plans: list[UnitPlan]) -> None:
    """Physically remove each unit's planned channels through its dependency group."""
    modules = dict(model.named_modules())
    for p in plans:
        if not len(p.prune):
            continue
        root = modules[p.unit.tp_root]
        idxs = [int(i) for i in p.prune]
        if min(idxs) < 0 or max(idxs) >= p.unit.channels:  # the graph does not validate indices itself
            raise PruneCliError(f"internal: channel index out of range for {p.unit.root}")
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, idxs)
        if not graph.check_pruning_group(group):
            raise PruneCliError(f"pruning {len(idxs)} of {p.unit.channels} channels would empty a layer coupled to {p.unit.root}")
        group.prune()
    after_structure_change(model)


def check_runs(model: nn.Module, example: torch.Tensor, name: str) -> None:
    """A pruned model must still run; some architectures hard-code sizes Torch-Pruning cannot adapt."""
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example)
            model.train(was)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PruneCliError(
            f"the pruned {name} no longer runs ({type(e).__name__}: {msg}); Torch-Pruning does not adapt "
            "this architecture's hard-coded sizes; nothing written"
        ) from None


def _search_rate(model, spec, example, plan_for, cfg: PruneConfig, feasible: float):
    """Bisection on the base rate until the compressed model has (1 - target) of the MACs."""
    base = count_complexity(model, example.shape[1:]).macs

    def reduction(rate: float) -> tuple[float, list[UnitPlan]]:
        plans = plan_for(rate)
        work = copy.deepcopy(model)
        graph = build_graph(work, example, name=spec.name)
        # the plans refer to units of another trace; their names and indices are the same
        apply_plan(work, graph, plans)
        return 1.0 - count_complexity(work, example.shape[1:]).macs / base, plans

    cap = cfg.selection.max_layer_rate or 0.99
    lo, hi = 0.0, min(0.99, cap, feasible)
    top, plans_hi = reduction(hi)
    if top < cfg.target_macs:
        raise PruneCliError(
            f"--target-macs {cfg.target_macs}: these settings remove at most {top:.1%} of the MACs (at rate {hi:g})"
        )
    best = (hi, plans_hi)
    for _ in range(20):
        mid = (lo + hi) / 2
        red, plans = reduction(mid)
        if red >= cfg.target_macs:
            hi, best = mid, (mid, plans)
        else:
            lo = mid
        if hi - lo < 1e-3:
            break
    return best[1], round(best[0], 4)


# ---------------------------------------------------------------------------- weights


class _LayerUnit:
    """A conv/linear layer seen as a 'unit' of weights, so the same resolver applies."""

    def __init__(self, index: int, name: str, layer_id: int, numel: int):
        self.index, self.root, self.tp_root = index, name, name
        self.producer_names, self.layer_ids, self.channels = [name], [layer_id], numel


def _weight_masks(model, example, method, cfg: PruneConfig, ctx):
    ids = conv_linear_ids(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    lunits = [_LayerUnit(i, n, ids[n], m.weight.numel()) for i, (n, m) in enumerate(layers, start=1)]
    out_layer = output_layer(model, example)
    linear = {n for n, m in layers if isinstance(m, nn.Linear)}
    method.prepare(model, [], ctx)
    plans = resolve(lunits, cfg.selection, output_layer=out_layer, linear_layers=linear)
    modules = dict(layers)
    scores = {p.unit.index: method.weight_scores(f"{p.unit.root}.weight", modules[p.unit.root].weight, ctx).detach().double().cpu().flatten() for p in plans if p.status == "prune"}
    if cfg.selection.scope == "global":
        _select_weights_global(plans, scores, cfg.selection, method.weight_global_normalizer)
    else:
        for p in plans:
            if p.status == "prune" and p.rate > 0:
                keep = kept_count(p.channels, p.rate, 1, p.unit.root)
                p.prune = torch.sort(scores[p.unit.index], stable=True).indices[: p.channels - keep]
    masks, rows = {}, []
    for p in plans:
        w = modules[p.unit.root].weight
        if len(p.prune):
            m = torch.ones(w.numel(), dtype=torch.bool)
            m[p.prune] = False
            masks[f"{p.unit.root}.weight"] = m.view(w.shape)
        rows.append(LayerRow(p.unit.root, 1, p.channels, p.kept, p.status, p.reason or "weights"))
    return masks, rows, ["weight-level masks keep every shape: compress removes only channels that end up entirely zero"]


def _select_weights_global(plans, scores, sel: Selection, normaliser) -> None:
    eligible = [p for p in plans if p.status == "prune"]
    if not eligible:
        return
    normed = {p.unit.index: normalise(scores[p.unit.index], normaliser) for p in eligible}
    allv = torch.cat([normed[p.unit.index] for p in eligible])
    target = int(round((sel.rate or 0.0) * allv.numel()))
    if target == 0:
        return
    threshold = torch.kthvalue(allv, target).values
    for p in eligible:
        s = normed[p.unit.index]
        n = int((s <= threshold).sum())
        cap = p.channels - 1
        if sel.max_layer_rate is not None:
            cap = min(cap, int(p.channels * sel.max_layer_rate + 1e-9))
        n = min(n, cap)
        p.prune = torch.sort(s, stable=True).indices[:n]
        p.rate = n / p.channels


# ---------------------------------------------------------------------------- helpers


def _combine(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(old)
    for n, m in new.items():
        out[n] = m & old[n] if n in old else m
    return out


def _calibration(ckpt: Checkpoint, cfg: PruneConfig):
    """Batches of the training split (no augmentation), seeded, for data-driven criteria."""
    from prunecli.data.loaders import FolderBatches, TensorBatches
    from prunecli.data._registry import TensorSplit
    from prunecli.stages.evaluate import data_for_checkpoint

    if ckpt.dataset is None and cfg.dataset is None:
        raise PruneCliError(f"method {cfg.method!r} needs calibration data: {ckpt.path} records no dataset; pass --dataset (and --data)")
    bundle = data_for_checkpoint(ckpt, dataset=cfg.dataset, data=Path(cfg.data) if cfg.data else None)
    device = torch.device("cpu")
    n = cfg.calib_batches

    def batches():
        if isinstance(bundle.train, TensorSplit):
            it = TensorBatches(bundle.train, batch_size=cfg.batch_size, device=device, mean=bundle.spec.mean, std=bundle.spec.std, shuffle=True, seed=cfg.seed)
        else:
            it = FolderBatches(bundle.train, batch_size=cfg.batch_size, device=device, shuffle=True, seed=cfg.seed, workers=cfg.workers)
        for i, batch in enumerate(it):
            if i >= n:
                break
            yield batch

    return batches
