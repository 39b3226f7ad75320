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


def _print_reports(reports, show_layers: bool) -> None:
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
        title += f": {markup_safe(reports[0].model)} on {markup_safe(reports[0].dataset)} ({reports[0].samples:,} test images)"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    columns = ["#", "checkpoint", "stage"] + (["model"] if len(models) > 1 else []) + (["dataset"] if len(datasets) > 1 else [])
    columns += ["top-1 %", "top-5 %", "loss", "MACs", "params", "non-zero params"]
    timed = [r for r in reports if r.latency_ms is not None]
    if timed:
        columns.append("latency ms")
    if several:
        columns.append("ratios to")
    for col in columns:
        left = col in ("checkpoint", "stage", "model", "dataset", "ratios to")
        # a name is what tells the rows apart: wrapped when the terminal is narrow, never cut
        table.add_column(col, justify="left" if left else "right", overflow="fold" if col == "checkpoint" else "ellipsis", no_wrap=col in ("#", "ratios to"))

    def rel(i: int, value, key: str) -> str:
        ref = refs[i]
        base = getattr(reports[ref], key) if ref is not None else None
        return f" ({value / base:.2f}x)" if base else ""

    for i, r in enumerate(reports):
        cells = [str(i + 1), labels[i], markup_safe(r.stage)]
        if len(models) > 1:
            cells.append(markup_safe(r.model))
        if len(datasets) > 1:
            cells.append(markup_safe(f"{r.dataset} ({r.samples:,})"))
        cells += [f"{r.top1:.2f}", f"{r.top5:.2f}", f"{r.loss:.4f}"]
        cells += [human(r.macs) + rel(i, r.macs, "macs"), human(r.params) + rel(i, r.params, "params"), human(r.nonzero_params) + rel(i, r.nonzero_params, "nonzero_params")]
        if timed:
            cells.append("-" if r.latency_ms is None else f"{r.latency_ms:.2f}" + rel(i, r.latency_ms, "latency_ms") + _latency_note(r, timed))
        if several:
            cells.append(f"#{refs[i] + 1}" if refs[i] is not None else "-")
        table.add_row(*cells)
    notes = ["non-zero params: parameters that are not exactly zero (masked or pruned weights are zero)"]
    if several:
        notes.append(
            "ratios to: the row's own ancestor in this table (a parent file named in its lineage, matched by sha256); "
            "no ratio where none is listed, since ratios between unrelated models say nothing"
        )
    if timed:
        shared = _latency_setting(timed[0])
        if all(_latency_setting(r) == shared for r in timed):
            notes.append(f"latency: median ms of one batch of {timed[0].latency_batch_size} in {timed[0].memory_format} format, models of the same input timed interleaved")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    out.print(table)
    if show_layers:
        out.print(layer_widths_table("per-layer widths (columns: # above)", [f"#{i + 1}" for i in range(len(reports))], [r.layers for r in reports]))


def _latency_setting(r) -> tuple:
    return (r.latency_batch_size, r.memory_format)


def _latency_note(r, timed) -> str:
    """The batch size and memory format in the cell, only when the rows differ in them (else the caption says)."""
    if all(_latency_setting(t) == _latency_setting(timed[0]) for t in timed):
        return ""
    return f" (batch {r.latency_batch_size}, {r.memory_format})"
