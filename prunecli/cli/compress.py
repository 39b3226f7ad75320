"""`prunecli compress`: remove masked channels physically; verify and measure."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


from prunecli.cli._common import emit_json, emit_path, input_checkpoint, output_next_to
from prunecli.cli._options import config_from, given_options, options_from
from prunecli.cli._render import human
from prunecli.config import CompressConfig
from prunecli.errors import UsageError


@options_from(CompressConfig)
def compress(
    ctx: typer.Context,
    checkpoint: Annotated[
        Optional[Path], typer.Argument(help="Masked checkpoint ('-' reads the path from stdin).", show_default=False, readable=False)
    ] = None,
    **options,
) -> None:
    """Remove masked channels through the dependency graph; check masked == compressed.

    Prints MACs, params, checkpoint size and latency before -> after and the largest
    output difference on a probe batch; refuses (writing nothing) if the outputs differ.
    --json prints {"macs_before", "macs_after", "params_before", "params_after",
    "latency_ms_before", "latency_ms_after", "max_abs_diff", "output", ...}.

    With --block-by-block --method M --rate R it chooses what to remove itself, one block
    at a time (ResNet stages, VGG layers, MobileNetV2 groups; --units), removing each
    block's channels before the next block is chosen, with --unit-finetune-epochs of
    training in between. The output is a valid checkpoint after every block;
    --resume OUT continues a killed run at its first unfinished block.
    """
    from prunecli.stages.block_by_block import compress_blocks, resume_blocks
    from prunecli.stages.compress import compress_checkpoint

    given = given_options(ctx, options)
    if given.get("resume") is not None:
        if checkpoint is not None:
            raise UsageError("compress: give a CHECKPOINT to compress or --resume a block-by-block run, not both")
        overrides = {k: v for k, v in given.items() if k not in ("resume", "output")}
        _emit_blocks(resume_blocks(Path(given["resume"]), overrides, output=given.get("output")), given.get("json", False))
        return
    if checkpoint is None:
        raise UsageError("compress: give a CHECKPOINT to compress (or --resume a block-by-block run)")
    cfg = config_from(ctx, CompressConfig, options)
    source = input_checkpoint(checkpoint)
    if cfg.block_by_block:
        _emit_blocks(compress_blocks(source, cfg, output=output_next_to(source, "compressed", cfg.output)), cfg.json)
        return
    report = compress_checkpoint(source, cfg, output=output_next_to(source, "compressed", cfg.output))
    if cfg.json:
        emit_json(report.to_json())
        return
    _print_report(report)
    emit_path(report.output)


def _emit_blocks(report, as_json: bool) -> None:
    if as_json:
        emit_json(report.to_json())
        return
    _print_blocks(report)
    emit_path(report.output)


def _print_blocks(r) -> None:
    """One row per block (channels, MACs and params so far against the original, top-1, time), then the totals."""
    from rich.table import Table

    from prunecli._console import console

    con = console()
    t = Table(title=f"compress block by block: {r.method} at {r.rate:g}", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("#", "block", "channels", "MACs", "params", "top-1", "time"):
        t.add_column(col, justify="left" if col == "block" else "right")
    for i, row in enumerate(r.rows, start=1):
        t.add_row(
            str(i),
            row.block,
            f"{row.channels_before} -> {row.channels_after}",
            f"{human(row.macs)} ({row.macs / max(1, r.macs_before):.0%})",
            f"{human(row.params)} ({row.params / max(1, r.params_before):.0%})",
            f"{row.top1:.2f}%" if row.top1 is not None else "-",
            f"{row.seconds:.1f}s",
        )
    con.print(t)
    speed = ""
    if r.latency_ms_before is not None:
        speed = f"; latency {r.latency_ms_before:.2f} -> {r.latency_ms_after:.2f} ms (batch {r.latency_batch_size}, {r.latency_ms_before / r.latency_ms_after:.2f}x)"
    con.print(
        f"MACs {human(r.macs_before)} -> {human(r.macs_after)} ({r.macs_before / max(1, r.macs_after):.2f}x), params "
        f"{human(r.params_before)} -> {human(r.params_after)}{speed}; max |masked - compressed| per block: {r.max_abs_diff:.2e}"
    )
    for note in r.notes:
        con.print(f"note: {note}")


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
    if r.latency:
        b, a = r.latency["before"], r.latency["after"]
        con.print(
            f"latency, interleaved medians of {b['runs']} runs ({r.latency['conditions']}): before {b['median_ms']:.2f} ms "
            f"(IQR {b['q1_ms']:.2f}-{b['q3_ms']:.2f}), after {a['median_ms']:.2f} ms (IQR {a['q1_ms']:.2f}-{a['q3_ms']:.2f})"
        )
    con.print(
        f"{len(r.removed)} layer groups shrunk; MACs reduced {r.macs_before / max(1, r.macs_after):.2f}x{speed}; "
        f"max |masked - compressed| on the probe batch: {r.max_abs_diff:.2e}"
    )
    for note in r.notes:
        con.print(f"note: {note}")
