"""Progress display on stderr: a live rich bar on a terminal, one line per epoch (or per layer swept) otherwise.

Every step that can take more than a couple of seconds runs under one of these bars:
training epochs (`epoch_bar`), sweeps (`step_bar`), gradient passes over calibration
batches (`batches_bar`: taylor, hessian), reconstruction layer by layer, evaluation and
latency timing. `shows_progress` is the one decision: a bar only on a terminal, so logs,
pipes and CI get no control sequences.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

from prunecli._console import console


_LIVE = [0]  # bars open now: rich draws one live display at a time, so a bar inside another is not drawn


def shows_progress(con: Any = None) -> bool:
    """Whether a live bar is drawn: stderr is a terminal, output is not silenced (torchrun ranks > 0),
    and no other bar is being drawn (a step inside a step: the outer bar already shows progress)."""
    con = con if con is not None else console()
    return bool(con.is_terminal and not con.quiet and not _LIVE[0])


@contextlib.contextmanager
def _live():
    _LIVE[0] += 1
    try:
        yield
    finally:
        _LIVE[0] -= 1


class _Bar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, images: int) -> None:
        self.progress.advance(self.task, images)


@contextlib.contextmanager
def epoch_bar(description: str, total_images: int):
    """Yields an object with ``advance(images)`` or None when stderr is not a terminal."""
    con = console()
    if not shows_progress(con):
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

    with _live(), Progress(
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
def step_bar(description: str, total_steps: Optional[float], unit: str = "steps"):
    """A bar over ``total_steps`` steps with elapsed time and ETA; yields ``advance(steps)`` or None off a terminal.

    For loops whose steps are whole evaluations (a sensitivity sweep), where images per
    second would say less than how long the rest takes. ``total_steps`` None: a count
    nobody knows in advance (the bar pulses, the elapsed time still runs).
    """
    con = console()
    if not shows_progress(con):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with _live(), Progress(
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


def batches_bar(description: str, batches: Any):
    """`step_bar` over the batches of ``batches`` (their ``len`` when they have one); advance by batches, or by fractions of one."""
    try:
        total: Optional[int] = len(batches)
    except TypeError:  # a generator: no length
        total = None
    return step_bar(description, total, unit="batches")
