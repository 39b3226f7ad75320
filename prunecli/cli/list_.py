"""`prunecli list models|datasets|methods`."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from prunecli.cli._common import emit_json
from prunecli.cli._options import config_from, options_from
from prunecli.config import ListConfig, flag_for


class What(str, enum.Enum):
    models = "models"
    datasets = "datasets"
    methods = "methods"
    algorithms = "algorithms"


def _criteria_rows() -> list[dict]:
    """Criteria (what scores a structure), each with the algorithms that take it."""
    from prunecli.algorithms import get_algorithm, list_algorithms
    from prunecli.criteria import criterion_aliases, criterion_class, criterion_description, get_criterion, hyperparameters, list_criteria

    rows = []
    for name in list_criteria():
        cls = criterion_class(name)
        rows.append(
            {
                "name": name,
                "aliases": criterion_aliases(name),  # other names --method accepts (fpgm for geomedian)
                "description": criterion_description(name),
                "granularities": list(cls.granularities),
                "needs_data": cls.needs_data,
                "hyperparameters": hyperparameters(cls),
                "algorithms": [a for a in list_algorithms() if get_algorithm(a).accepts(get_criterion(name)) is None],
            }
        )
    return rows


def _algorithm_rows() -> list[dict]:
    """Algorithms (when and how pruning happens), each with the criteria it takes."""
    from prunecli.algorithms import algorithm_description, get_algorithm, list_algorithms
    from prunecli.criteria import get_criterion, list_criteria

    rows = []
    for name in list_algorithms():
        algorithm = get_algorithm(name)
        accepted = [c for c in list_criteria() if algorithm.accepts(get_criterion(c)) is None]
        rows.append({"name": name, "description": algorithm_description(name), "criteria": accepted, "while_training": algorithm.trains})
    return rows


@options_from(ListConfig)
def list_(ctx: typer.Context, what: Annotated[What, typer.Argument(help="What to list.")], **options) -> None:
    """List the registered models, datasets, methods (criteria, with the algorithms) or algorithms.

    `list methods --json` lists the criteria (--method values), each with the algorithms
    that take it; `list algorithms --json` lists the algorithms, each with its criteria.
    """
    cfg = config_from(ctx, ListConfig, options)
    if what is What.models:
        from prunecli.models import list_models, model_description

        rows = [{"name": n, "description": model_description(n)} for n in list_models()]
        rows.append({"name": "tv:NAME", "description": "any torchvision classification model, e.g. tv:resnet50 (weights=None unless --model-arg weights=...)"})
        rows.append({"name": "FILE.py:FACTORY", "description": "your own model: a function returning an nn.Module (also pkg.module:factory)"})
    elif what is What.datasets:
        from prunecli.data import dataset_description, list_datasets

        rows = [{"name": n, "description": dataset_description(n)} for n in list_datasets()]
    elif what is What.methods:
        rows = _criteria_rows()
    else:
        rows = _algorithm_rows()
    if cfg.json:
        emit_json(rows)
        return
    _print_rows(rows, what)


def _print_aliases(out, rows: list[dict]) -> None:
    """The other names --method accepts, one criterion a line (a table column would cut them at 80 columns)."""
    from rich.markup import escape

    named = [r for r in rows if r["aliases"]]
    if not named:
        return
    out.print("also accepted by --method (any case; _ or space for -):")
    width = max(len(", ".join(r["aliases"])) for r in named)
    for r in named:
        out.print(f"  {escape(', '.join(r['aliases'])):{width}}  = [bold]{escape(r['name'])}[/bold]", soft_wrap=True)
    out.print()


def _print_rows(rows: list[dict], what: What) -> None:
    from rich.table import Table

    from prunecli._console import report_console

    # a listing is the command's result: stdout, so that `prunecli list models | grep vgg` works
    out = report_console()
    if what in (What.models, What.datasets):
        table = Table(show_edge=False, pad_edge=False, show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for r in rows:
            table.add_row(r["name"], r["description"])
        out.print(table)
        return
    if what is What.methods:
        criteria = Table(title="criteria: what scores a channel or weight (--method)", title_justify="left", show_edge=False, pad_edge=False)
        for col in ("name", "granularity", "data", "hyper-parameters", "paper"):
            criteria.add_column(col, style="bold" if col == "name" else None)
        for r in rows:
            flags = ", ".join(flag_for(h) for h in r["hyperparameters"])
            criteria.add_row(r["name"], ", ".join(r["granularities"]), "yes" if r["needs_data"] else "", flags, r["description"])
        out.print(criteria)
        out.print()
        _print_aliases(out, rows)
        rows = _algorithm_rows()
    algorithms = Table(title="algorithms: when and how pruning happens", title_justify="left", show_edge=False, pad_edge=False)
    for col in ("name", "criteria it takes", "while training", "what"):
        algorithms.add_column(col, style="bold" if col == "name" else None)
    from prunecli.criteria import list_criteria

    every = len(list_criteria())
    for r in rows:
        when = "prune --epochs N" if r["while_training"] else ""
        algorithms.add_row(r["name"], "any" if len(r["criteria"]) == every else ", ".join(r["criteria"]), when, r["description"])
    out.print(algorithms)
