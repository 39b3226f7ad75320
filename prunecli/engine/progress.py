"""Progress display on stderr: a live rich bar on a terminal, one line per epoch (or per layer swept) otherwise."""

from __future__ import annotations

import contextlib

from prunecli._console import console


class _Bar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, images: int) -> None:
        self.progress.advance(self.task, images)


@contextlib.contextmanager
def epoch_bar(description: str, total_images: int):
    """Yields an object with ``advance(images)`` or None when stderr is not a terminal."""
    con = console()
    if not con.is_terminal or con.quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    class _ImagesPerSecond(TextColumn):
        def __init__(self):
            super().__init__("")

        def render(self, task):
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} img/s" if speed else "", style="cyan")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _ImagesPerSecond(),
        TimeRemainingColumn(),
        console=con,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total_images)
        yield _Bar(progress, task)


@contextlib.contextmanager
def step_bar(description: str, total_steps: int, unit: str = "steps"):
    """A bar over ``total_steps`` steps with elapsed time and ETA; yields ``advance(steps)`` or None off a terminal.

    For loops whose steps are whole evaluations (a sensitivity sweep), where images per
    second would say less than how long the rest takes.
    """
    con = console()
    if not con.is_terminal or con.quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=con,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total_steps)

        class _Steps:
            def advance(self, steps: int = 1, description: str | None = None) -> None:
                """``description``: what the next step works on (the layer being swept)."""
                progress.update(task, advance=steps, **({"description": description} if description is not None else {}))

        yield _Steps()
