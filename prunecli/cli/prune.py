"""`prunecli prune`: score and select what to remove; write a masked checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli._common import emit_path, input_checkpoint, output_next_to
from prunecli.cli._options import config_from, given_options, options_from
from prunecli.cli._render import human
from prunecli.config import PruneConfig
from prunecli.errors import UsageError


@options_from(PruneConfig)
def prune(
    ctx: typer.Context,
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint to prune ('-' reads the path from stdin).", show_default=False, readable=False)] = None,
    **options,
) -> None:
    """Score and select channels (or weights) to remove; write a masked checkpoint.

    The mask zeroes whole dependency groups (a channel in every coupled layer), so the
    masked model computes what `prunecli compress` will produce. Counts follow each
    method's reference code (--count-rule reference): l1 keeps int(C*(1-r)) as Li et al.,
    l2 and geomedian remove int(C*r) as SFP and FPGM, magnitude ceil(n*r), slimming
    int(N*r)+1.

    With --epochs N it prunes while training, with finetune's training options:
    --soft (SFP; FPGM with geomedian --mask-grads), --prune-schedule agp (gradual), or
    --rounds R [--rewind init|epoch:K] (iterative, lottery tickets); without them it
    selects once and trains with the masks enforced. --resume continues a killed run.
    """
    from prunecli.stages.prune import prune_checkpoint
    from prunecli.stages.while_training import prune_while_training, resume_pruning

    given = given_options(ctx, options)
    if given.get("resume") is not None:
        if checkpoint is not None:
            raise UsageError("prune: give a CHECKPOINT to prune or --resume a pruning run, not both")
        overrides = {k: v for k, v in given.items() if k not in ("resume", "output")}
        emit_path(resume_pruning(Path(given["resume"]), overrides, output=given.get("output")))
        return
    if checkpoint is None:
        raise UsageError("prune: give a CHECKPOINT to prune (or --resume a pruning run)")
    cfg = config_from(ctx, PruneConfig, options)
    _say_granularity(cfg, given)
    source = input_checkpoint(checkpoint)
    output = output_next_to(source, "compressed" if cfg.compress else "pruned", cfg.output)
    if cfg.training:  # the per-epoch log says it all
        emit_path(prune_while_training(source, cfg, output=output))
        return
    report = prune_checkpoint(source, cfg, output=output)
    _print_report(report)
    emit_path(report.output)


def _say_granularity(cfg: PruneConfig, given: dict) -> None:
    """One log line when the method's only granularity was picked for the user (magnitude: weight)."""
    from prunecli._console import log
    from prunecli.config.methods import NON_CHANNEL_GRANULARITIES

    if "granularity" not in given and cfg.method in NON_CHANNEL_GRANULARITIES:
        log(f"{cfg.method} scores single weights only: pruning at --granularity {cfg.granularity.value}")


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
    if r.latency:
        lat = r.latency
        threads = f"{lat['threads']} thread{'s' if lat['threads'] != 1 else ''}"
        con.print(
            f"latency ({lat['runtime']}, batch {lat['batch_size']}, {threads}, {lat['device']}; interleaved medians): "
            f"{lat['dense_measured_ms']:.2f} -> {lat['measured_ms']:.2f} ms measured, {lat['dense_predicted_ms']:.2f} -> "
            f"{lat['predicted_ms']:.2f} ms predicted; speed-up {lat['achieved_speedup']:.2f}x of {lat['requested_speedup']:.2f}x requested "
            f"({lat['achieved_of_requested']:.2f})"
        )
    if not r.compressed:
        con.print(f"{r.weights_masked:,} parameter entries zeroed by masks")
    elif r.max_abs_diff is not None:
        con.print(f"max |masked - compressed| on the probe batch: {r.max_abs_diff:.2e}")
    for note in r.notes:
        con.print(f"note: {note}")
    from prunecli._console import warn

    for line in r.warnings:  # after the table, so that they are the last thing read
        warn(line)
