"""What several commands need besides their options: checkpoint arguments and stdout.

* An input checkpoint given as ``-`` is read as a path from stdin (shell chaining).
* `emit_path` prints the one line a checkpoint-writing command puts on stdout;
  `emit_json` the one JSON object of ``--json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from prunecli._console import has_control
from prunecli.errors import PruneCliError


def input_checkpoint(path: Path | str) -> Path:
    """A checkpoint argument; ``-`` reads the path from stdin (the previous command's stdout)."""
    if str(path) != "-":
        return Path(path)
    try:
        line = sys.stdin.readline(4097).strip()  # a path is at most 4,096 bytes
    except (UnicodeDecodeError, ValueError):
        line = "\x00"
    if not line:
        raise PruneCliError("checkpoint '-': expected a checkpoint path on stdin, got nothing (did the previous command fail?)")
    if len(line) > 4096 or has_control(line):
        # never echo it: binary stdin would reach the terminal through the message
        raise PruneCliError("checkpoint '-': stdin does not hold a checkpoint path (binary data or control characters)")
    return Path(line)


def output_next_to(source: Path, tag: str, output: Optional[str | Path]) -> Path:
    """``-o`` if given, else ``<source stem>.<tag>.pt`` beside the input; never the input itself."""
    out = Path(output) if output is not None else source.with_name(f"{source.stem}.{tag}.pt")
    if out.resolve() == source.resolve():
        raise PruneCliError(f"--output {out} is the input checkpoint; write the result elsewhere")
    return out


def emit_path(path: Path) -> None:
    from prunecli._console import is_main_process

    if not is_main_process():  # under torchrun one path, from rank 0
        return
    sys.stdout.write(f"{path}\n")
    sys.stdout.flush()


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=None, default=str) + "\n")
    sys.stdout.flush()
