"""`prune`: a checkpoint in, the Pruner, a masked (or, with ``compress``, a compressed) checkpoint out.

The masked checkpoint keeps every shape with the pruned entries zero; the masks are what
the Pruner's tracked removal kept (prunecli.surgery.pruner), so the masked model computes
what `compress` will produce, and the MACs printed are the compressed model's.

With ``--epochs N`` the stage prunes while training instead: prunecli.stages.while_training.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from prunecli.algorithms import get_algorithm
from prunecli.checkpoint import Checkpoint, derive, save_checkpoint, with_result
from prunecli.config import PruneConfig
from prunecli.criteria import Criterion, criterion_class, get_criterion, hyperparameters
from prunecli.data import TensorSplit
from prunecli.data.loaders import FolderBatches, TensorBatches
from prunecli.engine.distributed import resolve_device
from prunecli.errors import OptionError, PruneCliError
from prunecli.metrics.complexity import count_complexity, run_counted
from prunecli.models import example_input
from prunecli.models.channel_selection import CONVERTER as SELECTION, insert_channel_selection, renamed, stream_norms
from prunecli.outputs import claim_output
from prunecli.stages.checkpoints import data_for_checkpoint, derive_compressed, load_model
from prunecli.surgery.equivalence import counted_outputs, difference, probe_batch
from prunecli.surgery.masks import combine, newly_masked
from prunecli.surgery.plan import LayerRow, Plan
from prunecli.surgery.pruner import Pruner
from prunecli.surgery.removal import must_run


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
    rate_used: Optional[float] = None  # the base rate (after a --target-macs search)
    notes: list[str] = field(default_factory=list)
    compressed: bool = False
    max_abs_diff: Optional[float] = None  # --compress: masked vs compressed, when comparable
    latency: Optional[dict[str, Any]] = None  # --target-latency: predicted and measured, requested and achieved
    warnings: list[str] = field(default_factory=list)  # results the options probably did not mean (`surprises`)


def criterion_for(cfg: PruneConfig) -> Criterion:
    """``cfg.method`` with the hyper-parameters it takes (``mix_norm`` only when set)."""
    hparams: dict[str, Any] = {"mix_norm": cfg.mix_norm} if cfg.mix_norm else {}
    try:
        cls = criterion_class(cfg.method)
    except PruneCliError as e:  # a bad --method value: a usage error like any other
        raise OptionError(f"{{method}} {e}") from None
    if "seed" in hyperparameters(cls):
        hparams["seed"] = cfg.seed
    if "rank" in hyperparameters(cls):  # edge-popup's channel rank (seed 000's rank_method / whether_abs)
        hparams.update(rank=cfg.rank.value, rank_abs=cfg.rank_abs)
    return get_criterion(cfg.method, **hparams)


class CalibrationBatches:
    """The first ``n`` batches of a training split (no augmentation), seeded; re-iterable."""

    def __init__(self, source, n: int):
        self.source, self.n = source, n

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return itertools.islice(iter(self.source), self.n)

    def __len__(self) -> int:
        """Batches one pass yields (the progress bars' total)."""
        return min(self.n, len(self.source))


def calibration_batches(ckpt: Checkpoint, cfg: PruneConfig, device: torch.device) -> CalibrationBatches:
    if ckpt.dataset is None and cfg.dataset is None:
        raise OptionError(f"criterion {cfg.method!r} needs calibration data: {ckpt.path} records no dataset; pass {{dataset}} (and {{data}})")
    bundle = data_for_checkpoint(ckpt, dataset=cfg.dataset, data=cfg.data, seed=cfg.seed)
    if isinstance(bundle.train, TensorSplit):
        source = TensorBatches(bundle.train, batch_size=cfg.batch_size, device=device, mean=bundle.spec.mean, std=bundle.spec.std, shuffle=True, seed=cfg.seed)
    else:
        source = FolderBatches(bundle.train, batch_size=cfg.batch_size, device=device, shuffle=True, seed=cfg.seed, workers=cfg.workers)
    return CalibrationBatches(source, cfg.calib_batches)


def count_rule(cfg: PruneConfig, criterion: Criterion) -> str:
    """--count-rule, with ``reference`` resolved to the method's own (Criterion.count_rule)."""
    rule = cfg.count_rule.value
    return criterion.count_rule if rule == "reference" else rule


def stream_bn(cfg: PruneConfig, criterion: Criterion) -> str:
    """--stream-bn resolved: ``select`` by default for criteria that score selection units (slimming)."""
    if cfg.stream_bn is None:
        return "select" if criterion.scores_selection else "couple"
    if cfg.stream_bn.value == "select" and not criterion.scores_selection:
        raise OptionError(
            f"{{stream_bn}} select prunes a BatchNorm and the next conv's inputs, which have no filters for {{method}} "
            f"{cfg.method} to score: use slimming, or {{stream_bn}} couple"
        )
    return cfg.stream_bn.value


def with_channel_selection(ckpt: Checkpoint, model: torch.nn.Module, cfg: PruneConfig, criterion: Criterion) -> tuple[Checkpoint, torch.nn.Module]:
    """``--stream-bn select``: channel-selection layers in front of the model's stream BatchNorms.

    Network Slimming's structure (prunecli.models.channel_selection). The conversion is
    recorded in the returned checkpoint's converters, and the parent's masks, weights and
    rewind weights are renamed to the converted model's tensors, so every file derived from
    it rebuilds from the file alone. A model without stream BatchNorms, or one converted
    already, is returned as it is.
    """
    if stream_bn(cfg, criterion) != "select" or any(c.get("name") == SELECTION for c in ckpt.converters):
        return ckpt, model
    norms = stream_norms(model)
    if not norms:
        if cfg.stream_bn is not None:
            raise OptionError(f"{{stream_bn}} select: {ckpt.model.name} names no BatchNorm that reads a residual or concatenated stream (it has no stream_norms())")
        return ckpt, model
    if ckpt.structure:
        # the recorded pruning history names the BatchNorms as they were: a selection cannot go in front of them now
        raise OptionError(
            f"{{stream_bn}} select: {ckpt.path} is already compressed without channel selection; prune its uncompressed "
            "parent, or pass {stream_bn} couple"
        )
    model = insert_channel_selection(model, norms=norms)
    extra = dict(ckpt.extra)
    rewind = extra.get("rewind")
    if isinstance(rewind, dict) and isinstance(rewind.get("state_dict"), dict):
        extra["rewind"] = {**rewind, "state_dict": renamed(rewind["state_dict"], norms)}
    converted = replace(
        ckpt,
        converters=[*ckpt.converters, {"name": SELECTION, "args": {"norms": norms}}],
        masks=renamed(ckpt.masks, norms),
        state_dict=renamed(ckpt.state_dict, norms),
        extra=extra,
    )
    return converted, model


def pruner_for(cfg: PruneConfig, criterion: Criterion, model: torch.nn.Module, spec, device: torch.device, calibration=None) -> Pruner:
    """The Pruner ``cfg`` asks for on ``model`` (its selection with the method's count rule)."""
    return Pruner(
        model,
        criterion,
        cfg.selection(count_rule(cfg, criterion)),
        example_input=example_input(spec, device=device),
        granularity=cfg.granularity.value,
        calibration=calibration,
        name=spec.name,
    )


def prune_record(cfg: PruneConfig, criterion: Criterion, algorithm: str, rate: Optional[float]) -> dict[str, Any]:
    """What a pruned checkpoint's ``extra["prune"]`` says about how it was pruned."""
    return {
        "method": cfg.method,
        "algorithm": algorithm,
        "granularity": cfg.granularity.value,
        "scope": cfg.scope.value,
        "rate": rate,
        "count_rule": count_rule(cfg, criterion),
        "stream_bn": stream_bn(cfg, criterion),
    }


def prune_checkpoint(source: Path, cfg: PruneConfig, *, output: Path) -> PruneReport:
    """One-shot pruning; ``--epochs N`` is prunecli.stages.while_training."""
    if cfg.training:
        raise PruneCliError("prune_checkpoint prunes once: with epochs > 0 call prunecli.stages.while_training.prune_while_training")
    criterion = criterion_for(cfg)
    stream_bn(cfg, criterion)  # a --stream-bn the method cannot use fails before anything is claimed
    algorithm = get_algorithm("reconstruction" if getattr(criterion, "reconstructs", False) else "one-shot")
    if algorithm.reconstructs:
        check_reconstruction_options(cfg)
    device = resolve_device(cfg.device)
    if cfg.uses_latency:
        from prunecli.metrics.latency_table import read_table, require_runtime

        require_runtime(cfg.runtime.value, str(device))  # e.g. ONNX Runtime missing: one line before anything is claimed
        if cfg.latency_table is not None:
            read_table(Path(cfg.latency_table))  # a missing or foreign file, before anything is claimed
    sweep = None
    if cfg.from_sensitivity is not None:
        from prunecli.stages.sensitivity import read_sweep

        sweep = read_sweep(Path(cfg.from_sensitivity))  # a bad file fails before the output is claimed
    with claim_output(Path(output), overwrite=cfg.overwrite):  # checked and locked before any work
        return _prune(Path(source), cfg, Path(output), criterion, algorithm, device, sweep)


def check_reconstruction_options(cfg: PruneConfig) -> None:
    """What ThiNet and CP cannot do, each said in one line before anything is claimed."""
    if cfg.scope.value == "global":
        raise OptionError(f"{{scope}} global: {cfg.method} chooses each layer's channels by reconstructing the next layer, with no scores to compare across layers; use {{scope}} layerwise")
    if cfg.granularity.value != "channel":
        raise OptionError(f"{{granularity}} {cfg.granularity.value}: {cfg.method} removes whole channels and refits the next layer; use {{granularity}} channel")
    if cfg.target_macs is not None:
        raise OptionError(f"{{target_macs}} searches the rate by planning many times; {cfg.method} changes weights as it plans: give {{rate}}")
    if getattr(cfg, "from_sensitivity", None) is not None:
        raise OptionError(f"{{from_sensitivity}} sets per-layer rates by scores; {cfg.method} chooses by reconstructing the next layer: give {{rate}}")
    if getattr(cfg, "target_latency", None) is not None or getattr(cfg, "round_auto", False):
        raise OptionError(f"{{target_latency}} and {{round_to}} auto choose widths by scores; {cfg.method} chooses by reconstructing the next layer: give {{rate}}")


def _prune(source: Path, cfg: PruneConfig, output: Path, criterion: Criterion, algorithm, device: torch.device, sweep=None) -> PruneReport:
    ckpt, model = load_model(source, device=device, allow_nonfinite=cfg.allow_nonfinite)
    ckpt, model = with_channel_selection(ckpt, model, cfg, criterion)
    spec = ckpt.model
    example = example_input(spec, device=device)
    shape = tuple(example.shape[1:])
    calibration = calibration_batches(ckpt, cfg, device) if criterion.needs_data else None
    pruner = pruner_for(cfg, criterion, model, spec, device, calibration)
    # --compress counts the network during its masked == compressed probe instead
    before = None if cfg.compress else count_complexity(model, shape)
    layers: list = []
    used = None
    latency = None
    table = latency_table_for(cfg, model, spec, device) if cfg.uses_latency else None
    if cfg.target_latency is not None:
        plan, latency = plan_for_latency(pruner, table, cfg, spec, device)
    elif sweep is not None:
        plan, used = plan_from_sensitivity(sweep, cfg, criterion, pruner, ckpt.model, str(source))
    elif algorithm.reconstructs:
        # the targets come from the network as loaded; `model` is reconstructed in place
        plan = algorithm.plan(pruner, copy.deepcopy(model), report=layers)
    elif cfg.round_auto and cfg.target_macs is not None:
        from prunecli.surgery.latency import snap_plan

        # snapped inside the search: snapping the found plan afterwards moves widths up as often as down,
        # and missed the target (ResNet-56 at --target-macs 0.5 kept 61% of the MACs)
        plan = pruner.plan_for_macs(cfg.target_macs, plan_at=lambda rate: snap_plan(pruner, pruner.plan(rate), table, cfg.round_mode.value))
    else:
        plan = algorithm.plan(pruner, target_macs=cfg.target_macs)
    if cfg.round_auto and cfg.target_latency is None and cfg.target_macs is None:
        from prunecli.surgery.latency import snap_plan

        snap_plan(pruner, plan, table, cfg.round_mode.value)
    check_something_selected(plan, cfg)
    extra = dict(ckpt.extra)
    extra["prune"] = {**prune_record(cfg, criterion, algorithm.name, plan.rate), "target_macs": cfg.target_macs, "layers": [vars(r) for r in plan.rows()]}
    if latency is not None:
        extra["prune"]["target_latency"] = cfg.target_latency
        extra["prune"]["latency"] = latency
    if used is not None:
        extra["prune"]["from_sensitivity"] = used
    options = cfg.to_options()
    notes = list(plan.notes)
    if layers:
        extra["prune"]["reconstruction"] = [vars(r) for r in layers]
        notes.append(reconstruction_summary(layers))
    if cfg.compress:
        out, before, after, diff, newly = _compressed(ckpt, pruner, plan, options, extra, notes)
    else:
        masked = pruner.mask(plan, check=False)  # counting the compressed copy runs it
        after = before
        if masked.compressed is not None:
            with must_run(spec.name):
                after = run_counted(masked.compressed, example)[1]
        combined = combine(ckpt.masks, masked.masks)
        newly, diff = newly_masked(ckpt.masks, combined), None
        metrics = {"macs_before": before.macs, "macs_after_compress": after.macs, "params_after_compress": after.params}
        out = derive(ckpt, "prune", options, state_dict=model.state_dict(), masks=combined, metrics=metrics, extra=extra)
    out = with_result(out, macs_before=before.macs, params_before=before.params, macs_after=after.macs, params_after=after.params, compressed=cfg.compress)
    save_checkpoint(out, output)
    return PruneReport(
        warnings=surprises(plan, cfg, before.params, after.params),
        output=output,
        method=cfg.method,
        granularity=cfg.granularity.value,
        rows=plan.rows(),
        macs_before=before.macs,
        macs_after=after.macs,
        params_before=before.params,
        params_after=after.params,
        weights_masked=newly,
        rate_used=plan.rate,
        notes=notes,
        compressed=cfg.compress,
        max_abs_diff=diff,
        latency=latency,
    )


def latency_table_for(cfg: PruneConfig, model: torch.nn.Module, spec, device: torch.device):
    """The latency table --target-latency and --round-to auto read: --latency-table FILE, the cached one, or a new one."""
    from prunecli._console import log
    from prunecli.stages.profile import obtain_table

    notes: list[str] = []
    table, reused = obtain_table(
        model, spec, device=device, runtime=cfg.runtime.value, batch_size=cfg.latency_batch_size, threads=cfg.threads,
        given=Path(cfg.latency_table) if cfg.latency_table is not None else None, notes=notes,
    )
    log(f"latency table {'reused' if reused else 'measured'}: {table.path}")
    for note in notes:
        log(f"note: {note}")
    return table


# measured saving within this of the requested fraction ends the feedback rounds (0.01: one point of latency)
LATENCY_SLACK = 0.01
# a measured saving this far above the target removed channels for nothing: the next round loosens
# (0.05 of the dense latency: about the run-to-run spread of a median on a shared CPU)
LATENCY_OVERSHOOT = 0.05
LATENCY_ROUNDS = 5


def plan_for_latency(pruner: Pruner, table, cfg: PruneConfig, spec, device: torch.device) -> tuple[Plan, dict[str, Any]]:
    """--target-latency F: allocate on the table (prunecli.surgery.latency), measure, tighten (NetAdapt-style).

    Each round allocates widths until the table predicts (1 - F') of the dense latency,
    removes them from a copy, and times the copy interleaved with the dense model. A round
    whose measured saving falls short of F by more than `LATENCY_SLACK` tightens the next
    (F' += F - measured); one that overshoots F by more than `LATENCY_OVERSHOOT` loosens
    it (F' -= measured - F): both kept within the brackets earlier rounds set, so the
    rounds close in like a bisection (at most `LATENCY_ROUNDS`). A round within both
    margins ends the search. Kept: of the rounds that reached F, the one that removed
    least; if none did, the one that saved most. Greedy allocations for a looser target
    are prefixes of those for a tighter one, so F' moves the result monotonically.
    """
    from prunecli.metrics.latency_table import Runnable, time_runnables
    from prunecli.surgery.latency import allocate, latency_offers, plan_for_widths

    target = float(cfg.target_latency)
    wanted = target
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    x = torch.randn(table.key["batch_size"], *shape, device=device)
    dense_model = copy.deepcopy(pruner.model).eval()
    rounds: list[dict[str, Any]] = []
    best: Optional[tuple[Plan, dict]] = None
    lo: Optional[float] = None  # predicted targets that measured short of F / over F + overshoot
    hi: Optional[float] = None
    for _ in range(LATENCY_ROUNDS):
        offers, plans = latency_offers(pruner, table, round_auto=cfg.round_auto)
        if not offers:
            raise OptionError("nothing to prune: every prunable layer is skipped, protected or unscored (check {skip} and {protect})")
        dense_pred = table.predict({})
        alloc = allocate(table, offers, (1.0 - wanted) * dense_pred)
        if alloc.predicted_ms > (1.0 - wanted) * dense_pred + 1e-9:
            if not rounds:
                most = 1.0 - alloc.predicted_ms / dense_pred
                raise OptionError(f"{{target_latency}} {target}: these settings remove at most {most:.1%} of the predicted latency (caps, --skip, --protect)")
            break
        plan = plan_for_widths(plans, offers, alloc.widths)
        small = pruner._removed_copy(plan)
        dense_lat, small_lat = time_runnables([Runnable(dense_model, x), Runnable(small, x)], runtime=table.key["runtime"], device=str(device), threads=table.key["threads"], repeats=15)
        measured = 1.0 - small_lat.median_ms / dense_lat.median_ms
        record = {
            "target_predicted": round(wanted, 4),
            "dense_predicted_ms": round(dense_pred, 4),
            "predicted_ms": round(alloc.predicted_ms, 4),
            "dense_measured_ms": round(dense_lat.median_ms, 4),
            "measured_ms": round(small_lat.median_ms, 4),
            "measured_saving": round(measured, 4),
            "prediction_error": round((alloc.predicted_ms - small_lat.median_ms) / small_lat.median_ms, 4),
        }
        rounds.append(record)
        reached = measured >= target - LATENCY_SLACK
        if best is None:
            best = (plan, record)
        else:
            best_reached = best[1]["measured_saving"] >= target - LATENCY_SLACK
            if reached and (not best_reached or measured < best[1]["measured_saving"]):
                best = (plan, record)  # reached it, removing less
            elif not reached and not best_reached and measured > best[1]["measured_saving"]:
                best = (plan, record)
        if reached and measured <= target + LATENCY_OVERSHOOT:
            break
        if reached:  # overshot: the predicted target can be looser
            hi = wanted if hi is None else min(hi, wanted)
            step = wanted - (measured - target)
        else:
            lo = wanted if lo is None else max(lo, wanted)
            step = wanted + (target - measured)
        if lo is not None and step <= lo or hi is not None and step >= hi:
            step = ((lo if lo is not None else 0.0) + (hi if hi is not None else 0.99)) / 2  # bisect inside the brackets
        step = min(0.99, max(0.01, step))
        if abs(step - wanted) < 1e-3:
            break
        wanted = step
    plan, chosen = best
    requested = 1.0 / (1.0 - target)
    achieved = chosen["dense_measured_ms"] / chosen["measured_ms"] if chosen["measured_ms"] > 0 else None
    record = {
        **chosen,
        "runtime": table.key["runtime"],
        "batch_size": table.key["batch_size"],
        "threads": table.key["threads"],
        "device": table.key["device"],
        "table": str(table.path) if table.path is not None else None,
        "requested_speedup": round(requested, 4),
        "achieved_speedup": round(achieved, 4) if achieved else None,
        "achieved_of_requested": round(achieved / requested, 4) if achieved else None,
        "rounds": rounds,
    }
    plan.notes.append(
        f"--target-latency {target:g}: {len(rounds)} allocation round(s); kept the one predicted at "
        f"{chosen['predicted_ms']:.2f} ms ({chosen['target_predicted']:.0%} of the predicted latency removed)"
    )
    return plan, record


# a layer left with less than this share of its channels (or weights) is worth a warning ...
THIN_LAYER = 0.10


def surprises(plan: Plan, cfg: PruneConfig, params_before: int, params_after: int) -> list[str]:
    """One line for each way the result is far from what the rate suggests (prune prints them as warnings).

    * A layer keeps less than 10% of its channels (or weights) though less than 90% was
      asked of it: under ``--scope global`` one threshold over all channels can strip a
      layer whose scores are low everywhere (a residual stream's BatchNorms).
      Under ``--target-latency`` no layer is asked for a rate, so every such layer is
      reported: the allocation strips the layers with the widest activations first.
    * The parameters fall by far more than the rate (channel granularity, one rate for
      every layer). Removing a fraction r of every layer's channels removes r of a
      layer's outputs *and* of the next layer's inputs, so a network keeps about (1 - r)^2
      of its parameters (r = 0.4: 36%); the warning fires below half of that (r = 0.4:
      below 18% kept, above 82% removed). The rate counts channel groups, not
      parameters: a residual stream's channels each count once, though they are in
      every conv of their stage.
    """
    out: list[str] = []
    base = plan.rate if plan.rate is not None else cfg.rate
    global_ = cfg.scope.value == "global"
    # --target-latency asks no layer for a rate: a nearly emptied layer is the allocation's choice
    by_latency = getattr(cfg, "target_latency", None) is not None
    unit_word = "channels" if plan.granularity == "channel" else "weights"
    thin = []
    for p in plan.units:
        if p.status != "prune" or p.size == 0:
            continue
        if not by_latency:
            asked = base if global_ else p.rate
            if asked is None or asked >= 1.0 - THIN_LAYER:
                continue  # asked for: nothing to warn about
        if p.kept / p.size < THIN_LAYER:
            thin.append(f"{p.unit.root} {p.size}->{p.kept}")
    if thin:
        how = (
            "--target-latency takes channels where they save the most time per unit of score, so the widest activations go "
            "first; cap layers with --max-layer-rate R"
            if by_latency
            else "--scope global ranks every channel under one threshold; cap layers with --max-layer-rate R or use --scope layerwise"
            if global_
            else "check --layer-rate/--layer-rates"
        )
        shown = ", ".join(thin[:6]) + (f" and {len(thin) - 6} more" if len(thin) > 6 else "")
        out.append(f"{len(thin)} layer(s) keep less than {THIN_LAYER:.0%} of their {unit_word}: {shown} ({how})")
    uniform = not cfg.layer_rate and not cfg.layer_rates and cfg.from_sensitivity is None
    if plan.granularity == "channel" and uniform and base and params_before > 0:
        kept = params_after / params_before
        expected = (1.0 - base) ** 2
        if kept < expected / 2:
            out.append(
                f"params fall {1 - kept:.1%} at --rate {base:g} (removing {base:.0%} of every layer's channels would remove "
                f"about {1 - expected:.0%}): {'--scope global ' if global_ else ''}--rate counts channel groups, not parameters"
                + ("; try --scope layerwise, --max-layer-rate R or --target-macs F" if global_ else "")
            )
    return out


def reconstruction_summary(layers) -> str:
    """One line: how much the refit lowered the next layers' relative output error on the calibration samples."""
    pruned = sum(r.error_pruned for r in layers) / len(layers)
    rebuilt = sum(r.error_reconstructed for r in layers) / len(layers)
    return (
        f"reconstruction: next-layer relative error on the calibration samples {pruned:.4f} pruned -> {rebuilt:.4f} "
        f"reconstructed (mean over {len(layers)} layer(s); ||Y - Y_hat||^2 / ||Y||^2 against the original network)"
    )


def plan_from_sensitivity(sweep, cfg: PruneConfig, criterion: Criterion, pruner: Pruner, spec, where: str) -> tuple[Plan, dict[str, Any]]:
    """``--from-sensitivity FILE --max-drop D``: each layer's largest swept rate within D points.

    With ``--target-macs`` those rates are scaled by one factor, searched like the base rate
    (`Pruner.plan_for_macs`), until the compressed model loses the target share of its
    MACs; a scaled rate is capped where the layer would keep a single channel. Returns the
    plan and what the checkpoint records about it (the file's path and sha256 among it).
    """
    from prunecli.stages.sensitivity import check_architecture, exact_pattern, rates_within

    check_architecture(sweep, spec, pruner.units, where)
    chosen = rates_within(sweep, cfg.max_drop)
    units = {u.root: u for u in pruner.units}
    unknown = [layer for layer in chosen if layer not in units]
    if unknown:
        raise PruneCliError(f"--from-sensitivity {sweep.path}: layer {unknown[0]!r} is not a prunable layer of {spec.name}")
    rates = {layer: r for layer, r in chosen.items() if r > 0}
    if not rates:
        drops = [(sweep.baseline_top1 - t, layer, r) for layer, pts in sweep.curves.items() for r, t in pts]
        least = min(drops, default=None)
        hint = f"; the smallest drop measured is {least[0]:.2f} points ({least[1]} at rate {least[2]:g})" if least else ""
        raise OptionError(f"{{max_drop}} {cfg.max_drop:g}: no swept layer stays within it at any rate, nothing to prune{hint}")
    base = pruner.selection

    def cap(layer: str) -> float:
        u = units[layer]
        width = u.channels // max(1, u.conv_groups)
        return 1.0 - 1.0 / width if width > 1 else 0.0

    def plan_at(scale: float) -> Plan:
        pruner.selection = replace(base, rate=0.0, layer_rate=[(exact_pattern(layer), min(r * scale, cap(layer))) for layer, r in rates.items()])
        try:
            return pruner.plan()
        finally:
            pruner.selection = base

    scale = 1.0
    if cfg.target_macs is not None:
        upper = max(cap(layer) / r for layer, r in rates.items())  # beyond it every layer sits at its cap
        plan = pruner.plan_for_macs(cfg.target_macs, plan_at=plan_at, upper=upper, what="scale")
        scale = plan.rate
        plan.notes.append(f"sensitivity rates scaled by {scale:g} to remove {cfg.target_macs:.0%} of the MACs")
    else:
        plan = plan_at(1.0)
    plan.rate = None  # no base rate: every layer has its own
    left = len(chosen) - len(rates)
    if left:
        plan.notes.append(f"{left} of {len(chosen)} swept layers lose more than {cfg.max_drop:g} points at every rate: left whole")
    if sweep.method != cfg.method:
        plan.notes.append(f"the sweep measured --method {sweep.method}; this prune selects with {cfg.method}")
    record = {
        "path": str(sweep.path),
        "sha256": sweep.sha256,
        "max_drop": cfg.max_drop,
        "method": sweep.method,
        "scale": scale,
        "rates": {layer: round(min(r * scale, cap(layer)), 6) for layer, r in rates.items()},
    }
    return plan, record


def check_something_selected(plan: Plan, cfg: PruneConfig) -> None:
    """A "pruned" checkpoint with nothing pruned is a mistake in the options: say which one."""
    eligible = [p for p in plan.units if p.status == "prune"]
    round_to = cfg.round_to_n
    if cfg.granularity.value == "channel" and round_to > 1 and eligible:
        widest = max(p.size for p in eligible)
        if round_to > widest:
            raise OptionError(f"{{round_to}} {round_to}: wider than every prunable layer (the widest has {widest} channels)")
        narrow = sum(p.size < round_to for p in eligible)
        if narrow:
            plan.notes.append(f"round-to {round_to}: {narrow} layer(s) narrower than that were pruned without rounding")
    if plan.pruned:
        return
    asked = (cfg.rate or 0) > 0 or any(r > 0 for r in cfg.layer_rates) or any(r > 0 for _, r in cfg.layer_rate)
    if not asked:
        return  # rate 0 on purpose: an unpruned baseline through the same pipeline
    if not eligible:
        statuses = sorted({p.status for p in plan.units})
        raise OptionError(
            f"nothing to prune: every prunable layer is {' or '.join(statuses)} (check {{skip}} and {{protect}}; "
            "prunecli info CKPT --layers lists the layers)"
        )
    raise OptionError("nothing selected: the rates remove less than one channel (or weight) in every layer; raise {rate}")


def _compressed(ckpt: Checkpoint, pruner: Pruner, plan: Plan, options, extra, notes: list[str]):
    """--compress: the plan removed now; checked against the masked model where masks are exact.

    Returns (checkpoint, complexity before, after, max |diff| or None, entries newly masked);
    where there is a probe, both complexities are counted during its forward passes.
    """
    shape = tuple(pruner.example.shape[1:])
    diff: Optional[float] = None
    newly = 0
    if any(p.unit.stat_norms for p in plan.pruned):
        # LayerNorm/GroupNorm statistics change when a channel is zeroed: no masked model to compare with
        before = count_complexity(pruner.model, shape)
        removal = pruner.remove(plan)
        small, history, kept = pruner.model, removal.history, removal.kept
        after = count_complexity(small, shape)
        notes.append("not checked against a masked model: LayerNorm/GroupNorm statistics change when channels go; finetune and evaluate")
    else:
        masked = pruner.mask(plan, check=False)  # the probe runs the compressed copy
        small, history, kept = masked.compressed, masked.history, masked.kept
        newly = newly_masked(ckpt.masks, combine(ckpt.masks, masked.masks))
        probe = probe_batch(ckpt.model, device=pruner.device)
        expected, before = counted_outputs(pruner.model, probe)
        with must_run(ckpt.model.name):
            got, after = counted_outputs(small, probe)
        diff, same = difference(expected, got)
        if not same:
            raise PruneCliError(f"the compressed model differs from the masked one (max |diff| {diff:.3g}); nothing written")
    metrics = {"macs": after.macs, "params": after.params, "macs_before_compress": before.macs}
    if diff is not None:
        metrics["max_abs_diff"] = diff
    return derive_compressed(ckpt, "prune", options, small, history, kept, metrics=metrics, extra=extra), before, after, diff, newly

