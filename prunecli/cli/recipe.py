"""`prunecli recipe run|check|list`: reproduce a paper setting from one file (`prunecli plot runs` draws several runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli._common import emit_json
from prunecli.cli._help import HelpCommand, HelpGroup

recipe_app = typer.Typer(
    name="recipe",
    cls=HelpGroup,
    no_args_is_help=True,
    help="Reproduce a paper setting from one YAML file: run it, check it, list the shipped ones.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_RECIPE = Annotated[str, typer.Argument(help="A recipe file, or the name of a shipped one (prunecli recipe list).", show_default=False)]
_SETS = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe variable: KEY=VALUE (repeatable).", metavar="KEY=VALUE")]


def _default_run_dir(recipe) -> Path:
    return Path("runs") / "recipes" / recipe.name.replace("/", "_")


@recipe_app.command("run", cls=HelpCommand)
def run(
    recipe: _RECIPE,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Run directory (default: runs/recipes/NAME).")] = None,
    sets: _SETS = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="Every stage on tiny synthetic data, 1 batch per epoch: proves the wiring in seconds.")] = False,
    start: Annotated[Optional[str], typer.Option("--from", help="Re-run this stage and every later one.")] = None,
    device: Annotated[str, typer.Option("--device", help="Where the final measurements run (stages take theirs from the recipe).")] = "auto",
) -> None:
    """Run a recipe's stages in a run directory; re-running skips finished stages and continues an interrupted one.

    Writes every stage's checkpoint, results.json, results.csv and accuracy_vs_macs.png,
    prints measured against expected numbers, and prints the run directory on stdout.
    """
    from prunecli._console import console
    from prunecli.cli._common import emit_path
    from prunecli.recipes import library
    from prunecli.recipes.report import compare, comparison_table, write_reports
    from prunecli.recipes.runner import collect_rows, run_recipe
    from prunecli.recipes.schema import parse_sets

    r = library.load(recipe, parse_sets(sets or []))
    run_dir = output if output is not None else _default_run_dir(r)
    result = run_recipe(r, run_dir, smoke=smoke, start=start)
    rows = collect_rows(result, device=device)
    compared = compare(r, {row.stage: row for row in rows})
    evaluations = {name: [rep.to_json() for rep in reports] for name, reports in result.evaluations.items()}
    write_reports(run_dir, r, rows, compared, smoke=smoke, evaluations=evaluations)
    con = console()
    for name, reports in evaluations.items():
        con.print(_evaluation_table(name, reports))
    con.print(_results_table(rows))
    if compared:
        title = f"{r.name}: measured vs expected" + (" (smoke run: accuracies are meaningless)" if smoke else "")
        con.print(comparison_table(compared, title))
    emit_path(run_dir)


@recipe_app.command("check", cls=HelpCommand)
def check(recipe: _RECIPE, sets: _SETS = None) -> None:
    """Validate a recipe, show its stages, and compute its architecture-only numbers on random weights.

    Exit 1 if MACs or params (or their reductions) fall outside the recipe's tolerances.
    """
    from prunecli._console import report_console
    from prunecli.errors import PruneCliError
    from prunecli.recipes import library
    from prunecli.recipes.check import architecture_rows
    from prunecli.recipes.report import compare, comparison_table
    from prunecli.recipes.schema import parse_sets

    r = library.load(recipe, parse_sets(sets or []))
    con = report_console()  # writes no checkpoint: the report is what it returns, on stdout
    con.print(_header(r))
    con.print(_timeline(r))
    rows = architecture_rows(r)
    compared = compare(r, {row.stage: vars(row) for row in rows}, architecture_only=True)
    if compared:
        con.print(comparison_table(compared, f"{r.name}: architecture-only numbers (random weights)"))
    else:
        con.print("no architecture-only expectations to check")
    outside = [c for c in compared if not c.within]
    if outside:
        names = ", ".join(f"{c.metric} at {c.stage}" for c in outside)
        raise PruneCliError(f"{r.path}: {len(outside)} architecture-only expectation(s) outside tolerance: {names}")


@recipe_app.command("list", cls=HelpCommand)
def list_recipes(json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False) -> None:
    """The shipped recipes: paper, setting and expected numbers."""
    from rich.table import Table

    from prunecli._console import report_console
    from prunecli.recipes import library
    from prunecli.recipes.report import format_value

    rows = []
    for name, path in library.shipped().items():
        r = library.load(path)
        rows.append(
            {
                "name": name,
                "setting": r.setting,
                "paper": r.paper.get("title", ""),
                "arxiv": r.paper.get("arxiv", ""),
                "source": r.source,
                "expected": {e.metric + ("" if e.stage == r.checkpoint_stages[-1].name else f"@{e.stage}"): e.value for e in r.expected},
            }
        )
    if json:
        emit_json(rows)
        return
    table = Table(title="shipped recipes (prunecli recipe run NAME)", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("name", no_wrap=True)  # what the user types: never cut
    table.add_column("setting", ratio=3)
    table.add_column("paper", ratio=1)
    table.add_column("expected", ratio=2)
    for row in rows:
        expected = ", ".join(f"{k} {format_value(k.split('@')[0], v)}" for k, v in row["expected"].items())
        paper = f"arXiv:{row['arxiv']}" if row["arxiv"] else "-"
        table.add_row(row["name"], row["setting"], paper, expected)
    report_console().print(table)  # a listing, like `prunecli list`: stdout


def _header(r):
    from rich.table import Table

    t = Table(show_header=False, show_edge=False, pad_edge=False, title=r.name, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("setting", r.setting)
    if r.paper:
        ids = ", ".join(f"{k} {v}" for k, v in r.paper.items() if k in ("arxiv", "doi"))
        t.add_row("paper", f"{r.paper.get('title')} ({r.paper.get('authors', '')}{', ' + r.paper['venue'] if 'venue' in r.paper else ''}; {ids})")
        t.add_row("numbers from", r.source)
    if r.hardware:
        t.add_row("paper's hardware", r.hardware)
    if r.variables:
        t.add_row("variables", ", ".join(f"{k}={v}" for k, v in r.variables.items()))
    return t


def _timeline(r):
    from rich.table import Table

    t = Table(title="stages", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("#", "stage", "command", "input", "options (resolved)"):
        t.add_column(col)
    for i, s in enumerate(r.stages, start=1):
        cfg = s.config()
        resolved = cfg.to_options()
        shown = " ".join(f"--{k} {v}" if not isinstance(v, bool) else (f"--{k}" if v else f"--no-{k}") for k, v in resolved.items() if k in s.options)
        t.add_row(str(i), s.name, s.command, ", ".join(s.inputs) or "-", shown or "(defaults)")
    return t


def _evaluation_table(name: str, reports: list[dict]):
    """An evaluate stage's own measurements (its dataset and options may differ from the final ones)."""
    from rich.table import Table

    from prunecli._console import markup_safe
    from prunecli.recipes.report import format_value

    t = Table(title=f"stage {name} (evaluate)", title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("checkpoint", "left"), ("dataset", "left"), ("top-1 %", "right"), ("top-5 %", "right"), ("MACs", "right"), ("params", "right")):
        t.add_column(col, justify=just)
    for rep in reports:
        t.add_row(
            markup_safe(Path(str(rep.get("checkpoint"))).name),
            markup_safe(rep.get("dataset")),
            format_value("top1", rep.get("top1")),
            format_value("top5", rep.get("top5")),
            format_value("macs", rep.get("macs")),
            format_value("params", rep.get("params")),
        )
    return t


def _results_table(rows):
    from rich.table import Table

    from prunecli.recipes.report import format_value

    t = Table(title="results", title_justify="left", show_edge=False, pad_edge=False)
    for col, just in (("stage", "left"), ("command", "left"), ("top-1 %", "right"), ("top-5 %", "right"), ("MACs", "right"), ("params", "right"), ("latency ms", "right"), ("wall s", "right")):
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(
            r.stage,
            r.command,
            format_value("top1", r.top1),
            format_value("top5", r.top5),
            format_value("macs", r.macs),
            format_value("params", r.params),
            "-" if r.latency_ms is None else f"{r.latency_ms:.2f}",
            f"{r.seconds:.1f}",
        )
    return t
