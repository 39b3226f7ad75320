"""`prunecli list models|datasets|methods`."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from prunecli.cli._common import ConfigOpt, JsonOpt, emit_json


class What(str, enum.Enum):
    models = "models"
    datasets = "datasets"
    methods = "methods"


def list_(
    what: Annotated[What, typer.Argument(help="What to list.")],
    json: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """List the registered models, datasets or pruning methods with a one-line description each."""
    if what is What.models:
        from prunecli.models import list_models, model_description

        rows = [(n, model_description(n)) for n in list_models()]
        rows.append(("tv:NAME", "any torchvision classification model, e.g. tv:resnet50 (weights=None unless --model-arg weights=...)"))
        rows.append(("FILE.py:FACTORY", "your own model: a function returning an nn.Module (also pkg.module:factory)"))
    elif what is What.datasets:
        from prunecli.data import dataset_description, list_datasets

        rows = [(n, dataset_description(n)) for n in list_datasets()]
    else:
        from prunecli.criteria import list_methods, method_description

        rows = [(n, method_description(n)) for n in list_methods()]
    if json:
        emit_json([{"name": n, "description": d} for n, d in rows])
        return
    import sys

    from rich.table import Table

    from prunecli._console import console

    table = Table(show_edge=False, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for n, d in rows:
        table.add_row(n, d)
    # a listing is the command's result: stdout, so that `prunecli list models | grep vgg` works
    from rich.console import Console

    Console(file=sys.stdout, highlight=False).print(table)
    del console
