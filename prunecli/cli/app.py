"""The prunecli application: wires the commands and maps errors to one line + exit code."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from prunecli import __version__
from prunecli.cli._help import HelpCommand, HelpGroup
from prunecli.cli.compress import compress
from prunecli.cli.evaluate import evaluate
from prunecli.cli.export import export
from prunecli.cli.finetune import finetune
from prunecli.cli.info import info
from prunecli.cli.list_ import list_
from prunecli.cli.profile import profile
from prunecli.cli.prune import prune
from prunecli.cli.plot import plot_app
from prunecli.cli.recipe import recipe_app
from prunecli.cli.sensitivity import sensitivity
from prunecli.cli.train import train

app = typer.Typer(
    name="prunecli",
    cls=HelpGroup,  # help that fits 80 columns (prunecli.cli._help)
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"prunecli {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_version)
    ] = False,
) -> None:
    """Prune PyTorch CNNs: train -> prune -> compress -> finetune -> evaluate, one checkpoint per stage.

    Commands that write a checkpoint print only its path on stdout, and read '-' as a
    path from stdin, so they chain: prunecli finetune "$(prunecli train --epochs 5)".
    Set PRUNECLI_DEBUG=1 to see tracebacks.
    """


app.command("train", cls=HelpCommand)(train)
app.command("prune", cls=HelpCommand)(prune)
app.command("compress", cls=HelpCommand)(compress)
app.command("finetune", cls=HelpCommand)(finetune)
app.command("evaluate", cls=HelpCommand)(evaluate)
app.command("export", cls=HelpCommand)(export)
app.command("sensitivity", cls=HelpCommand)(sensitivity)
app.command("profile", cls=HelpCommand)(profile)
app.command("info", cls=HelpCommand)(info)
app.command("list", cls=HelpCommand)(list_)
app.add_typer(recipe_app, name="recipe")
app.add_typer(plot_app, name="plot")


def _error(message: str, code: int) -> "NoReturn":  # noqa: F821
    from prunecli._console import printable

    # one line, whatever a file or stdin put into the message (paths, names, values)
    sys.stderr.write(f"prunecli: error: {printable(message)}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _interrupted() -> "NoReturn":  # noqa: F821
    from prunecli.outputs import written

    files = written()
    done = f"wrote {', '.join(map(str, files))}" if files else "nothing written"
    _error(f"interrupted; {done}", 130)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point. Exit codes: 0 ok, 1 error, 2 usage error, 130 interrupted."""
    import signal

    from prunecli import _signals
    from prunecli.outputs import forget_written

    debug = os.environ.get("PRUNECLI_DEBUG", "") not in ("", "0")
    command = typer.main.get_command(app)
    forget_written()
    _signals.reset()
    previous = _signals.install()
    try:
        _run(command, argv, debug)
    finally:
        if argv is None:  # the process is ending: a Ctrl-C from here on would only kill it without a word
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        elif previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(command, argv: Optional[list[str]], debug: bool) -> None:
    from typer.exceptions import TyperException

    from prunecli import _signals
    from prunecli.cli._help import usage_error_message
    from prunecli.config import flag_for
    from prunecli.errors import OptionError, PruneCliError

    try:
        rv = command.main(args=argv, prog_name="prunecli", standalone_mode=False)
    except typer.Exit as e:
        if e.exit_code == 130 and isinstance(e.__cause__, KeyboardInterrupt):  # typer's own Ctrl-C handling
            _interrupted()
        raise SystemExit(e.exit_code) from None
    except TyperException as e:  # click's errors: usage (exit 2) and the like
        if type(e).__name__ == "NoArgsIsHelpError":  # `prunecli` or `prunecli list` alone: the help text
            sys.stderr.write(e.format_message() + "\n")
            raise SystemExit(2) from None
        if debug:
            raise
        code = getattr(e, "exit_code", 1) or 1
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if code == 2 and ctx is not None else ""
        words = usage_error_message(e)  # a bad or missing value, said in words
        _error(f"{words or e.format_message()}{where}", code)
    except typer.Abort:
        _interrupted()
    except OptionError as e:  # library errors name config keys; a user of the CLI knows flags
        if debug:
            raise
        _error(e.render(flag_for), e.exit_code)
    except PruneCliError as e:
        if _signals.interrupted() and e.exit_code != 130:  # an error after a swallowed Ctrl-C: the Ctrl-C is the cause
            _interrupted()
        if debug:
            raise
        _error(str(e), e.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except BrokenPipeError:
        # stdout closed early (e.g. piped into head): not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    except Exception as e:
        if _signals.interrupted():  # a Ctrl-C that surfaced as another error (e.g. mid-import)
            _interrupted()
        if debug:
            raise
        detail = str(e).splitlines()[0] if str(e) else ""
        _error(f"internal error: {type(e).__name__}: {detail} (a bug in prunecli? rerun with PRUNECLI_DEBUG=1 for the traceback)", 1)
    if rv == 130 or _signals.interrupted():  # typer's silent 130, or a Ctrl-C some library swallowed
        _interrupted()
    raise SystemExit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
