"""`prunecli compress`: remove masked channels physically; verify and measure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import (
    PANEL_RUN,
    BatchSizeOpt,
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutputOpt,
    emit_json,
    emit_path,
    input_checkpoint,
    output_next_to,
    resolved_options,
)
from prunecli.cli._render import human


def compress(
    checkpoint: Annotated[Path, typer.Argument(help="Masked checkpoint ('-' reads the path from stdin).", show_default=False)],
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "cpu",
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure latency before and after.", rich_help_panel=PANEL_RUN)] = True,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed batches per model.", rich_help_panel=PANEL_RUN)] = 10,
    json: JsonOpt = False,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    ctx: typer.Context = None,
) -> None:
    """Remove masked channels through the dependency graph; check masked == compressed.

    Prints MACs, params, checkpoint size and latency before -> after and the largest
    output difference on a probe batch; refuses (writing nothing) if the outputs differ.
    --json prints {"macs_before", "macs_after", "params_before", "params_after",
    "latency_ms_before", "latency_ms_after", "max_abs_diff", "output", ...}.
    """
    from prunecli.stages.compress import compress_checkpoint

    source = input_checkpoint(checkpoint)
    out = output_next_to(source, "compressed", output)
    options = resolved_options(ctx)
    options["checkpoint"] = str(source)
    report = compress_checkpoint(
        source, output=out, options=options, batch_size=batch_size, device=device, latency=latency, repeats=repeats
    )
    if json:
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
