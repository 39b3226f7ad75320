"""`prunecli evaluate`: accuracy, MACs, params, latency, widths; several checkpoints side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import emit_json, input_checkpoint
from prunecli.cli._options import config_from, options_from
from prunecli.cli._render import human, layer_widths_table
from prunecli.config import EvaluateConfig


@options_from(EvaluateConfig)
def evaluate(
    ctx: typer.Context,
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints ('-' reads a path from stdin).", show_default=False, readable=False)],
    **options,
) -> None:
    """Evaluate checkpoints on their test set: top-1/top-5, loss, MACs, params, latency, widths.

    --json prints {"checkpoint", "top1", "top5", "loss", "macs", "params", "latency_ms", ...}
    (a list when given several checkpoints); top1/top5 are percentages, latency is the
    median milliseconds for one batch of --batch-size in the faster memory format.
    """
    from prunecli.stages.evaluate import evaluate_checkpoints

    cfg = config_from(ctx, EvaluateConfig, options)
    reports = evaluate_checkpoints([input_checkpoint(p) for p in checkpoints], cfg)
    if cfg.json:
        objs = [r.to_json() for r in reports]  # per-layer detail: prunecli info CKPT --json --layers
        emit_json(objs[0] if len(objs) == 1 else objs)
        return
    _print_reports(reports, cfg.layers)


# columns left out, in this order, while the table is wider than the terminal (all are in --json)
_OPTIONAL = ("latency IQR", "top-5 %", "loss", "non-zero params")


def _print_reports(reports, show_layers: bool) -> None:
    import io

    from rich.cells import cell_len
    from rich.console import Console
    from rich.table import Table

    from prunecli._console import markup_safe, report_console
    from prunecli.cli._render import distinct_labels
    from prunecli.stages.evaluate import ancestor_columns

    out = report_console()  # the report is what evaluate returns: stdout (`prunecli evaluate a.pt b.pt > table.txt`)
    labels = [markup_safe(label) for label in distinct_labels([r.checkpoint for r in reports])]
    refs = ancestor_columns(reports)
    several = len(reports) > 1
    models = {r.model for r in reports}
    datasets = {(r.dataset, r.samples) for r in reports}
    title = "evaluate"
    if len(models) == 1 and len(datasets) == 1:  # shared by every row: said once, in the title
        title += f": {markup_safe(reports[0].model)} on {markup_safe(reports[0].dataset)} ({reports[0].samples:,} images)"
    timed = [r for r in reports if r.latency_ms is not None]

    def rel(i: int, value, key: str) -> str:
        ref = refs[i]
        base = getattr(reports[ref], key) if ref is not None else None
        return f" ({value / base:.2f}x)" if base else ""

    columns: dict[str, list[str]] = {"#": [str(i + 1) for i in range(len(reports))], "checkpoint": labels, "stage": [markup_safe(r.stage) for r in reports]}
    if len(models) > 1:
        columns["model"] = [markup_safe(r.model) for r in reports]
    if len(datasets) > 1:
        columns["dataset"] = [markup_safe(f"{r.dataset} ({r.samples:,})") for r in reports]
    columns["top-1 %"] = [f"{r.top1:.2f}" for r in reports]
    columns["top-5 %"] = [f"{r.top5:.2f}" for r in reports]
    columns["loss"] = [f"{r.loss:.4f}" for r in reports]
    columns["MACs"] = [human(r.macs) + rel(i, r.macs, "macs") for i, r in enumerate(reports)]
    columns["params"] = [human(r.params) + rel(i, r.params, "params") for i, r in enumerate(reports)]
    columns["non-zero params"] = [human(r.nonzero_params) + rel(i, r.nonzero_params, "nonzero_params") for i, r in enumerate(reports)]
    if timed:
        columns["latency ms"] = [
            "-" if r.latency_ms is None else f"{r.latency_ms:.2f}" + rel(i, r.latency_ms, "latency_ms") + _latency_note(r, timed) for i, r in enumerate(reports)
        ]
        if any(_spread(r) for r in timed):
            columns["latency IQR"] = [_spread(r) or "-" for r in reports]
    if several:
        columns["vs"] = [f"#{ref + 1}" if ref is not None else "-" for ref in refs]

    def build(names: list[str]) -> Table:
        table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
        for name in names:
            left = name in ("checkpoint", "stage", "model", "dataset", "vs")
            # nothing is cut with an ellipsis: text wraps at spaces, a name too long for its column folds
            table.add_column(name, justify="left" if left else "right", overflow="fold", no_wrap=name in _NO_WRAP)
        for i in range(len(reports)):
            table.add_row(*(columns[name][i] for name in names))
        return table

    def fits(table: Table) -> bool:
        """Whether the table renders within the width with no number, ratio or file name folded in two."""
        trial = Console(file=io.StringIO(), width=out.width, color_system=None, legacy_windows=False, soft_wrap=out.soft_wrap)
        trial.print(table)
        text = trial.file.getvalue()
        whole = [c for name in names if name not in ("stage", "model", "dataset") for c in columns[name]]
        words = {w.replace("\\[", "[") for c in whole for w in c.split()}  # as printed: markup escapes gone
        return max(map(cell_len, text.splitlines()), default=0) <= out.width and all(w in text for w in words)

    names = list(columns)
    dropped = []
    table = build(names)
    for optional in _OPTIONAL:  # a narrow terminal: fewer columns rather than numbers cut in half
        if fits(table):
            break
        if optional in names:
            names.remove(optional)
            dropped.append(optional.removesuffix(" %"))
            table = build(names)
    notes = []
    if "non-zero params" in names:
        notes.append("non-zero params: parameters that are not exactly zero (masked or pruned weights are zero)")
    if several:
        notes.append(
            "vs: ratios are to the row's own ancestor in this table (a parent file named in its lineage, matched by sha256); "
            "no ratio where none is listed, since ratios between unrelated models say nothing"
        )
    if timed:
        notes.append(_latency_caption(timed, iqr="latency IQR" in names))
    if dropped:
        notes.append(f"left out to fit {out.width} columns: {', '.join(dropped)} (in --json, or on a wider terminal)")
    out.print(table)
    for note in notes:  # under the table, not its caption: a long caption widens the table past the terminal
        out.print(note)
    if show_layers:
        out.print(layer_widths_table("per-layer widths (columns: # above)", [f"#{i + 1}" for i in range(len(reports))], [r.layers for r in reports]))


_NO_WRAP = ("#", "vs", "latency IQR")

# the memory formats latency is measured in, as the layouts they name
_LAYOUT = {"channels_last": "NHWC", "contiguous": "NCHW"}


def _spread(r) -> str:
    """ "15.10-16.20": the middle half of the timed runs, from the measurement's record (empty when none)."""
    lat = r.latency if isinstance(r.latency, dict) else {}
    q1, q3 = lat.get("q1_ms"), lat.get("q3_ms")
    return f"{q1:.2f}-{q3:.2f}" if isinstance(q1, (int, float)) and isinstance(q3, (int, float)) and q3 > 0 else ""


def _latency_setting(r) -> tuple:
    return (r.latency_batch_size, r.memory_format)


def _latency_note(r, timed) -> str:
    """What differs between the rows' measurements, in the cell (what they share is in the caption)."""
    batch = "" if len({t.latency_batch_size for t in timed}) == 1 else f" b{r.latency_batch_size}"
    layout = "" if len({t.memory_format for t in timed}) == 1 else f" {_LAYOUT.get(str(r.memory_format), r.memory_format)}"
    return batch + layout


def _latency_caption(timed, *, iqr: bool) -> str:
    """How latency was measured, from what the reports recorded: runs, batch, threads, format, device, load."""
    first = timed[0].latency if isinstance(timed[0].latency, dict) else {}
    batches, formats = {r.latency_batch_size for r in timed}, {r.memory_format for r in timed}
    parts = [f"one batch of {timed[0].latency_batch_size}" if len(batches) == 1 else "one batch (bN: of N)"]
    runtime = first.get("runtime")
    if runtime and runtime != "eager":
        from prunecli.stages.evaluate import _folded_words

        counts = [int((r.latency or {}).get("batchnorm_folded") or 0) for r in timed]
        parts.insert(0, f"in {runtime} (the exported model, {_folded_words(counts)})")
    threads = {(r.latency or {}).get("threads") for r in timed if isinstance(r.latency, dict)}
    if len(threads) == 1 and isinstance(first.get("threads"), int) and first["threads"] > 0:
        parts.append(f"{first['threads']} thread{'s' if first['threads'] != 1 else ''}")
    parts.append(f"{timed[0].memory_format} format" if len(formats) == 1 else "each in its faster memory format (NHWC: channels_last, NCHW: contiguous)")
    if first.get("device"):
        parts.append(str(first["device"]))
    loads = [r.latency.get("load") for r in timed if isinstance(r.latency, dict) and isinstance(r.latency.get("load"), (int, float))]
    if loads:
        parts.append(f"load average {max(loads):.1f}")
    runs = f"median of {first['runs']} interleaved runs" if isinstance(first.get("runs"), int) else "median of interleaved runs"
    text = f"latency ms: {runs} after warm-up; {', '.join(parts)}"
    return text + ("; latency IQR: the middle half of the runs" if iqr else "")
