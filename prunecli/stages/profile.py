"""`profile`: a checkpoint's latency table, measured (or reused from the cache) and checked on pruned models.

    prunecli profile base.pt --runtime eager --batch-size 8 --threads 1 -o base.latency.json

The table is prunecli.metrics.latency_table's: every conv/linear layer timed alone on a
grid of (input width, output width), deduplicated by configuration, plus the measured
rest of the model. `obtain_table` is what ``prune --target-latency`` and ``--round-to
auto`` call: a ``--latency-table FILE`` of this model, else the cached table of exactly
this key, else a new measurement (then cached).

The check (``--check``, on by default): the model is pruned in memory with l1 layer-wise at
0.3 and 0.6 and compressed; the dense and the pruned models are timed interleaved, and
the table's prediction of each is printed beside its measurement, with the error in %,
and the error of the predicted fraction of the dense latency (both timed in the same run,
so the machine's drift since the table was measured cancels).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from prunecli.config.profile import ProfileConfig
from prunecli.config.prune import Selection
from prunecli.engine.distributed import resolve_device
from prunecli.errors import PruneCliError
from prunecli.metrics import latency_table as lt
from prunecli.models import example_input
from prunecli.outputs import claim_output
from prunecli.stages.checkpoints import load_model
from prunecli.surgery.latency import unit_links
from prunecli.surgery.pruner import Pruner

CHECK_RATES = (0.3, 0.6)


@dataclass
class ProfileReport:
    output: Path  # the table file written (the cache file without --output)
    table: lt.LatencyTable
    reused: bool  # the cache (or --latency-table) held it: nothing was measured for the table
    checks: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def obtain_table(
    model: torch.nn.Module,
    spec,
    *,
    device: torch.device,
    runtime: str,
    batch_size: int,
    threads: Optional[int],
    points: int = lt.GRID_POINTS,
    repeats: int = 7,
    given: Optional[Path] = None,
    rebuild: bool = False,
    notes: Optional[list[str]] = None,
) -> tuple[lt.LatencyTable, bool]:
    """The latency table of ``model`` (module docstring) and whether it was reused rather than measured."""
    lt.require_runtime(runtime, str(device))
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    used_threads = int(threads) if threads is not None else torch.get_num_threads()
    key = lt.table_key(
        fingerprint=lt.fingerprint(model, shape), model=spec.name, device=str(device), runtime=runtime, batch_size=batch_size, threads=used_threads, points=points
    )
    if given is not None:
        table = lt.read_table(Path(given))
        lt.check_fingerprint(table, key)
        differs = lt.mismatch(table, key)
        if differs and notes is not None:
            notes.append(f"latency table {given} was measured with other settings ({differs}); its numbers are used as they are")
        return table, True
    if not rebuild:
        cached = lt.cached_table(key)
        if cached is not None:
            return cached, True
    work = copy.deepcopy(model).eval()
    pruner = Pruner(work, example_input=example_input(spec, device=device), name=spec.name)
    links, widths = unit_links(pruner)
    example = torch.randn(batch_size, *shape, device=device)
    half = _pruned_copy(work, spec, device, 0.5)
    table = lt.build_table(work, example, links, widths, key, repeats=repeats, half=half)
    try:
        lt.save_table(table, lt.cache_path(key))
    except (OSError, PruneCliError) as e:
        table.path = None
        if notes is not None:
            notes.append(f"latency table not cached ({lt.cache_dir()}: {e})")
    return table, False


def unit_widths(plan) -> dict[str, int]:
    """Each unit's kept channels under ``plan``."""
    return {p.unit.root: p.kept for p in plan.units}


def _pruned_copy(model: torch.nn.Module, spec, device: torch.device, rate: float) -> tuple[torch.nn.Module, dict[str, int]]:
    """A copy of ``model`` pruned l1 layer-wise at ``rate`` and compressed, with its unit widths."""
    from prunecli.criteria import get_criterion

    work = copy.deepcopy(model).eval()
    pruner = Pruner(work, get_criterion("l1"), Selection(rate=rate), example_input=example_input(spec, device=device), name=spec.name)
    plan = pruner.plan()
    pruner.remove(plan)
    return work, unit_widths(plan)


def check_table(table: lt.LatencyTable, model: torch.nn.Module, spec, *, device: torch.device, rates=CHECK_RATES, repeats: int = 9) -> list[dict[str, Any]]:
    """Predicted vs measured latency of the dense model and of l1 layer-wise prunes at ``rates``, timed interleaved."""
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    models, widths = [copy.deepcopy(model).eval()], [{}]
    for r in rates:
        work, w = _pruned_copy(model, spec, device, r)
        models.append(work)
        widths.append({k: v for k, v in w.items() if k in table.units})
    x = torch.randn(table.key["batch_size"], *shape, device=device)
    lats = lt.time_runnables([lt.Runnable(m, x) for m in models], runtime=table.key["runtime"], device=str(device), threads=table.key["threads"], repeats=repeats)
    out = []
    dense_predicted, dense_measured = table.predict(widths[0]), lats[0].median_ms
    for rate, w, lat in zip((0.0, *rates), widths, lats):
        predicted = table.predict(w)
        # the speed-up error: the predicted fraction of the dense latency against the measured one,
        # both models timed in this run. The error in ms also holds the machine's drift since the
        # table was measured (a shared CPU's medians move 5-10% in minutes); the fraction is what
        # --target-latency asks for
        fraction = None
        if lat.median_ms > 0 and dense_predicted > 0 and dense_measured > 0:
            fraction = round((predicted / dense_predicted) / (lat.median_ms / dense_measured) - 1.0, 4)
        out.append(
            {
                "model": "dense" if rate == 0 else f"l1 layerwise {rate:g}",
                "predicted_ms": round(predicted, 4),
                "measured_ms": round(lat.median_ms, 4),
                "error": round((predicted - lat.median_ms) / lat.median_ms, 4) if lat.median_ms > 0 else None,
                "fraction_error": fraction,
                "latency": lat.to_json(),
            }
        )
    return out


def profile_checkpoint(source: Path, cfg: ProfileConfig) -> ProfileReport:
    """Measure (or reuse) ``source``'s latency table; check it; write it (module docstring)."""
    lt.require_runtime(cfg.runtime.value, cfg.device)  # before anything is loaded: one line, e.g. ONNX Runtime missing
    device = resolve_device(cfg.device)
    if cfg.output is not None:
        with claim_output(Path(cfg.output), overwrite=cfg.overwrite):
            return _profile(Path(source), cfg, device, Path(cfg.output))
    return _profile(Path(source), cfg, device, None)


def _profile(source: Path, cfg: ProfileConfig, device: torch.device, output: Optional[Path]) -> ProfileReport:
    ckpt, model = load_model(source, device=device, allow_nonfinite=cfg.allow_nonfinite)
    notes: list[str] = []
    if ckpt.masks:
        notes.append(f"{source} is masked, not compressed: profiled at its full widths (compress it for the latency of its pruned shape)")
    table, reused = obtain_table(
        model, ckpt.model, device=device, runtime=cfg.runtime.value, batch_size=cfg.batch_size, threads=cfg.threads, points=cfg.grid,
        repeats=cfg.repeats, rebuild=cfg.rebuild, notes=notes,
    )
    checks = check_table(table, model, ckpt.model, device=device) if cfg.check else []
    if checks:
        table.check = checks
        if table.path is not None and not reused:
            lt.save_table(table, table.path)  # the cache keeps the latest check too
    if output is not None:
        lt.save_table(table, output)
    if table.path is None:
        raise PruneCliError(f"the latency table could not be cached in {lt.cache_dir()}: pass --output FILE")
    return ProfileReport(output=table.path, table=table, reused=reused, checks=checks, notes=notes)
