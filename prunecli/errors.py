"""Exceptions that the CLI turns into one line on stderr and an exit code.

Library code raises these for user mistakes (bad names, bad values, missing files,
incompatible checkpoints). Anything else is a bug and is reported as such.
"""


class PruneCliError(Exception):
    """A user mistake or bad input: printed as one line, exit code 1."""

    exit_code = 1


class UsageError(PruneCliError):
    """A malformed command line or config file: exit code 2."""

    exit_code = 2


class CheckpointError(PruneCliError):
    """A file that is not a loadable prunecli checkpoint, or does not fit the model."""
