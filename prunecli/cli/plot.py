"""`prunecli plot widths|history|runs`: PNG figures of checkpoints, training runs and recipe runs.

Each command writes one PNG file (-o FILE, or a default beside its first input) and prints
its path on stdout, one per line, like every command that writes a file. matplotlib is
imported only when a figure is drawn (prunecli.plots): the other commands start faster.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from prunecli.cli._help import HelpCommand, HelpGroup


class _PlotGroup(HelpGroup):
    """``prunecli plot RUN_DIR...`` (before widths and history existed) still means ``plot runs RUN_DIR...``."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and os.path.isdir(args[0]):
            args = ["runs", *args]
        return super().resolve_command(ctx, args)


plot_app = typer.Typer(
    name="plot",
    cls=_PlotGroup,
    no_args_is_help=True,
    help="Draw PNG figures: per-layer widths of checkpoints, training history, accuracy against MACs of recipe runs.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_OVERWRITE = Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at --output.")]


@plot_app.command("widths", cls=HelpCommand)
def widths(
    checkpoints: Annotated[list[Path], typer.Argument(help="Checkpoints, e.g. the dense one and its pruned children ('-' reads a path from stdin).", show_default=False, readable=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="PNG file to write (default: <first checkpoint's stem>.widths.png beside it).", metavar="FILE")] = None,
    overwrite: _OVERWRITE = False,
) -> None:
    """Per-layer output channels of each checkpoint as bars side by side (masked channels do not count)."""
    from prunecli.cli._common import emit_path, input_checkpoint
    from prunecli.cli._render import distinct_labels
    from prunecli.outputs import claim_output
    from prunecli.plots import plot_widths, widths_of

    paths = [input_checkpoint(p) for p in checkpoints]
    series = list(zip(distinct_labels([str(p) for p in paths]), [widths_of(p) for p in paths]))  # bad files fail before anything is claimed
    out = output if output is not None else paths[0].with_name(f"{paths[0].stem}.widths.png")
    with claim_output(out, overwrite=overwrite):
        emit_path(plot_widths(series, out))


@plot_app.command("history", cls=HelpCommand)
def history(
    files: Annotated[list[Path], typer.Argument(help="<stem>.metrics.jsonl files, written beside the checkpoints by train, finetune and prune --epochs.", show_default=False, readable=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="PNG file to write (default: <stem>.history.png beside the first file).", metavar="FILE")] = None,
    overwrite: _OVERWRITE = False,
) -> None:
    """Loss and top-1 per epoch, train and test, one colour per run."""
    from prunecli.cli._common import emit_path
    from prunecli.cli._render import distinct_labels
    from prunecli.outputs import claim_output
    from prunecli.plots import plot_history, read_history

    records = [read_history(f) for f in files]  # bad files fail before anything is claimed
    labels = [label.removesuffix(".metrics.jsonl") for label in distinct_labels([str(f) for f in files])]
    out = output if output is not None else files[0].with_name(f"{_stem(files[0])}.history.png")
    with claim_output(out, overwrite=overwrite):
        emit_path(plot_history(list(zip(labels, records)), out))


@plot_app.command("runs", cls=HelpCommand)
def runs(
    run_dirs: Annotated[list[Path], typer.Argument(help="Recipe run directories (each holds results.json).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.", metavar="FILE")] = Path("accuracy_vs_macs.png"),
    overwrite: _OVERWRITE = False,
) -> None:
    """Accuracy against MACs for every checkpoint of one or more recipe runs, on one figure."""
    from prunecli.cli._common import emit_path
    from prunecli.outputs import claim_output
    from prunecli.recipes.report import plot_runs, read_rows

    found = [read_rows(d) for d in run_dirs]
    with claim_output(output, overwrite=overwrite):
        emit_path(plot_runs(run_dirs, output, runs=found))


def _stem(path: Path) -> str:
    """``run`` for ``run.metrics.jsonl``; the plain stem for any other name."""
    name = path.name
    return name[: -len(".metrics.jsonl")] if name.endswith(".metrics.jsonl") else path.stem
