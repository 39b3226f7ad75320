"""``--help`` that reads like a manual page, and click's usage errors in words.

Typer's rich help puts flags, negations, types and help in six table columns: at 80
columns rich squeezes them until option names are cut ("--weight-decay,--…") and the
help wraps a few words a line, and the types read like Python (``<list[str]>``,
``<bool>``). `HelpCommand` and `HelpGroup` (the app's command classes) render instead:

* one row per option, ``-m, --method NAME`` or ``--amp / --no-amp`` on the left, never cut:
  a name wider than the left column gets its own line and its help starts below it;
* the value placeholders of the stage configs (``N``, ``R``, ``FILE``, ``PATTERN=RATE``:
  prunecli.config._base.OptionSpec.metavar), nothing for a switch;
* help wrapped to the terminal (at most 100 columns, for reading), with the default and
  the allowed range in words: ``[default: 0.9; 0 to 1]``;
* the command's description reflowed: one paragraph per blank-line-separated block.

`usage_error_message` rewrites click's value errors (``Value error, 'foo' is not one of
'models', ...``, ``Input should be a valid integer ...``) as one sentence naming the flag.

Nothing here imports torch: ``--help`` stays fast.
"""

from __future__ import annotations

import enum
from typing import Any, Optional

from typer.core import TyperArgument, TyperCommand, TyperGroup

MAX_WIDTH = 100  # wider help lines are hard to read; narrower terminals get their own width
PANEL_OPTIONS = "Options"  # options no stage config declares (--help, --version, hand-written ones)

STYLE_FLAG = "bold cyan"
STYLE_NEGATION = "bold magenta"
STYLE_METAVAR = "yellow"
STYLE_NOTE = "dim"


class HelpCommand(TyperCommand):
    """A command whose ``--help`` is `render_help`'s."""

    def format_help(self, ctx, formatter) -> None:
        render_help(self, ctx)


class HelpGroup(TyperGroup):
    """A command group whose ``--help`` is `render_help`'s."""

    def format_help(self, ctx, formatter) -> None:
        render_help(self, ctx)


def _console():
    from rich.console import Console

    con = Console(highlight=False, soft_wrap=False)
    con.width = min(con.width, MAX_WIDTH)
    return con


def render_help(command, ctx, console=None) -> None:
    """Print ``command``'s help on stdout: usage, description, one panel per option group, subcommands."""
    from rich.text import Text

    con = console or _console()
    width = con.width
    con.print(Text(" Usage: ", style="bold") + Text(usage_line(command, ctx), style="yellow"))
    con.print()
    for i, paragraph in enumerate(paragraphs(command.help or "")):
        for line in Text(paragraph, style="bold" if i == 0 else "").wrap(con, width - 2):
            con.print(Text(" ") + line)
        con.print()
    panels: dict[str, list[tuple[Any, Any]]] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if isinstance(param, TyperArgument):
            panel = "Arguments"
        else:
            panel = getattr(param, "rich_help_panel", None) or PANEL_OPTIONS
        panels.setdefault(panel, []).append(_row(param, ctx))
    if "Arguments" in panels:
        con.print(_panel("Arguments", panels.pop("Arguments"), con))
    if PANEL_OPTIONS in panels:
        con.print(_panel(PANEL_OPTIONS, panels.pop(PANEL_OPTIONS), con))
    for name, rows in panels.items():
        con.print(_panel(name, rows, con))
    if isinstance(command, TyperGroup):
        rows = []
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            first = paragraphs(sub.short_help or sub.help or "")
            rows.append((Text(name, style=STYLE_FLAG), Text(first[0] if first else "")))
        if rows:
            con.print(_panel("Commands", rows, con))


def usage_line(command, ctx) -> str:
    """``prunecli prune [OPTIONS] [CHECKPOINT]``: arguments in capitals, optional ones in brackets."""
    pieces = [ctx.command_path, "[OPTIONS]"]
    for param in command.get_params(ctx):
        if isinstance(param, TyperArgument):
            name = argument_name(param) + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
    if isinstance(command, TyperGroup):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def argument_name(param) -> str:
    return (param.metavar or param.name or "").upper()


def paragraphs(text: str) -> list[str]:
    """Blank-line-separated blocks of a docstring, each as one line (the terminal wraps it)."""
    import inspect

    blocks = inspect.cleandoc(text).split("\n\n")
    return [" ".join(line.strip() for line in b.splitlines() if line.strip()) for b in blocks if b.strip()]


def _row(param, ctx):
    """(left: flags and placeholder, right: help with default and range) of one parameter."""
    from rich.text import Text

    left = Text()
    if isinstance(param, TyperArgument):
        left.append(argument_name(param), style=STYLE_METAVAR)
    else:
        shorts = [o for o in param.opts if not o.startswith("--")]
        longs = [o for o in param.opts if o.startswith("--")]
        left.append(", ".join([*shorts, *longs]), style=STYLE_FLAG)
        if param.secondary_opts:
            left.append(" / ")
            left.append(", ".join(param.secondary_opts), style=STYLE_NEGATION)
        metavar = None if param.is_flag else (param.metavar or fallback_metavar(param))
        if metavar:
            left.append(" ")
            left.append(metavar, style=STYLE_METAVAR)
    text = " ".join((param.help or "").split())  # one paragraph: the panel wraps it
    values = choice_values(param)
    if isinstance(param, TyperArgument) and values and not all(v in text for v in values):
        text = f"{text} One of: {', '.join(values)}."
    right = Text(text)
    notes = [n for n in (_default_note(param), _range_note(param)) if n]
    note = Text(f"[{'; '.join(notes)}]", style=STYLE_NOTE) if notes else None
    return left, (right, note)


def choice_values(param) -> list[str]:
    """The values of a closed-choice parameter (an Enum or Literal annotation), else []."""
    desc = getattr(param, "type_descriptor", None)
    if not getattr(desc, "is_choice", False) or not getattr(desc, "choices", None):
        return []
    return [c.value if isinstance(c, enum.Enum) else str(c) for c in desc.choices]


def fallback_metavar(param) -> str:
    """A placeholder for a hand-written option that names none (the stage configs' options all do)."""
    import pathlib

    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    if choice_values(param):
        return "|".join(choice_values(param))
    if getattr(desc, "is_path", False) or annotation is pathlib.Path:
        return "FILE"
    return {int: "N", float: "X"}.get(annotation, "VALUE")


def _default_note(param) -> Optional[str]:
    if isinstance(param, TyperArgument) or not getattr(param, "show_default", True):
        return None
    default = param.default
    if callable(default) or default is None or default == () or default == []:
        return None
    if param.is_flag:
        if not param.secondary_opts:
            return None  # a plain switch is off unless given
        return f"default: {'on' if default else 'off'}"
    if isinstance(default, enum.Enum):
        default = default.value
    return f"default: {default}"


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range_note(param) -> Optional[str]:
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if hi is not None and hi >= 2**53:  # a 64-bit seed's bound says nothing a user needs
        hi = None
    if lo is None and hi is None:
        return None
    if lo is not None and hi is not None:
        return f"{_number(lo)} to {_number(hi)}"
    return f">= {_number(lo)}" if lo is not None else f"<= {_number(hi)}"


def _panel(title: str, rows, con):
    """A titled box of two-column rows that fits ``con.width``; no option name is ever cut."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    inner = con.width - 4  # border and one space of padding on each side
    longest = max((len(left) for left, _ in rows), default=0)
    left_w = min(longest, max(14, inner * 2 // 5))
    help_w = inner - left_w - 2
    stacked = help_w < 24  # too narrow for two columns: help below each name
    lines: list = []
    for left, right in rows:
        if stacked:
            lines.extend(left.wrap(con, inner))
            lines.extend(Text("    ") + line for line in _wrap(right, inner - 4, con))
            continue
        wrapped = _wrap(right, help_w, con)
        pad = Text(" " * (left_w + 2))
        if len(left) <= left_w:
            first = left.copy()
            first.pad_right(left_w - len(left) + 2)
            lines.append(first + (wrapped[0] if wrapped else Text()))
            lines.extend(pad + line for line in list(wrapped)[1:])
        else:  # its own line (folded only past the whole width), the help starts below
            lines.extend(left.wrap(con, inner))
            lines.extend(pad + line for line in wrapped)
    for line in lines:
        line.no_wrap = True
        line.rstrip()
    return Panel(Group(*lines), title=title, title_align="left", border_style="dim", padding=(0, 1), width=con.width)


def _wrap(help, width: int, con) -> list:
    """Lines of ``help`` (text, or (text, note)) at ``width``; a ``[default: ...]`` note is never split
    unless it is wider than a line by itself."""
    from rich.text import Text

    text, note = help if isinstance(help, tuple) else (help, None)
    lines = list(text.wrap(con, width)) if text else []
    if note is None:
        return lines
    if lines and len(lines[-1]) + 1 + len(note) <= width:
        lines[-1] = lines[-1] + Text(" ") + note
    else:
        lines.extend(note.wrap(con, width))
    return lines


def usage_error_message(error) -> Optional[str]:
    """One sentence for a bad or missing option or argument value (click's BadParameter,
    MissingParameter), or None to keep click's own message.

    ``--optimizer 'foo' is not one of sgd, adam, adamw``; ``--epochs 'abc': expected an
    integer``; ``--epochs -1: must be >= 0``; ``prunecli list: 'foo' is not one of models,
    ...``; ``prunecli list: missing WHAT (one of models, ...)``.
    """
    param = getattr(error, "param", None)
    kind_of_error = type(error).__name__
    if param is None or kind_of_error not in ("BadParameter", "MissingParameter"):
        return None
    ctx = getattr(error, "ctx", None)
    names = choice_values(param)
    if isinstance(param, TyperArgument):
        where = ctx.command_path if ctx is not None else argument_name(param)
        if kind_of_error == "MissingParameter":
            return f"{where}: missing {argument_name(param)}" + (f" (one of {', '.join(names)})" if names else "")
    else:
        longs = [o for o in param.opts if o.startswith("--")]
        flag = (longs or param.opts or [param.name])[0]
        if kind_of_error == "MissingParameter":
            return f"{flag} is required"
        where = flag
    details = _validation_details(error)
    value = details.get("input") if details else None
    if names:
        if value is None:
            return f"{where}: expected one of {', '.join(names)}"
        joint = ":" if isinstance(param, TyperArgument) else ""  # prunecli list: 'foo' ...; --scope 'foo' ...
        return f"{where}{joint} {value!r} is not one of {', '.join(names)}"
    quoted = "" if value is None else f" {value!r}"
    kind = (details or {}).get("type", "")
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{where}{quoted}: expected an integer"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{where}{quoted}: expected a number"
    bound = (details or {}).get("ctx") or {}
    for key, words in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if key in bound:
            limit = _number(bound[key]) if isinstance(bound[key], (int, float)) else bound[key]
            return f"{where}{'' if value is None else ' ' + str(value)}: must be {words} {limit}"
    if details and details.get("msg"):
        msg = str(details["msg"]).removeprefix("Value error, ")
        return f"{where}{quoted}: {msg[:1].lower()}{msg[1:]}"
    return None


def _validation_details(error) -> Optional[dict]:
    """The first error of the pydantic ValidationError behind a Typer BadParameter, if any."""
    cause = error.__cause__
    errors = getattr(cause, "errors", None)
    if not callable(errors):
        return None
    try:
        found = errors()
    except Exception:  # not a pydantic error after all
        return None
    return found[0] if found else None
