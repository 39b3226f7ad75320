"""Progress display on stderr: a live rich bar on a terminal, one line per epoch otherwise."""

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
