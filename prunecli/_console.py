"""The one place that writes human-readable output: rich, on stderr.

stdout is reserved for what a command returns (a checkpoint path, or JSON), so that
commands chain in the shell. Under torchrun only rank 0 talks.
"""

from __future__ import annotations

import os
from functools import lru_cache


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@lru_cache(maxsize=1)
def console():
    from rich.console import Console

    con = Console(stderr=True, highlight=False, quiet=not is_main_process())
    if not con.is_terminal:
        # logs, pipes and CI: one log line per line, tables not squeezed into 80 columns
        con.soft_wrap = True
        if "COLUMNS" not in os.environ:
            con.width = 160
    return con


def log(message: str) -> None:
    console().print(message)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/yellow] {message}")
