"""`sensitivity`: prune one layer at a time at each rate, evaluate, restore; and reading the result.

A sensitivity sweep (Li et al. 2017, Fig. 2; Distiller's and SparseML's sensitivity
analysis) measures how much test accuracy each prunable layer loses when it alone is
pruned at rates r1 < r2 < ...: a layer whose curve stays flat can lose many channels. Here
a "layer" is a prunable unit, what ``prune --layer-rate`` prunes: one dependency group,
so pruning a unit at rate r in the sweep is exactly ``prune --layer-rate UNIT=r`` (the
same criterion, count rule and selection), and its top-1 is what ``evaluate`` reports on
that masked checkpoint.

One Pruner traces and scores the model once. For each (unit, rate) the plan selects the
unit's channels, `GroupMasker` turns them into masks and MACs without tracing again
(prunecli.surgery.group_masks), the masks are applied to the live model, the test split
is evaluated, and the saved tensors are put back: the model ends bit-identical to how
it started. Under torchrun every rank masks the same channels (rank 0's selection is
broadcast) and evaluates its own stride of the test split; rank 0 writes.

The output folder holds

* ``sensitivity.csv`` -- layer, unit, channels, removed, rate, top1, top5, loss, macs; the
  first row (empty layer, rate 0) is the unpruned baseline;
* ``sensitivity.json`` -- the same rows (baseline apart), the rates, the method and count
  rule, the dataset and the architecture's fingerprint (model spec + every unit's root
  and width), which ``prune --from-sensitivity`` checks before it trusts the file;
* ``sensitivity.png`` -- top-1 against rate, one line per layer.

`rates_within` is what ``prune --from-sensitivity FILE --max-drop D`` reads: each
layer's largest measured rate whose top-1 drop is at most D points.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from prunecli import __version__
from prunecli.checkpoint import sha256_file
from prunecli.config import PruneConfig, Selection
from prunecli.config.sensitivity import SensitivityConfig
from prunecli.data.loaders import make_batches
from prunecli.engine.distributed import DistInfo, all_reduce_sum, init_distributed, shutdown_distributed
from prunecli.engine.loop import evaluate
from prunecli.errors import OptionError, OutputError, PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.models import ModelSpec
from prunecli.outputs import atomic_write, claim_output
from prunecli.surgery.masks import Masks, apply_masks, maskable_tensors
from prunecli.surgery.plan import Plan, matches
from prunecli.surgery.units import Unit

FORMAT = "prunecli-sensitivity"
VERSION = 1
CSV_NAME, JSON_NAME, PLOT_NAME = "sensitivity.csv", "sensitivity.json", "sensitivity.png"
COLUMNS = ("layer", "unit", "channels", "removed", "rate", "top1", "top5", "loss", "macs")
MAX_FILE_BYTES = 64 << 20  # a sweep of 1,000 layers x 1,000 rates is ~100 MB; real ones are kilobytes
# calibration as prune's one-shot default (8 batches of 64), so taylor/hessian pick what prune picks
CALIB_BATCH_SIZE = 64


@dataclass
class Row:
    layer: Optional[str]  # the unit's root layer; None for the baseline
    unit: Optional[int]  # 1-based unit index (prunecli info CKPT --layers order)
    channels: Optional[int]
    removed: int  # channels this rate removes from the unit
    rate: float
    top1: float  # percent
    top5: float  # percent
    loss: float
    macs: int  # after removing those channels (what compress would leave)


@dataclass
class SensitivityReport:
    output: Path
    model: str
    method: str
    dataset: str
    samples: int
    rates: list[float]
    baseline: Row
    rows: list[Row]
    seconds: float  # the sweep: every evaluation, masking and restoring
    processes: int = 1
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the sweep


def sweep_checkpoint(source: Path, cfg: SensitivityConfig, *, output: Path) -> SensitivityReport:
    """Sweep ``source`` as ``cfg`` says; write the three files into the folder ``output`` (rank 0)."""
    from prunecli.stages.prune import criterion_for, stream_bn

    from prunecli.config.prune import LEARNED_METHODS

    if cfg.method in LEARNED_METHODS:
        raise OptionError(f"{{method}} {cfg.method} learns its mask while training (prune --epochs N): the sweep prunes once per rate; use a criterion such as l1")
    pcfg = prune_config(cfg)
    criterion = criterion_for(pcfg)
    stream_bn(pcfg, criterion)  # a --stream-bn the method cannot use fails before anything is claimed
    rates = cfg.rate_list()
    dist, device = init_distributed(cfg.device)
    try:
        with _claimed_folder(Path(output), cfg.overwrite, dist, device):
            return _sweep(Path(source), cfg, pcfg, criterion, rates, Path(output), dist, device)
    finally:
        shutdown_distributed()


def prune_config(cfg: SensitivityConfig) -> PruneConfig:
    """The one-shot prune options the sweep selects with: what ``prune --layer-rate UNIT=r`` would use."""
    return PruneConfig(
        method=cfg.method,
        rate=0.0,
        count_rule=cfg.count_rule,
        mix_norm=cfg.mix_norm,
        stream_bn=cfg.stream_bn,
        protect=cfg.protect,
        round_to=cfg.round_to,
        dataset=cfg.dataset,
        data=cfg.data,
        calib_batches=cfg.calib_batches,
        batch_size=CALIB_BATCH_SIZE,
        seed=cfg.seed,
        device=cfg.device,
        workers=cfg.workers,
        allow_nonfinite=cfg.allow_nonfinite,
    )


@contextlib.contextmanager
def _claimed_folder(folder: Path, overwrite: bool, dist: DistInfo, device: torch.device) -> Iterator[None]:
    """Refuse a non-folder or a non-empty folder (unless ``overwrite``), then lock the json in it.

    Under torchrun every rank checks, rank 0 locks, and the ranks agree on the outcome (as
    train's outputs), so a refused folder stops all of them at once.
    """
    with contextlib.ExitStack() as stack:
        error: Optional[PruneCliError] = None
        try:
            _check_folder(folder, overwrite)
            side = [folder / CSV_NAME, folder / PLOT_NAME]
            stack.enter_context(claim_output(folder / JSON_NAME, overwrite=True, side=side, lock=dist.is_main))
        except PruneCliError as e:
            error = e
        if dist.enabled and all_reduce_sum([float(error is not None)], device, dist)[0] and error is None:
            raise OutputError(f"{folder}: another process of this torchrun job could not claim it")
        if error is not None:
            raise error
        yield


def _check_folder(folder: Path, overwrite: bool) -> None:
    from prunecli._console import has_control

    if has_control(str(folder)):
        raise OptionError(f"{{output}} {str(folder)!r}: contains a newline or control character; choose a plain folder name")
    if folder.exists() and not folder.is_dir():
        raise OptionError(f"{{output}} {folder}: exists and is not a folder; sensitivity writes a folder of files")
    if folder.is_dir() and not overwrite:
        try:
            busy = any(True for _ in folder.iterdir())
        except OSError as e:
            raise OutputError(f"cannot read {folder}: {(e.strerror or str(e)).lower()}") from None
        if busy:
            raise OptionError(f"{{output}} {folder}: is not empty; pass {{overwrite}} to replace its sensitivity files, or write elsewhere")


def _sweep(
    source: Path, cfg: SensitivityConfig, pcfg: PruneConfig, criterion, rates: list[float], output: Path, dist: DistInfo, device: torch.device
) -> SensitivityReport:
    from prunecli._console import log, markup_safe
    from prunecli.engine.prefix_cache import PrefixCache
    from prunecli._progress import step_bar
    from prunecli.models import example_input
    from prunecli.stages.checkpoints import data_for_checkpoint, load_model
    from prunecli.stages.prune import calibration_batches, count_rule, pruner_for, stream_bn, with_channel_selection
    from prunecli.surgery.group_masks import GroupMasker

    ckpt, model = load_model(source, device=device, allow_nonfinite=cfg.allow_nonfinite)
    ckpt, model = with_channel_selection(ckpt, model, pcfg, criterion)
    model.eval()
    spec = ckpt.model
    bundle = data_for_checkpoint(ckpt, dataset=cfg.dataset, data=cfg.data, download=cfg.download, seed=cfg.seed)
    calibration = calibration_batches(ckpt, pcfg, device) if criterion.needs_data else None
    pruner = pruner_for(pcfg, criterion, model, spec, device, calibration)
    base_selection = pruner.selection
    units, notes = swept_units(pruner.plan(0.0), cfg.layers)
    batches = evaluation_batches(bundle, cfg, device, dist)
    shape = tuple(example_input(spec, device=device).shape[1:])
    base_macs = count_complexity(model, shape).macs
    masker = GroupMasker(pruner, base_macs)
    slow = {u.index: why for u in units if (why := masker.exact(u))}
    for u in units:
        if u.index in slow:
            notes.append(f"{u.root}: masked through a full copy of the model ({slow[u.index]})")

    cache = PrefixCache(model)
    if cfg.replay:
        cache.plan({u.index: u.members for u in units}, example_input(spec, batch=2, device=device), samples=batches.num_samples)  # the whole split: an upper bound per rank
        if cache.note:
            notes.append(f"--replay: {cache.note}")

    start = time.perf_counter()
    with cache.recording(batches) as b:
        base = evaluate(model, b, device=device, dist_info=dist)
    baseline = Row(None, None, None, 0, 0.0, base.top1, base.top5, base.loss, base_macs)
    rows: list[Row] = []
    label = markup_safe(spec.name)
    with step_bar(f"sensitivity {label}", len(units) * len(rates), unit="evaluations") as bar:
        for u in units:
            if bar is not None:
                bar.advance(0, description=f"sensitivity {markup_safe(u.root)}")
            done = []
            for rate in rates:
                try:
                    plan = unit_plan(pruner, base_selection, u, rate)
                except PruneCliError as e:  # the rate would empty the layer: the line stops here
                    notes.append(f"{u.root} at rate {rate:g}: not measured ({e})")
                    if bar is not None:
                        bar.advance(1)
                    continue
                channels = same_on_every_rank(_planned(plan, u), dist, device)
                if u.index in slow:
                    masked = pruner.mask(_with_channels(plan, u, channels), apply=False)
                    masks, macs = masked.masks, count_complexity(masked.compressed, shape).macs
                else:
                    removal = masker.remove(u, channels)
                    masks, macs = removal.masks, removal.macs
                with masks_applied(model, masks), cache.replaying(u.index, batches) as b:
                    result = evaluate(model, b, device=device, dist_info=dist)
                row = Row(u.root, u.index, u.channels, len(channels), rate, result.top1, result.top5, result.loss, macs)
                rows.append(row)
                done.append(row)
                if bar is not None:
                    bar.advance(1)
            if bar is None and done:  # a log (not a terminal): one line per layer
                curve = " ".join(f"{r.top1:.1f}" for r in done)
                log(f"sensitivity {markup_safe(u.root)} ({u.channels} ch): top-1 {base.top1:.1f} -> {curve} at rates {_rates_text(done)}")
    seconds = time.perf_counter() - start

    report = SensitivityReport(
        output=output,
        model=spec.name,
        method=cfg.method,
        dataset=bundle.spec.name,
        samples=base.samples,
        rates=rates,
        baseline=baseline,
        rows=rows,
        seconds=seconds,
        processes=dist.world_size,
        notes=notes,
    )
    if dist.is_main:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "checkpoint": str(source),
            "checkpoint_sha256": sha256_file(source),
            "fingerprint": fingerprint(spec, pruner.units),
            "converters": ckpt.converters,
            "method": cfg.method,
            "count_rule": count_rule(pcfg, criterion),
            "stream_bn": stream_bn(pcfg, criterion),
            "granularity": "channel",
            "dataset": bundle.spec.name,
            "samples": base.samples,
            "eval_batches": cfg.eval_batches,
            "rates": rates,
            "baseline": asdict(baseline),
            "rows": [asdict(r) for r in rows],
            "notes": notes,
            "options": cfg.to_options(),
            "processes": dist.world_size,
            "seconds": round(seconds, 3),
            "prunecli_version": __version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_files(output, doc, baseline, rows)
    return report


def _rates_text(rows: list[Row]) -> str:
    return ",".join(f"{r.rate:g}" for r in rows)


def swept_units(base: Plan, patterns: list[str]) -> tuple[list[Unit], list[str]]:
    """The units to sweep: those the base plan would prune, narrowed by ``--layers`` patterns.

    A pattern that matches no prunable unit is an error (as ``--skip``'s); units a mask
    cannot stand for (a LayerNorm/GroupNorm over their channels) are left out with a note.
    """
    eligible = [p.unit for p in base.units if p.status == "prune"]
    for pattern in patterns:
        if not any(matches(pattern, u.producer_names, u.layer_ids) for u in eligible):
            raise OptionError(
                f"{{layers}} pattern {pattern!r} matches no prunable layer (layer names and numbers: prunecli info CKPT --layers)"
            )
    if patterns:
        eligible = [u for u in eligible if any(matches(p, u.producer_names, u.layer_ids) for p in patterns)]
    notes = [f"{u.root}: left out ({u.stat_norms[0]} normalises over its channels; a mask cannot stand for removing them)" for u in eligible if u.stat_norms]
    units = [u for u in eligible if not u.stat_norms]
    if not units:
        raise OptionError("nothing to sweep: no prunable layer a mask can stand for (check {layers} and {protect})")
    return units, notes


def exact_pattern(name: str) -> str:
    """A layer pattern (prunecli.surgery.plan.matches) that matches the layer ``name`` only.

    Glob characters are bracketed, and a name that reads as a layer number or range
    (a ``Sequential``'s "3") gets its first character bracketed so it stays a glob.
    """
    escaped = "".join(f"[{c}]" if c in "*?[" else c for c in name)
    lo, sep, hi = escaped.partition("-")
    if escaped.isdigit() or (sep and lo.isdigit() and hi.isdigit()):
        escaped = f"[{escaped[0]}]{escaped[1:]}"
    return escaped


def unit_plan(pruner, base: Selection, unit: Unit, rate: float) -> Plan:
    """The plan of ``prune --layer-rate UNIT=rate`` (every other unit at rate 0)."""
    pruner.selection = replace(base, rate=0.0, layer_rate=[(exact_pattern(unit.root), rate)])
    try:
        return pruner.plan()
    finally:
        pruner.selection = base


def _planned(plan: Plan, unit: Unit) -> torch.Tensor:
    for p in plan.pruned:
        if p.unit is unit:
            return torch.as_tensor(p.prune, dtype=torch.long).flatten()
    return torch.empty(0, dtype=torch.long)


def _with_channels(plan: Plan, unit: Unit, channels: torch.Tensor) -> Plan:
    for p in plan.units:
        if p.unit is unit:
            p.prune = channels
    return plan


def same_on_every_rank(channels: torch.Tensor, dist: DistInfo, device: torch.device) -> torch.Tensor:
    """Rank 0's selection on every rank: data-driven scores may differ in the last bit between GPUs."""
    if not dist.enabled:
        return channels
    import torch.distributed as tdist

    n = torch.tensor([len(channels)], dtype=torch.int64, device=device)
    tdist.broadcast(n, 0)
    if int(n.item()) == 0:  # a rate too small to remove a channel
        return torch.empty(0, dtype=torch.long)
    buf = channels.to(device=device, dtype=torch.int64) if dist.is_main else torch.empty(int(n.item()), dtype=torch.int64, device=device)
    tdist.broadcast(buf, 0)
    return buf.cpu()


@contextlib.contextmanager
def masks_applied(model: torch.nn.Module, masks: Masks) -> Iterator[None]:
    """Zero ``masks`` in the live model; put the saved tensors back afterwards (bit-identical)."""
    tensors = maskable_tensors(model)
    saved = {name: tensors[name].detach().clone() for name in masks}
    apply_masks(model, masks)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                tensors[name].copy_(value)


def evaluation_batches(bundle, cfg: SensitivityConfig, device: torch.device, dist: DistInfo):
    """The test split (its first ``eval_batches`` x ``batch_size`` images), this rank's stride of it."""
    from prunecli.data import TensorSplit

    test = bundle.test
    if cfg.eval_batches is not None:
        n = min(len(test), cfg.eval_batches * cfg.batch_size)
        if isinstance(test, TensorSplit):
            test = TensorSplit(test.images[:n], test.labels[:n])
        else:
            test = torch.utils.data.Subset(test, range(n))
        bundle = replace(bundle, test=test)
    return make_batches(
        bundle, "test", batch_size=cfg.batch_size, device=device, train=False, rank=dist.rank, world_size=dist.world_size, workers=cfg.workers
    )


# ---------------------------------------------------------------------------- the files


def fingerprint(spec: ModelSpec, units: list[Unit]) -> dict[str, Any]:
    """What identifies the architecture a sweep measured: the model spec and every unit's root and width."""
    body = {"model": spec.to_dict(), "units": [[u.root, int(u.channels)] for u in units]}
    return {**body, "sha256": _digest(body)}


def _digest(body: dict[str, Any]) -> str:
    text = json.dumps({"model": body["model"], "units": body["units"]}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_files(folder: Path, doc: dict[str, Any], baseline: Row, rows: list[Row]) -> None:
    """csv, png, then json (the file prune reads, last): each atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for r in [baseline, *rows]:
        writer.writerow(["" if v is None else (round(v, 6) if isinstance(v, float) else v) for v in (getattr(r, c) for c in COLUMNS)])
    atomic_write(folder / CSV_NAME, lambda f: f.write(buf.getvalue().encode()))
    plot(folder / PLOT_NAME, doc, baseline, rows)
    text = json.dumps(doc, indent=1, default=str)
    atomic_write(folder / JSON_NAME, lambda f: f.write(text.encode()))


def plot(path: Path, doc: dict[str, Any], baseline: Row, rows: list[Row]) -> Path:
    """Top-1 against rate, one line per layer, each starting at the baseline (as Distiller and SparseML draw it)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    layers: dict[str, list[Row]] = {}
    for r in rows:
        layers.setdefault(str(r.layer), []).append(r)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    cmap = plt.get_cmap("viridis" if len(layers) > 10 else "tab10")
    for i, (name, points) in enumerate(layers.items()):
        color = cmap(i / max(1, len(layers) - 1)) if len(layers) > 10 else cmap(i % 10)
        xs = [0.0] + [r.rate for r in points]
        ys = [baseline.top1] + [r.top1 for r in points]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=color, label=name)
    ax.axhline(baseline.top1, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("rate (fraction of the layer's channels removed)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{doc['fingerprint']['model']['name']}: {doc['method']} sensitivity on {doc['dataset']} ({doc['samples']:,} images)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if layers:
        ax.legend(fontsize=6, ncol=max(1, math.ceil(len(layers) / 30)), loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


# ---------------------------------------------------------------------------- reading a sweep back


@dataclass
class Sweep:
    """A ``sensitivity.json`` read back and checked (only what prune needs)."""

    path: Path
    sha256: str
    method: str
    count_rule: Optional[str]
    model: dict[str, Any]
    units: list[list]  # [root, channels] of every unit of the architecture
    baseline_top1: float
    curves: dict[str, list[tuple[float, float]]]  # layer -> [(rate, top1)] measured


def read_sweep(path: Path) -> Sweep:
    """Read and check ``path``; PruneCliError (one line) if it is not a sensitivity file prunecli wrote."""
    path = Path(path)

    def bad(why: str) -> PruneCliError:
        return PruneCliError(f"--from-sensitivity {path}: {why}")

    try:
        size = path.stat().st_size
        if not path.is_file():
            raise bad("not a file (give the sensitivity.json of a `prunecli sensitivity` folder)")
        if size > MAX_FILE_BYTES:
            raise bad(f"{size:,} bytes; a sensitivity file is at most {MAX_FILE_BYTES:,}")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise bad("no such file") from None
    except OSError as e:
        raise bad((e.strerror or str(e)).lower()) from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("not a text file (expected the JSON `prunecli sensitivity` writes)") from None
    except json.JSONDecodeError as e:
        raise bad(f"malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise bad(f"not a prunecli sensitivity file (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise bad(f"sensitivity file version {doc.get('version')!r}; this prunecli reads version {VERSION}")
    try:
        fp = doc["fingerprint"]
        model, units = fp["model"], fp["units"]
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            raise ValueError("fingerprint.model")
        if not isinstance(units, list) or not all(
            isinstance(u, list) and len(u) == 2 and isinstance(u[0], str) and _is_int(u[1]) for u in units
        ):
            raise ValueError("fingerprint.units")
        baseline = _number(doc["baseline"]["top1"], "baseline.top1")
        curves: dict[str, list[tuple[float, float]]] = {}
        rows = doc["rows"]
        if not isinstance(rows, list):
            raise ValueError("rows")
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("layer"), str):
                raise ValueError(f"rows[{i}].layer")
            rate = _number(row.get("rate"), f"rows[{i}].rate")
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"rows[{i}].rate {rate:g} outside [0, 1)")
            curves.setdefault(row["layer"], []).append((rate, _number(row.get("top1"), f"rows[{i}].top1")))
        method = doc.get("method")
        if not isinstance(method, str):
            raise ValueError("method")
    except (KeyError, TypeError, ValueError) as e:
        what = e.args[0] if isinstance(e, ValueError) and e.args else (f"missing {e}" if isinstance(e, KeyError) else "wrong type")
        raise bad(f"not a valid sensitivity file ({what})") from None
    rule = doc.get("count_rule")
    return Sweep(
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        method=method,
        count_rule=rule if isinstance(rule, str) else None,
        model=model,
        units=units,
        baseline_top1=baseline,
        curves=curves,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(where)
    return float(v)


def check_architecture(sweep: Sweep, spec: ModelSpec, units: list[Unit], where: str) -> None:
    """The sweep must have measured this architecture: same model spec, same units and widths."""
    here = fingerprint(spec, units)
    if _digest({"model": sweep.model, "units": sweep.units}) == here["sha256"]:
        return
    prefix = f"--from-sensitivity {sweep.path}: measured another architecture than {where}"
    if sweep.model != here["model"]:
        theirs = _describe_spec(sweep.model)
        raise PruneCliError(f"{prefix} ({theirs}; the checkpoint is {_describe_spec(here['model'])})")
    mine = {root: c for root, c in here["units"]}
    for root, c in sweep.units:
        if root not in mine:
            raise PruneCliError(f"{prefix} (its layer {root} is not a prunable layer here)")
        if mine[root] != c:
            raise PruneCliError(f"{prefix} ({root} had {c} channels there, {mine[root]} here: a compressed checkpoint?)")
    raise PruneCliError(f"{prefix} (its prunable layers differ: {len(sweep.units)} there, {len(here['units'])} here)")


def _describe_spec(model: dict[str, Any]) -> str:
    from prunecli.config._base import short_repr

    kwargs = model.get("kwargs") or {}
    args = f" {short_repr(kwargs)}" if kwargs else ""
    return (
        f"{short_repr(model.get('name'))}{args}, {model.get('in_channels')}x{model.get('image_size')}x{model.get('image_size')}, "
        f"{model.get('num_classes')} classes"
    )


def rates_within(sweep: Sweep, max_drop: float) -> dict[str, float]:
    """Each swept layer's largest measured rate whose top-1 drop from the baseline is at most ``max_drop`` points (0 if none)."""
    out = {}
    for layer, points in sweep.curves.items():
        ok = [rate for rate, top1 in points if sweep.baseline_top1 - top1 <= max_drop + 1e-9]
        out[layer] = max(ok, default=0.0)
    return out
