"""`prunecli info`: what a checkpoint is, where it came from, and its layers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunecli.cli._common import emit_json, input_checkpoint
from prunecli.cli._options import config_from, options_from
from prunecli.cli._render import human, layer_widths_table
from prunecli.config import InfoConfig


@options_from(InfoConfig)
def info(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint ('-' reads the path from stdin).", show_default=False, readable=False)],
    **options,
) -> None:
    """Show a checkpoint's model, dataset, metrics, lineage, structure and (with --layers) layers."""
    from prunecli.stages.inspect import checkpoint_summary

    cfg = config_from(ctx, InfoConfig, options)
    summary, table = checkpoint_summary(input_checkpoint(checkpoint))
    if cfg.json:
        if cfg.layers:
            summary["layers"] = [vars(layer) for layer in table]
        emit_json(summary)
        return
    _print_info(summary, table, cfg.layers)


def _print_info(s: dict, table, show_layers: bool) -> None:
    from rich.table import Table

    from prunecli._console import console

    con = console()
    s = _safe(s)  # every string in a checkpoint is the writer's: no escape codes, no rich markup
    con.print(f"[bold]{s['checkpoint']}[/bold]")
    if s["nonfinite_tensors"]:
        bad = s["nonfinite_tensors"]
        con.print(f"[red]warning:[/red] {len(bad)} weight tensor(s) hold NaN or Inf: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    t = Table(show_header=False, show_edge=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    m = s["model"]
    t.add_row("stage", s["stage"])
    args = ", ".join(f"{k}={v}" for k, v in m["kwargs"].items())
    t.add_row("model", f"{m['name']}({args}) for {m['in_channels']}x{m['image_size']}x{m['image_size']}, {m['num_classes']} classes")
    if s["dataset"]:
        d = s["dataset"]
        t.add_row("dataset", f"{d['name']}" + (f" at {d['root']}" if d.get("root") else ""))
    t.add_row("MACs / params", f"{human(s['macs'])} / {human(s['params'])}")
    t.add_row("structure", f"compressed ({s['structure_steps']} pruning steps replayed)" if s["compressed"] else "as built")
    for conv in s["converters"]:
        if conv.get("name") == "channel-selection":
            n = len((conv.get("args") or {}).get("norms") or [])
            t.add_row("converted", f"channel selection in front of {n} stream BatchNorm(s) (Network Slimming; prune --stream-bn select)")
        elif conv.get("name") == "drop-blocks":
            blocks = [str(b) for b in (conv.get("args") or {}).get("blocks") or []]
            t.add_row("converted", f"{len(blocks)} dead residual block(s) dropped: {', '.join(blocks)}")
        else:
            t.add_row("converted", str(conv.get("name")))
    if s["masked_parameters"]:
        t.add_row("masks", f"{s['masked_parameters']} parameters, {s['masked_entries']:,} entries pruned")
    if s["metrics"]:
        mt = s["metrics"]
        shown = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in mt.items() if v is not None)
        t.add_row("metrics", shown)
    if s["resume"]:
        r = s["resume"]
        block = f"block {r['block'] + 1}, " if r.get("block") is not None else ""
        t.add_row("resume", f"{r['stage']} at {block}epoch {r['epoch']}/{r['epochs']}")
    if s.get("sss"):
        t.add_row("sss gates", _sss_line(s["sss"]))
    if s.get("rewind_epoch") is not None:
        k = s["rewind_epoch"]
        t.add_row("rewind weights", f"epoch {k} ({'the initialisation; ' if k == 0 else ''}prune --rounds R --rewind {'init' if k == 0 else f'epoch:{k}'})")
    con.print(t)

    lin = Table(title="lineage", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("#", "command", "time", "prunecli", "parent", "parent sha256"):
        lin.add_column(col)
    for i, e in enumerate(s["lineage"], start=1):
        resumed = f" (resumed x{len(e['resumed'])})" if isinstance(e.get("resumed"), list) and e["resumed"] else ""
        lin.add_row(
            str(i),
            f"{e.get('command', '?')}{resumed}",
            str(e.get("time", "")),
            str(e.get("prunecli_version", "")),
            str(e.get("parent") or "-"),
            str(e.get("parent_sha256") or "-")[:12],
        )
    con.print(lin)
    if s.get("learned_mask"):
        con.print(_learned_mask_table(s["learned_mask"]))
    if show_layers:
        con.print(layer_widths_table("layers", ["width"], [table]))


def _sss_line(r: dict) -> str:
    """Sparse Structure Selection's gates in one line: settings, how many are zero, which."""
    gates = r.get("gates") or {}
    total = sum(len(v) for v in gates.values())
    zero = sum(1 for v in gates.values() for x in v if x == 0)
    what = {"block": "blocks", "group": "groups", "channel": "channels"}.get(str(r.get("granularity")), "gates")
    dead = [str(d) for d in r.get("dead") or []]
    line = f"{r.get('granularity')}, gamma {r.get('gamma')}, epoch {r.get('epoch')}: {zero}/{total} {what} at zero"
    if dead and r.get("granularity") == "block":
        line += f" ({', '.join(dead[:8])}{' ...' if len(dead) > 8 else ''})"
    kept = [str(d) for d in r.get("kept_downsampling") or []]
    if kept:
        line += f"; {', '.join(kept)} downsample{'s' if len(kept) == 1 else ''}: compress keeps {'it' if len(kept) == 1 else 'them'}"
    return line


def _learned_mask_table(lm: dict):
    """Edge-popup's mask per scored layer: what fraction of its filters or weights it keeps."""
    from rich.table import Table

    rank = lm.get("rank") or "absolute"
    if rank == "relevant":
        rank += " (abs)" if lm.get("rank_abs", True) else " (noabs)"
    how = f"{lm.get('granularity')}, {lm.get('scope')}" + (f", rank {rank}" if lm.get("granularity") == "channel" else "")
    state = "" if lm.get("pruning", True) else ", still in warm-up: nothing masked yet"
    stored = "; scores and initial scores stored in this file" if lm.get("scores_stored") else ""
    t = Table(
        title=f"edge-popup mask ({how}; epoch {lm.get('epoch')}{state}{stored})", title_justify="left", show_edge=False, pad_edge=False
    )
    for col in ("layer", "kept", "of"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    for r in lm.get("layers") or []:
        kept = r.get("kept")
        t.add_row(str(r.get("layer")), f"{kept * 100:.1f}%" if isinstance(kept, (int, float)) else "?", f"{r.get('of')} {r.get('unit', '')}")
    return t


def _safe(value):
    """``value`` with every string made safe for rich output on a terminal."""
    from prunecli._console import markup_safe

    if isinstance(value, str):
        return markup_safe(value)
    if isinstance(value, dict):
        return {_safe(k) if isinstance(k, str) else k: _safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_safe(v) for v in value]
    return value
