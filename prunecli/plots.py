"""Figures for `prunecli plot widths|history`: what a user would rather look at than read.

* `plot_widths` -- the output channels each conv/linear layer keeps, one bar series per
  checkpoint (dense against pruned). A masked layer counts its alive channels, so a masked
  checkpoint and its compressed child draw the same bars.
* `plot_history` -- loss and top-1 per epoch from the ``<stem>.metrics.jsonl`` files that
  train, finetune and prune --epochs write (one JSON object per epoch); train solid, test
  dashed, one colour per file.

matplotlib is imported inside the functions, on the Agg backend (files only, no display):
importing it costs start-up time no other command should pay. Files are written
atomically (prunecli.outputs).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from prunecli.errors import PruneCliError
from prunecli.outputs import atomic_write


def widths_of(path: Path) -> list[tuple[str, int, int]]:
    """(layer name, output width as built, alive output channels) per conv/linear layer, in module order."""
    from prunecli.checkpoint import load_checkpoint
    from prunecli.metrics.layers import layer_table
    from prunecli.stages.checkpoints import rebuild_model

    ckpt = load_checkpoint(path)
    model = rebuild_model(ckpt, allow_nonfinite=True)  # widths do not depend on the values
    return [(layer.name, layer.out_width, layer.alive_out) for layer in layer_table(model, ckpt.masks)]


def plot_widths(series: list[tuple[str, list[tuple[str, int, int]]]], output: Path) -> Path:
    """Grouped bars: per layer, the alive output channels of each (label, widths_of(...)) series."""
    plt = _pyplot()
    names: list[str] = []
    for _, layers in series:  # the union of layer names, in the order they first appear
        names += [n for n, _, _ in layers if n not in names]
    n = max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) * n + 2), 4.5), dpi=120)
    width = 0.8 / n
    for k, (label, layers) in enumerate(series):
        alive = {name: a for name, _, a in layers}
        xs = [i + (k - (n - 1) / 2) * width for i, name in enumerate(names) if name in alive]
        ax.bar(xs, [alive[name] for name in names if name in alive], width=width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("output channels (alive)")
    ax.set_title("per-layer widths")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, output)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The epoch records of a ``<stem>.metrics.jsonl``, by epoch (a resumed run's repeat replaces the earlier one).

    Raises one-line errors for a missing or unreadable file, a line that is not a JSON
    object, and a file with no epoch records.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PruneCliError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PruneCliError(f"{path}: is a folder, not a <stem>.metrics.jsonl file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PruneCliError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    by_epoch: dict[int, dict] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise PruneCliError(f"{path}: line {number} is not JSON (expected one JSON object per epoch, as train and finetune write)") from None
        epoch = record.get("epoch") if isinstance(record, dict) else None
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            by_epoch[epoch] = record
    if not by_epoch:
        raise PruneCliError(
            f"{path}: no epoch records (expected one JSON object per line with an 'epoch', as train, finetune and prune --epochs write to <stem>.metrics.jsonl)"
        )
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_history(series: list[tuple[str, list[dict[str, Any]]]], output: Path) -> Path:
    """Two panels, loss and top-1 against epoch; per (label, read_history(...)) series, train solid and test dashed."""
    plt = _pyplot()
    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, records) in enumerate(series):
        color = colors[k % len(colors)]
        for ax, key in ((loss_ax, "loss"), (top1_ax, "top1")):
            for split, style in (("train", "-"), ("test", "--")):
                points = [(r["epoch"], r[f"{split}_{key}"]) for r in records if _number(r.get(f"{split}_{key}"))]
                if points:
                    ax.plot(*zip(*points), style, color=color, marker="o", markersize=3, label=f"{label} {split}")
    loss_ax.set_ylabel("loss")
    top1_ax.set_ylabel("top-1 (%)")
    for ax in (loss_ax, top1_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("training history (train solid, test dashed)")
    return _save(fig, plt, output)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # NaN: a diverged epoch, not a point


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, output: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(Path(output), lambda f: f.write(buf.getvalue()))
