"""Each command's options, generated from its typed stage config (prunecli.config).

`options_from(Config)` gives a command function one Typer option per config field (flag,
type, default, choices, bounds, help and panel all read from the field) plus
``--config FILE.yaml``. The function body receives the parsed values and turns them into
the config with `config_from`, which applies the precedence

    field default  <  --config file  <  flags given on the command line

(a flag left at its default does not override the file). The file is checked by the same
config class before the command runs: unknown keys and wrong types are usage errors that
name the key.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from prunecli.config._base import PANEL_BLOCKS, PANEL_DATA, PANEL_MODEL, PANEL_OPT, PANEL_OUT, PANEL_RUN, PANEL_WHAT, PANEL_WHEN, PANEL_WHERE, Kind, OptionSpec, StageConfig, option_specs
from prunecli.errors import OptionError, UsageError

_FILE_VALUES = "prunecli.config-file"  # ctx.meta key: the --config file's checked values
_PANEL_ORDER = (PANEL_WHAT, PANEL_WHERE, PANEL_WHEN, PANEL_BLOCKS, PANEL_MODEL, PANEL_DATA, PANEL_OPT, PANEL_RUN, PANEL_OUT)

F = TypeVar("F", bound=Callable[..., Any])


def _annotation(spec: OptionSpec) -> Any:
    """The type Typer parses the option as (its command-line form)."""
    if spec.kind is Kind.ENUM:
        base: Any = spec.choices
    elif spec.kind in (Kind.INTS, Kind.FLOATS):
        return Optional[str]  # "80,120"
    elif spec.kind in (Kind.STRS, Kind.KEY_VALUES, Kind.PATTERN_RATES):
        return Optional[list[str]]  # repeated flag
    elif spec.opt.path:
        base = Path
    else:
        base = {Kind.BOOL: bool, Kind.INT: int, Kind.FLOAT: float, Kind.STR: str}[spec.kind]
    return Optional[base] if spec.optional else base


def _flags(spec: OptionSpec) -> tuple[str, ...]:
    if spec.kind is Kind.BOOL and spec.opt.negatable:
        return (f"--{spec.key}/--no-{spec.key}", *spec.opt.flags)
    return spec.flags


def _default(spec: OptionSpec) -> Any:
    if spec.kind in (Kind.INTS, Kind.FLOATS, Kind.STRS, Kind.KEY_VALUES, Kind.PATTERN_RATES):
        return None  # empty
    return spec.default


def _help(spec: OptionSpec) -> str:
    """The option's help; a closed choice whose placeholder does not show its values lists them."""
    text = spec.opt.help
    if spec.kind is Kind.ENUM and spec.metavar != "|".join(str(m.value) for m in spec.choices):
        values = [str(m.value) for m in spec.choices]
        if not all(v in text for v in values):
            text = f"{text} One of: {', '.join(values)}."
    if spec.kind in (Kind.STRS, Kind.KEY_VALUES, Kind.PATTERN_RATES) and "repeat" not in text:
        text = f"{text} (repeatable)"
    return text


def _parameter(spec: OptionSpec) -> inspect.Parameter:
    info = typer.Option(*_flags(spec), help=_help(spec), rich_help_panel=spec.opt.panel, min=spec.opt.min, max=spec.opt.max, metavar=spec.metavar)
    return inspect.Parameter(spec.name, inspect.Parameter.KEYWORD_ONLY, default=_default(spec), annotation=Annotated[_annotation(spec), info])


def _config_callback(config_cls: type[StageConfig]):
    def callback(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]):
        if value is None:
            return None
        from prunecli.config.yaml_file import read_yaml_mapping

        data = read_yaml_mapping(value, f"--config {value}")
        try:
            ctx.meta[_FILE_VALUES] = config_cls.check_options(data)
        except OptionError as e:
            keys = {s.name: s.key for s in option_specs(config_cls)}
            raise UsageError(f"--config {value}: {e.render(lambda k: f'key {keys.get(k, k)!r}')}") from e
        return value

    return callback


def options_from(config_cls: type[StageConfig]) -> Callable[[F], F]:
    """Give a command function ``config_cls``'s options and ``--config`` (see the module docstring).

    The function declares its context and arguments and takes the options as ``**options``.
    """

    def wrap(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        specs = sorted(option_specs(config_cls), key=lambda s: _PANEL_ORDER.index(s.opt.panel))
        config = inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Optional[Path],
                typer.Option(
                    "--config",
                    help="YAML file of options (keys are option names); flags given here override it.",
                    is_eager=True,
                    callback=_config_callback(config_cls),
                    rich_help_panel=PANEL_RUN,
                ),
            ],
        )
        fn.__signature__ = sig.replace(parameters=[*own, *(_parameter(s) for s in specs), config])  # type: ignore[attr-defined]
        return fn

    return wrap


def given_options(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options the user set: the --config file's, then flags given on the command line."""
    flags = {k: v for k, v in values.items() if k != "config" and ctx.get_parameter_source(k).name in ("COMMANDLINE", "ENVIRONMENT")}
    return {**ctx.meta.get(_FILE_VALUES, {}), **flags}


def config_from(ctx: typer.Context, config_cls: type[StageConfig], values: dict[str, Any]):
    """The command's typed config: defaults < --config file < flags given."""
    return config_cls.from_options(given_options(ctx, values))
