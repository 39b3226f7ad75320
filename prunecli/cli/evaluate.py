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

    from prunecli._console import console, markup_safe

    con = console()
    table = Table(title="evaluate", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("")
    labels = [markup_safe(Path(r.checkpoint).name) for r in reports]
    for label in labels:
        table.add_column(label, justify="right")
    base = reports[0]

    def rel(value, ref):
        return f" ({value / ref:.2f}x)" if len(reports) > 1 and ref else ""

    rows = [
        ("stage", [r.stage for r in reports]),
        ("model", [r.model for r in reports]),
        ("dataset", [f"{r.dataset} ({r.samples:,})" for r in reports]),
        ("top-1 %", [f"{r.top1:.2f}" for r in reports]),
        ("top-5 %", [f"{r.top5:.2f}" for r in reports]),
        ("loss", [f"{r.loss:.4f}" for r in reports]),
        ("MACs", [human(r.macs) + rel(r.macs, base.macs) for r in reports]),
        ("params", [human(r.params) + rel(r.params, base.params) for r in reports]),
        ("non-zero params", [human(r.nonzero_params) for r in reports]),
    ]
    if base.latency_ms is not None:
        rows.append(
            (
                f"latency ms (batch {base.latency_batch_size})",
                [f"{r.latency_ms:.2f}{rel(r.latency_ms, base.latency_ms)} {r.memory_format}" for r in reports],
            )
        )
    for name, cells in rows:
        table.add_row(name, *(markup_safe(c) for c in cells))  # stage, model, dataset names come from the files
    con.print(table)
    if show_layers:
        con.print(layer_widths_table("per-layer widths", labels, [r.layers for r in reports]))
