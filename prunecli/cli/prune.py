"""`prunecli prune`: score and select what to remove; write a masked checkpoint."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli._common import (
    PANEL_DATA,
    BatchSizeOpt,
    ConfigOpt,
    DataDirOpt,
    DatasetOpt,
    OutputOpt,
    SeedOpt,
    WorkersOpt,
    emit_path,
    input_checkpoint,
    output_next_to,
    resolved_options,
)
from prunecli.cli._render import human

PANEL_WHAT = "What to prune"
PANEL_WHERE = "Which layers"


class Granularity(str, enum.Enum):
    channel = "channel"
    weight = "weight"


class Scope(str, enum.Enum):
    layerwise = "layerwise"
    global_ = "global"


class Protect(str, enum.Enum):
    none = "none"
    output = "output"
    head = "head"


def prune(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to prune ('-' reads the path from stdin).", show_default=False)],
    method: Annotated[str, typer.Option("--method", "-m", help="Criterion (prunecli list methods).", rich_help_panel=PANEL_WHAT)] = "l1",
    rate: Annotated[Optional[float], typer.Option("--rate", "-r", help="Fraction removed, in [0, 1).", rich_help_panel=PANEL_WHAT)] = None,
    granularity: Annotated[Granularity, typer.Option("--granularity", help="channel: output filters/neurons; weight: single weights.", rich_help_panel=PANEL_WHAT)] = Granularity.channel,
    scope: Annotated[Scope, typer.Option("--scope", help="layerwise: the rate in every layer; global: one threshold over normalised scores.", rich_help_panel=PANEL_WHAT)] = Scope.layerwise,
    target_macs: Annotated[Optional[float], typer.Option("--target-macs", help="Remove this fraction of the MACs (searches the rate on the real count).", rich_help_panel=PANEL_WHAT)] = None,
    mix_norm: Annotated[float, typer.Option("--mix-norm", help="FPGM-mix (geomedian): share of the rate chosen by L2 norm.", rich_help_panel=PANEL_WHAT)] = 0.0,
    layer_rate: Annotated[Optional[list[str]], typer.Option("--layer-rate", help="PATTERN=RATE for matching layers (repeatable; glob or layer number).", rich_help_panel=PANEL_WHERE)] = None,
    layer_rates: Annotated[Optional[str], typer.Option("--layer-rates", help="R1,R2,... in prunable-layer order, padded with --rate.", rich_help_panel=PANEL_WHERE)] = None,
    skip: Annotated[Optional[list[str]], typer.Option("--skip", help="Leave matching layers whole (repeatable; glob or layer number).", rich_help_panel=PANEL_WHERE)] = None,
    protect: Annotated[Protect, typer.Option("--protect", help="Never prune the output layer (output), the linear head (head), or nothing (none).", rich_help_panel=PANEL_WHERE)] = Protect.output,
    round_to: Annotated[int, typer.Option("--round-to", min=1, help="Keep channel counts multiples of N.", rich_help_panel=PANEL_WHERE)] = 1,
    max_layer_rate: Annotated[Optional[float], typer.Option("--max-layer-rate", help="Cap on any one layer's rate.", rich_help_panel=PANEL_WHERE)] = None,
    compress: Annotated[bool, typer.Option("--compress", help="Remove the channels now and write a compressed checkpoint (needed where LayerNorm/GroupNorm normalise over pruned channels).", rich_help_panel=PANEL_WHAT)] = False,
    dataset: DatasetOpt = None,
    data: DataDirOpt = None,
    calib_batches: Annotated[int, typer.Option("--calib-batches", min=1, help="Calibration batches for data-driven criteria (taylor, hessian).", rich_help_panel=PANEL_DATA)] = 8,
    batch_size: BatchSizeOpt = 64,
    workers: WorkersOpt = 4,
    seed: SeedOpt = 0,
    output: OutputOpt = None,
    config: ConfigOpt = None,
    ctx: typer.Context = None,
) -> None:
    """Score and select channels (or weights) to remove; write a masked checkpoint.

    The mask zeroes whole dependency groups (a channel in every coupled layer), so the
    masked model computes what `prunecli compress` will produce.
    """
    from prunecli.errors import UsageError
    from prunecli.surgery.plan import Selection, parse_layer_rate
    from prunecli.stages.prune import PruneConfig, prune_checkpoint

    source = input_checkpoint(checkpoint)
    out = output_next_to(source, "compressed" if compress else "pruned", output)
    try:
        rates = [float(v) for v in layer_rates.replace(" ", "").split(",") if v] if layer_rates else []
    except ValueError:
        raise UsageError(f"--layer-rates {layer_rates!r}: expected comma-separated numbers, e.g. 0.5,0.3") from None
    sel = Selection(
        rate=rate,
        scope=scope.value,
        layer_rate=[parse_layer_rate(t) for t in layer_rate or []],
        layer_rates=rates,
        skip=list(skip or []),
        protect=protect.value,
        round_to=round_to,
        max_layer_rate=max_layer_rate,
    )
    cfg = PruneConfig(
        method=method,
        selection=sel,
        granularity=granularity.value,
        target_macs=target_macs,
        mix_norm=mix_norm,
        seed=seed,
        dataset=dataset,
        data=str(data) if data else None,
        calib_batches=calib_batches,
        batch_size=batch_size,
        workers=workers,
        compress=compress,
    )
    options = resolved_options(ctx)
    options["checkpoint"] = str(source)
    report = prune_checkpoint(source, cfg, output=out, options=options)
    _print_report(report)
    emit_path(report.output)


def _print_report(r) -> None:
    from rich.table import Table

    from prunecli._console import console

    con = console()
    title = f"prune: {r.method} ({r.granularity}{', compressed' if r.compressed else ''})"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("layer", "left"), ("before", "right"), ("after", "right"), ("removed", "right"), ("", "left")):
        table.add_column(col, justify=just)
    for row in r.rows:
        removed = f"{1 - row.after / row.before:.0%}" if row.before and row.status == "prune" else row.status
        table.add_row(row.name, f"{row.before:,}", f"{row.after:,}", removed, row.note)
    con.print(table)
    if r.granularity == "channel":
        red = 1 - r.macs_after / r.macs_before if r.macs_before else 0
        con.print(
            f"{'compressed' if r.compressed else 'after compress'}: MACs {human(r.macs_before)} -> {human(r.macs_after)} (-{red:.1%}), "
            f"params {human(r.params_before)} -> {human(r.params_after)} (-{1 - r.params_after / r.params_before:.1%})"
            + (f"; base rate {r.rate_used:g}" if r.rate_used is not None else "")
        )
    if not r.compressed:
        con.print(f"{r.weights_masked:,} parameter entries zeroed by masks")
    elif r.max_abs_diff is not None:
        con.print(f"max |masked - compressed| on the probe batch: {r.max_abs_diff:.2e}")
    for note in r.notes:
        con.print(f"note: {note}")
