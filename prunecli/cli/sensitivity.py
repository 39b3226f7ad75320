"""`prunecli sensitivity`: prune one layer at a time at each rate; a CSV, a JSON and a plot of the accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import emit_path, input_checkpoint
from prunecli.cli._options import config_from, options_from
from prunecli.config import SensitivityConfig
from prunecli.errors import PruneCliError


@options_from(SensitivityConfig)
def sensitivity(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to analyse ('-' reads the path from stdin).", show_default=False, readable=False)],
    **options,
) -> None:
    """Prune each layer alone at each rate, evaluate, restore: how sensitive every layer is.

    A layer is a prunable unit (one dependency group), what prune --layer-rate prunes, with
    the same criterion and count rule: pruning unit U at rate r here measures exactly
    `prune --layer-rate U=r` followed by `evaluate`. Writes into the --output folder
    sensitivity.csv (the first row, rate 0, is the baseline), sensitivity.json (read by
    `prune --from-sensitivity FILE --max-drop D`) and sensitivity.png (top-1 against rate,
    one line per layer); prints the folder on stdout. Runs under torchrun, each process
    evaluating its share of the test split.
    """
    from prunecli.stages.sensitivity import sweep_checkpoint

    cfg = config_from(ctx, SensitivityConfig, options)
    source = input_checkpoint(checkpoint)
    output = Path(cfg.output) if cfg.output is not None else source.with_name(f"{source.stem}.sensitivity")
    if output.exists() and output.resolve() == source.resolve():
        raise PruneCliError(f"--output {output} is the input checkpoint; write the sweep elsewhere")
    report = sweep_checkpoint(source, cfg, output=output)
    _print_report(report)
    emit_path(report.output)


def _print_report(r) -> None:
    from rich.table import Table

    from prunecli._console import console, markup_safe
    from prunecli.cli._render import human

    con = console()
    title = f"sensitivity: {markup_safe(r.model)}, {markup_safe(r.method)}, top-1 % on {markup_safe(r.dataset)} ({r.samples:,} images; baseline {r.baseline.top1:.2f})"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("layer")
    table.add_column("ch", justify="right")
    for rate in r.rates:
        table.add_column(f"{rate:g}", justify="right")
    by_layer: dict[str, dict[float, object]] = {}
    channels: dict[str, int] = {}
    for row in r.rows:
        by_layer.setdefault(row.layer, {})[row.rate] = row
        channels[row.layer] = row.channels
    for layer, cells in by_layer.items():
        values = []
        for rate in r.rates:
            row = cells.get(rate)
            if row is None:
                values.append("-")
                continue
            drop = r.baseline.top1 - row.top1
            style = "green" if drop <= 1 else ("yellow" if drop <= 5 else "red")  # points of top-1
            values.append(f"[{style}]{row.top1:.1f}[/{style}]")
        table.add_row(markup_safe(layer), str(channels[layer]), *values)
    con.print(table)
    n = len(r.rows)
    procs = f" on {r.processes} processes" if r.processes > 1 else ""
    con.print(
        f"{len(by_layer)} layers x {len(r.rates)} rates: {n} evaluations + baseline in {r.seconds:.1f}s{procs} "
        f"({r.seconds / max(1, n + 1):.2f}s each); MACs {human(r.baseline.macs)} unpruned"
    )
    for note in r.notes:
        con.print(f"note: {markup_safe(note)}")
