"""`prunecli compress`: remove masked channels physically; verify and measure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import emit_json, emit_path, input_checkpoint, output_next_to
from prunecli.cli._options import config_from, options_from
from prunecli.cli._render import human
from prunecli.config import CompressConfig


@options_from(CompressConfig)
def compress(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Masked checkpoint ('-' reads the path from stdin).", show_default=False, readable=False)],
    **options,
) -> None:
    """Remove masked channels through the dependency graph; check masked == compressed.

    Prints MACs, params, checkpoint size and latency before -> after and the largest
    output difference on a probe batch; refuses (writing nothing) if the outputs differ.
    --json prints {"macs_before", "macs_after", "params_before", "params_after",
    "latency_ms_before", "latency_ms_after", "max_abs_diff", "output", ...}.
    """
    from prunecli.stages.compress import compress_checkpoint

    cfg = config_from(ctx, CompressConfig, options)
    source = input_checkpoint(checkpoint)
    report = compress_checkpoint(source, cfg, output=output_next_to(source, "compressed", cfg.output))
    if cfg.json:
        emit_json(report.to_json())
        return
    _print_report(report)
    emit_path(report.output)


def _print_report(r) -> None:
    from rich.table import Table

    from prunecli._console import console

    con = console()
    table = Table(title="compress", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="right" if col else "left")

    def row(name, b, a, fmt):
        table.add_row(name, fmt(b), fmt(a), f"{a / b:.3f}x" if b else "-")

    row("MACs", r.macs_before, r.macs_after, human)
    row("params", r.params_before, r.params_after, human)
    row("checkpoint size", r.size_before, r.size_after, lambda v: human(v, "B"))
    if r.latency_ms_before is not None:
        row(f"latency ms (batch {r.latency_batch_size})", r.latency_ms_before, r.latency_ms_after, lambda v: f"{v:.2f}")
    con.print(table)
    speed = f"; measured speed-up {r.latency_ms_before / r.latency_ms_after:.2f}x" if r.latency_ms_before else ""
    con.print(
        f"{len(r.removed)} layer groups shrunk; MACs reduced {r.macs_before / max(1, r.macs_after):.2f}x{speed}; "
        f"max |masked - compressed| on the probe batch: {r.max_abs_diff:.2e}"
    )
    for note in r.notes:
        con.print(f"note: {note}")
