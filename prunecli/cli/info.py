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
    """Show a checkpoint's model, dataset, metrics, lineage, structure and (with --layers) layers.

    The report goes to stdout; --json prints it as one JSON object, with the lineage as
    written ("lineage") and as readable steps ("steps": command, settings, MACs and params
    before and after, top-1).
    """
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

    from prunecli._console import console, report_console

    out = report_console()  # the report is what info returns: stdout (`prunecli info x.pt > report.txt`)
    s = _safe(s)  # every string in a checkpoint is the writer's: no escape codes, no rich markup
    if s["nonfinite_tensors"]:
        bad = s["nonfinite_tensors"]
        console().print(f"[red]warning:[/red] {len(bad)} weight tensor(s) hold NaN or Inf: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    out.print(f"[bold]{s['checkpoint']}[/bold]")
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
    t.add_row("MACs / params", f"{human(s['macs'])} / {human(s['params'])}" + _once_compressed(s["steps"]))
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
    for name, text in _metric_rows(s["metrics"] or {}, s["steps"]):
        t.add_row(name, text)
    if s["resume"]:
        r = s["resume"]
        block = f"block {r['block'] + 1}, " if r.get("block") is not None else ""
        t.add_row("resume", f"{r['stage']} at {block}epoch {r['epoch']}/{r['epochs']}")
    if s.get("sss"):
        t.add_row("sss gates", _sss_line(s["sss"]))
    if s.get("rewind_epoch") is not None:
        k = s["rewind_epoch"]
        t.add_row("rewind weights", f"epoch {k} ({'the initialisation; ' if k == 0 else ''}prune --rounds R --rewind {'init' if k == 0 else f'epoch:{k}'})")
    out.print(t)
    out.print(_lineage_table(s["steps"]))
    if s.get("learned_mask"):
        out.print(_learned_mask_table(s["learned_mask"]))
    if show_layers:
        out.print(layer_widths_table("layers", ["width"], [table]))


# metrics `_metric_rows` turns into words; any other key is listed as it is
_KNOWN_METRICS = {
    "epoch", "epochs", "best_top1", "best_epoch", "top1", "top5", "loss", "dataset",
    "macs_before", "macs_after_compress", "params_after_compress", "macs", "params", "macs_before_compress", "max_abs_diff",
}


def _metric_rows(metrics: dict, steps: list[dict]) -> list[tuple[str, str]]:
    """The file's metrics in words: its top-1 (or where the last one was measured), the compress check, the rest as is."""
    from prunecli.stages.lineage import as_int, as_number

    mt = {k: (as_number(v) if k not in ("dataset", "epoch", "epochs", "best_epoch") else v) for k, v in metrics.items()}  # a file's numbers may be anything
    rows = []
    last = steps[-1] if steps else {}
    if mt.get("top1") is not None and last.get("top1") is not None:
        text = f"{mt['top1']:.2f}%"
        if mt.get("top5") is not None:
            text += f" (top-5 {mt['top5']:.2f}%" + (f", loss {mt['loss']:.4f})" if mt.get("loss") is not None else ")")
        if isinstance(mt.get("dataset"), str):
            text += f" on the {mt['dataset']} test set"
        epoch, epochs, best_epoch = as_int(mt.get("epoch")), as_int(mt.get("epochs")), as_int(mt.get("best_epoch"))
        if epoch is not None and epochs is not None:
            text += f" after epoch {epoch}/{epochs}"
        if mt.get("best_top1") is not None and best_epoch is not None and best_epoch != epoch:
            text += f"; best {mt['best_top1']:.2f}% at epoch {best_epoch} (in <stem>.best.pt)"
        rows.append(("top-1", text))
    else:
        measured = [st for st in steps if st.get("top1") is not None]
        if measured:
            st = measured[-1]
            since = ", ".join(later["command"] for later in steps[st["index"]:])  # the stages since, which may have changed it
            rows.append(("top-1", f"not measured on this file: the last measured is {st['top1']:.2f}% after step {st['index']} ({st['command']}), before {since}; prunecli evaluate measures it"))
    if mt.get("max_abs_diff") is not None:
        rows.append(("compress check", f"masked and compressed outputs differ by at most {mt['max_abs_diff']:.2g} on a probe batch"))
    other = {k: v for k, v in metrics.items() if k not in _KNOWN_METRICS and v is not None}
    if other:
        rows.append(("other metrics", ", ".join(f"{k} {_value(v)}" for k, v in other.items())))
    return rows


def _value(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return human(v) if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _once_compressed(steps: list[dict]) -> str:
    """For a masked file: what compress will leave, as the last prune predicted it."""
    for st in reversed(steps):
        if st.get("changes"):
            return ""  # compressed since (or pruned with --compress): the file's own numbers are the story
        if st.get("after_compress"):
            return f" as stored; {human(st['macs_after'])} / {human(st['params_after'])} once compressed (prunecli compress)"
    return ""


def _lineage_table(steps: list[dict]):
    """One line per stage: what it did (command, method, rate, epochs), what it changed, top-1, from which file."""
    from rich.table import Table

    caption = "* once compressed: a masked file keeps its shapes until prunecli compress" if any(st.get("after_compress") for st in steps) else None
    # times, versions, options and the parents' sha256 are in --json ("lineage"); a line keeps what a reader compares
    lin = Table(title="lineage (oldest first)", title_justify="left", caption=caption, caption_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("#", "right"), ("stage", "left"), ("settings", "left"), ("MACs", "right"), ("params", "right"), ("top-1 %", "right"), ("from", "left")):
        lin.add_column(col, justify=just, no_wrap=col in ("#", "stage", "top-1 %"))
    for st in steps:
        resumed = f" (resumed x{st['resumed']})" if st.get("resumed") else ""
        lin.add_row(
            str(st["index"]),
            f"{st['command']}{resumed}",
            st.get("settings") or "",
            _change(st, "macs"),
            _change(st, "params"),
            _top1(st),
            st.get("parent") or "-",
        )
    return lin


def _change(st: dict, key: str) -> str:
    """ "24.33M", "24.33M -> 8.95M (-63.2%)", or "24.33M -> 8.95M* (-63.2%)" for a masked prune (* once compressed)."""
    before, after = st.get(f"{key}_before"), st.get(f"{key}_after")
    if st.get("changes") or st.get("after_compress"):
        if after is None:
            return "?"
        if before is None:
            return f"-> {human(after)}"
        star = "*" if st.get("after_compress") else ""
        cut = f" ({after / before - 1:+.1%})" if before else ""
        return f"{human(before)} -> {human(after)}{star}{cut}"
    return human(before) if before is not None else "?"


def _top1(st: dict) -> str:
    if st.get("top1") is None:
        return "-"
    best = st.get("best_top1")
    text = f"{st['top1']:.2f}"
    if best is not None and best > st["top1"] and st.get("best_epoch") is not None:
        text += f" (best {best:.2f} @{st['best_epoch']})"
    return text


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
