"""`prunecli profile`: measure a checkpoint's latency table; print how well it predicts pruned models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import emit_path, input_checkpoint
from prunecli.cli._options import config_from, options_from
from prunecli.config import ProfileConfig


@options_from(ProfileConfig)
def profile(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint to profile ('-' reads the path from stdin).", show_default=False, readable=False)],
    **options,
) -> None:
    """Measure the latency table prune --target-latency and --round-to auto read.

    Every conv/linear layer is timed alone at its real input size, batch and runtime on a
    grid of (input width, output width); layers of one configuration are timed once; the
    rest of the model (BatchNorm, ReLU, adds, pooling) is timed on a copy whose conv/linear
    layers return ready outputs. A model's latency at any per-unit widths is predicted from
    it (per layer, because single-unit deltas of the whole model do not add up: a conv
    between two halved units costs 1/4). The table is cached by device, runtime, batch
    size, threads, torch version and the model's architecture and widths (not weights) in
    $PRUNECLI_CACHE_DIR (default ~/.cache/prunecli/latency) and reused when all of them
    match. The check prunes l1 layer-wise at 0.3 and 0.6 in memory, times them
    interleaved with the dense model, and prints predicted vs measured latency, and the
    error of the predicted fraction of the dense latency (the machine's drift since the
    table was measured cancels in it). Prints the table's path on stdout.
    """
    from prunecli.stages.profile import profile_checkpoint

    cfg = config_from(ctx, ProfileConfig, options)
    report = profile_checkpoint(input_checkpoint(checkpoint), cfg)
    _print_report(report)
    emit_path(report.output)


def _print_report(r) -> None:
    from prunecli._console import console, markup_safe

    con = console()
    t = r.table
    k = t.key
    how = "reused" if r.reused else f"measured {len(t.configs)} layer configurations for {len(t.layers)} layers"
    con.print(
        markup_safe(
            f"latency table of {k['model']} ({how}): {k['runtime']}, batch {k['batch_size']}, {k['threads']} thread{'s' if k['threads'] != 1 else ''}, "
            f"{k['device']}; dense {t.dense_ms:.2f} ms measured, layers alone {t.raw({}) - t.rest_ms:.2f} ms + rest {t.rest_ms:.2f} ms "
            f"(of it fixed {t.rest_fixed_ms:.2f} ms), calibrated x{t.scale:.3f} {t.offset_ms:+.2f} ms on the dense and an l1-0.5 copy"
        )
    )
    if r.checks:
        from rich.table import Table

        table = Table(title="predicted vs measured (interleaved medians)", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("model", "predicted ms", "measured ms", "error", "fraction error"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for c in r.checks:
            frac = c.get("fraction_error")
            table.add_row(
                c["model"], f"{c['predicted_ms']:.2f}", f"{c['measured_ms']:.2f}", f"{c['error']:+.1%}" if c["error"] is not None else "-",
                "-" if frac is None or c["model"] == "dense" else f"{frac:+.1%}",
            )
        con.print(table)
        from prunecli.metrics.latency import Latency, unreliable

        why = unreliable([Latency(**c["latency"]) for c in r.checks])
        if why:
            con.print(f"note: {why}")
    for note in r.notes:
        con.print(markup_safe(f"note: {note}"))
