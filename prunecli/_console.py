"""The one place that writes human-readable output: rich consoles for logs and for reports.

stdout holds what a command returns. A command that writes a checkpoint returns only its
path (or JSON), so that commands chain in the shell; its progress, tables and logs go to
`console()`, on stderr. A command that only reports (info, evaluate, list, recipe
list|check) returns the report itself: its tables go to `report_console()`, on stdout, so
that ``prunecli info x.pt > report.txt`` holds the report; its warnings and progress still
go to stderr. Under torchrun only rank 0 talks.
"""

from __future__ import annotations

import os
from functools import lru_cache


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@lru_cache(maxsize=1)
def console():
    """Progress, logs, warnings and the tables of checkpoint-writing commands: stderr."""
    return _console(stderr=True)


def report_console():
    """The report of a command that writes no checkpoint (info, evaluate, list): stdout."""
    return _console(stderr=False)


def _console(*, stderr: bool):
    from rich.console import Console

    # no file given: rich looks sys.stdout / sys.stderr up at each write, so a redirection
    # made after this call (pytest's capture, contextlib.redirect_stdout) is followed
    con = Console(stderr=stderr, highlight=False, quiet=not is_main_process())
    if not con.is_terminal:
        # logs, pipes, files and CI: one log line per line, tables not squeezed into 80 columns
        con.soft_wrap = True
        if "COLUMNS" not in os.environ:
            con.width = 160
    return con


def log(message: str) -> None:
    console().print(message)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/yellow] {message}")


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))}


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``): safe to show on a terminal.

    Strings from a checkpoint, a config file or stdin are data from whoever wrote them; an
    escape sequence among them must not reach the terminal (one can clear the screen or
    retitle the window).
    """
    return str(text).translate(_CONTROL)


def has_control(text: object) -> bool:
    """Whether ``text`` holds a control character (the ones `printable` escapes)."""
    return any(ord(c) in _CONTROL for c in str(text))


def markup_safe(text: object) -> str:
    """`printable`, and rich's ``[markup]`` escaped: for untrusted strings in rich output."""
    from rich.markup import escape

    return escape(printable(text))
