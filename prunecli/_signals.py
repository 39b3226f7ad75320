"""Ctrl-C that is never lost: a SIGINT is remembered as well as raised.

Python turns SIGINT into a KeyboardInterrupt wherever the program happens to be, and some
code swallows it: Torch-Pruning's graph tracing retries under a bare ``except:``, and an
import interrupted halfway fails later with an unrelated error. The CLI therefore installs
`handler`, which records the interrupt before raising, and checks `interrupted()` where it
matters: before a file replaces its predecessor (prunecli.outputs), on an error, and at
exit. A command interrupted at any point exits 130 saying what it wrote.
"""

from __future__ import annotations

import signal

_interrupted = False


def handler(signum, frame) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def interrupted() -> bool:
    return _interrupted


def reset() -> None:
    global _interrupted
    _interrupted = False


def check() -> None:
    """Raise KeyboardInterrupt again if one was swallowed since `reset`."""
    if _interrupted:
        raise KeyboardInterrupt


def install():
    """Use `handler` for SIGINT unless SIGINT is ignored (a background job); returns the previous one."""
    try:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            return previous
        signal.signal(signal.SIGINT, handler)
        return previous
    except ValueError:  # not the main thread: leave signals alone
        return None
