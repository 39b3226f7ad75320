"""Exceptions that the CLI turns into one line on stderr and an exit code.

Library code raises these for user mistakes (bad names, bad values, missing files,
incompatible checkpoints). Anything else is a bug and is reported as such.

Library code speaks of *config keys* (``rate``, ``batch_size``), the names of the typed
stage configs (prunecli.config); the command line speaks of *flags* (``--rate``,
``--batch-size``). An `OptionError` carries its keys as ``{key}`` placeholders, so the
CLI can name the flag and a ``--config`` file error can name the key.
"""

from __future__ import annotations

import re
from typing import Callable


class PruneCliError(Exception):
    """A user mistake or bad input: printed as one line, exit code 1.

    Exit codes: 0 success; 1 an input file, the data or the run failed (a damaged
    checkpoint, a full disk, a diverged training run); 2 the command line or a config file
    is wrong (unknown option, value out of range, conflicting options); 130 interrupted.
    """

    exit_code = 1


class UsageError(PruneCliError):
    """A malformed command line or config file: exit code 2."""

    exit_code = 2


class CheckpointError(PruneCliError):
    """A file that is not a loadable prunecli checkpoint, or does not fit the model."""


class OutputError(PruneCliError):
    """An output that cannot be written: disk full, read-only, locked by another run."""


_KEY = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class OptionError(PruneCliError):
    """A bad, missing or conflicting option value: exit code 2, like every usage error.

    ``message`` names config keys as ``{key}`` placeholders. ``str(error)`` shows the keys
    as they are (``rate 1.5: ...``); `render` lets the CLI show them as flags
    (``--rate 1.5: ...``).
    """

    exit_code = UsageError.exit_code

    def __init__(self, message: str):
        self.template = message
        super().__init__(self.render())

    @property
    def keys(self) -> list[str]:
        return _KEY.findall(self.template)

    def render(self, name: Callable[[str], str] = lambda key: key) -> str:
        return _KEY.sub(lambda m: name(m.group(1)), self.template)
