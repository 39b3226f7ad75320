"""`prunecli export`: the checkpoint's model as a TorchScript or ONNX file, BatchNorm folded, checked."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import emit_json, emit_path, input_checkpoint
from prunecli.cli._options import config_from, options_from
from prunecli.config import ExportConfig


@options_from(ExportConfig)
def export(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Compressed (or dense) checkpoint ('-' reads the path from stdin).", show_default=False, readable=False)],
    **options,
) -> None:
    """Write the model for inference (TorchScript or ONNX) with BatchNorm folded; check it.

    The exported file is loaded back in its runtime (torch.jit.load, ONNX Runtime) and run
    on a fixed probe batch; its outputs must equal the checkpoint's within float tolerance,
    or nothing is written. The report gives max |diff|. A masked, not yet compressed,
    checkpoint is refused: compress it first. ONNX needs the onnx extra
    (pip install 'prunecli[onnx]'); without onnxruntime the ONNX file is written unchecked,
    with a note. --json prints {"output", "format", "batchnorm_folded", "max_abs_diff",
    "checked_with", "size", "latency", "notes"}.
    """
    from prunecli.stages.export import export_checkpoint

    cfg = config_from(ctx, ExportConfig, options)
    report = export_checkpoint(input_checkpoint(checkpoint), cfg)
    if cfg.json:
        emit_json(report.to_json())
        return
    _print_report(report)
    emit_path(report.output)


def _print_report(r) -> None:
    from prunecli._console import console, markup_safe
    from prunecli.cli._render import human

    con = console()
    check = f"max |exported - checkpoint| on the probe batch ({r.checked_with}): {r.max_abs_diff:.2e}" if r.checked_with else "not checked"
    con.print(markup_safe(f"export {r.format}: {human(r.size, 'B')}, {r.folded} BatchNorm layer{'s' if r.folded != 1 else ''} folded; {check}"))
    if r.latency:
        lat = r.latency
        e, x = lat["eager"], lat[lat["runtime"]]
        con.print(
            f"latency, interleaved medians of {e['runs']} runs ({lat['conditions']}): checkpoint eager {e['median_ms']:.2f} ms "
            f"(IQR {e['q1_ms']:.2f}-{e['q3_ms']:.2f}), {lat['runtime']} {x['median_ms']:.2f} ms (IQR {x['q1_ms']:.2f}-{x['q3_ms']:.2f}); "
            f"{lat['speedup']:.2f}x"
        )
        if lat.get("unreliable"):
            con.print(f"note: {lat['unreliable']}")
    for note in r.notes:
        con.print(markup_safe(f"note: {note}"))
