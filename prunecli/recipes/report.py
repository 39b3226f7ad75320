"""What a recipe run reports: every checkpoint measured, compared with the paper, plotted.

After the stages, every checkpoint of the run is evaluated side by side (`evaluate`:
top-1/top-5 on its test set, MACs and params, and latency measured interleaved unless a
smoke run), then written as

* ``results.json`` -- the rows, the expectations with measured values, the recipe header;
* ``results.csv`` -- one row per checkpoint: stage, command, top-1, top-5, MACs, params,
  latency, wall time of the stage;
* ``accuracy_vs_macs.png`` -- one point per checkpoint (`plot_runs` draws several runs);

and a rich table of measured against expected numbers, each row within or outside its
tolerance.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from prunecli.outputs import atomic_write
from prunecli.recipes.schema import METRIC_UNITS, Expectation, Recipe

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"
PLOT = "accuracy_vs_macs.png"


@dataclass
class Row:
    stage: str
    command: str
    checkpoint: str
    top1: Optional[float]
    top5: Optional[float]
    macs: Optional[int]
    params: Optional[int]
    conv_linear_params: Optional[int]
    latency_ms: Optional[float]
    seconds: float


@dataclass
class Compared:
    metric: str
    stage: str
    expected: float
    tolerance: float
    measured: Optional[float]
    within: Optional[bool]
    architecture_only: bool
    note: str = ""


def measure(expectation: Expectation, rows: dict[str, "Row | dict"]) -> Optional[float]:
    """The measured value of ``expectation`` from per-stage rows (MACs/params or accuracies)."""

    def get(stage: str, key: str) -> Optional[float]:
        row = rows.get(stage)
        if row is None:
            return None
        value = row[key] if isinstance(row, dict) else getattr(row, key)
        return None if value is None else float(value)

    metric = expectation.metric
    if metric.endswith("_reduction"):
        key = metric.removesuffix("_reduction")
        now, ref = get(expectation.stage, key), get(expectation.relative_to, key)
        return None if now is None or not ref else 100.0 * (1.0 - now / ref)
    return get(expectation.stage, metric)


def compare(recipe: Recipe, rows: dict[str, Any], *, architecture_only: bool = False) -> list[Compared]:
    out = []
    for e in recipe.expected:
        if architecture_only and not e.architecture_only:
            continue
        measured = measure(e, rows)
        out.append(Compared(e.metric, e.stage, e.value, e.tolerance, measured, e.within(measured), e.architecture_only, e.note))
    return out


def write_reports(
    run_dir: Path, recipe: Recipe, rows: list[Row], compared: list[Compared], *, smoke: bool, evaluations: Optional[dict[str, list]] = None
) -> None:
    """``evaluations``: each evaluate stage's own reports (its dataset and options), as plain data."""
    doc = {
        "recipe": recipe.name,
        "setting": recipe.setting,
        "paper": recipe.paper,
        "source": recipe.source,
        "smoke": smoke,
        "variables": recipe.variables,
        "rows": [asdict(r) for r in rows],
        "expected": [asdict(c) for c in compared],
        "evaluations": evaluations or {},
    }
    text = json.dumps(doc, indent=1, default=str)
    atomic_write(run_dir / RESULTS_JSON, lambda f: f.write(text.encode()))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["stage", "command", "top1", "top5", "macs", "params", "conv_linear_params", "latency_ms", "seconds", "checkpoint"])
    for r in rows:
        writer.writerow([r.stage, r.command, r.top1, r.top5, r.macs, r.params, r.conv_linear_params, r.latency_ms, round(r.seconds, 3), r.checkpoint])
    atomic_write(run_dir / RESULTS_CSV, lambda f: f.write(buf.getvalue().encode()))
    plot_runs([run_dir], run_dir / PLOT, runs=[(recipe.name + (" (smoke)" if smoke else ""), rows)])


def read_rows(run_dir: Path) -> tuple[str, list[dict]]:
    """(label, rows) of a finished run directory."""
    from prunecli.errors import PruneCliError

    path = Path(run_dir) / RESULTS_JSON
    try:
        doc = json.loads(path.read_text())
        rows = [r for r in doc["rows"] if isinstance(r, dict) and _numeric(r.get("macs")) and _numeric(r.get("top1"))]
        label = str(doc.get("recipe") or Path(run_dir).name) + (" (smoke)" if doc.get("smoke") else "")
    except (OSError, ValueError, KeyError, TypeError):
        raise PruneCliError(f"{run_dir}: no readable {RESULTS_JSON} (is it a finished recipe run directory?)") from None
    return label, rows


def _numeric(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def plot_runs(run_dirs: list[Path], output: Path, *, runs: Optional[list[tuple[str, list]]] = None) -> Path:
    """Top-1 against MACs, one series per run, one labelled point per checkpoint."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    runs = runs if runs is not None else [read_rows(d) for d in run_dirs]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, rows in runs:
        points = [(r, _get(r, "macs"), _get(r, "top1")) for r in rows]
        points = [(r, m, t) for r, m, t in points if m is not None and t is not None]
        if not points:
            continue
        xs, ys = [m / 1e6 for _, m, _ in points], [t for _, _, t in points]
        ax.plot(xs, ys, marker="o", linestyle="-", label=label)
        for (r, _, _), x, y in zip(points, xs, ys):
            ax.annotate(str(_get(r, "stage")), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(True, alpha=0.3)
    if runs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write(Path(output), lambda f: f.write(buf.getvalue()))


def _get(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else getattr(row, key)


def format_value(metric: str, value: Optional[float]) -> str:
    if value is None:
        return "-"
    if metric in ("macs", "params", "conv_linear_params"):
        for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
            if abs(value) >= size:
                return f"{value / size:.2f}{unit}"
        return f"{value:.0f}"
    return f"{value:.2f}"


def comparison_table(compared: list[Compared], title: str):
    """A rich table: metric, stage, expected +- tolerance, measured, within?"""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("metric", "left"), ("stage", "left"), ("expected", "right"), ("measured", "right"), ("", "left"), ("note", "left")):
        table.add_column(col, justify=just)
    for c in compared:
        mark = "[green]within[/green]" if c.within else ("[red]outside[/red]" if c.within is False else "[dim]not measured[/dim]")
        expected = f"{format_value(c.metric, c.expected)} ± {format_value(c.metric, c.tolerance)}"
        unit = METRIC_UNITS[c.metric]
        table.add_row(f"{c.metric} ({unit})", c.stage, expected, format_value(c.metric, c.measured), mark, c.note)
    return table
