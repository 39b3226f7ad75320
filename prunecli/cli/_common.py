"""Options shared by several commands, defined once, and the plumbing they need.

* ``--config FILE.yaml``: keys are option names (``batch-size`` or ``batch_size``);
  precedence is code default < YAML < command-line flag; unknown keys and wrong types
  are usage errors naming the key. Implemented as an eager option that fills click's
  ``default_map`` before the other options are read.
* An input checkpoint given as ``-`` is read as a path from stdin (shell chaining).
* `emit_path` prints the one line a checkpoint-writing command puts on stdout.
"""

from __future__ import annotations

import enum
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer._click.core import ParameterSource

from prunecli.errors import PruneCliError, UsageError

PANEL_DATA = "Data"
PANEL_MODEL = "Model"
PANEL_OPT = "Optimisation"
PANEL_RUN = "Runtime"
PANEL_OUT = "Output"


# ---------------------------------------------------------------------------- --config


def _config_callback(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]):
    if value is None:
        return None
    import yaml

    if not value.is_file():
        raise UsageError(f"--config {value}: no such file")
    try:
        data = yaml.safe_load(value.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UsageError(f"--config {value}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {value}: expected a mapping of option names to values, got {type(data).__name__}")
    options = {p.name: p for p in ctx.command.params if isinstance(p, typer.core.TyperOption) and p.name != "config"}
    defaults: dict[str, Any] = {}
    for key, raw in data.items():
        name = str(key).replace("-", "_")
        if name not in options:
            valid = ", ".join(sorted(n.replace("_", "-") for n in options))
            raise UsageError(f"--config {value}: unknown key {key!r} for `{ctx.command_path}`; valid keys: {valid}")
        defaults[name] = _check_yaml_value(value, str(key), raw, options[name])
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _annotation(param) -> Any:
    desc = getattr(param, "type_descriptor", None)
    return getattr(desc, "annotation", None)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _check_yaml_value(file: Path, key: str, raw: Any, param) -> Any:
    """Type-check one YAML value strictly (YAML already typed it); return it for default_map."""
    if raw is None:
        return None
    tp = _unwrap_optional(_annotation(param))
    if tp is None:
        return raw

    def bad(expected: str) -> UsageError:
        return UsageError(f"--config {file}: key {key!r} expects {expected}, got {raw!r}")

    origin = typing.get_origin(tp)
    if origin in (list, typing.List):
        (item,) = typing.get_args(tp) or (str,)
        if isinstance(raw, dict) and item is str:  # model-arg: {width: 2} -> ["width=2"]
            raw = [f"{k}={v}" for k, v in raw.items()]
        items = raw if isinstance(raw, list) else [raw]
        return [_check_scalar(item, v, lambda: bad(f"a list of {_type_name(item)}")) for v in items]
    if tp is str and isinstance(raw, list) and all(isinstance(v, (int, float, str)) for v in raw):
        return ",".join(str(v) for v in raw)  # milestones: [80, 120] -> "80,120"
    return _check_scalar(tp, raw, lambda: bad(_type_name(tp)))


def _check_scalar(tp: Any, raw: Any, bad) -> Any:
    if tp is bool:
        if not isinstance(raw, bool):
            raise bad()
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise bad()
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise bad()
        return float(raw)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if raw not in choices:
            raise bad()
        return raw
    if tp in (str, Path):
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)  # a layer number as a pattern, a numeric folder name
        if not isinstance(raw, str):
            raise bad()
        return raw
    return raw


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(m.value) for m in tp)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}.get(tp, str(tp))


ConfigOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        help="YAML file of options (keys are option names); flags given here override it.",
        is_eager=True,
        callback=_config_callback,
        rich_help_panel=PANEL_RUN,
    ),
]


def explicit_options(ctx: typer.Context) -> dict[str, Any]:
    """The options the user set (flag or --config), by name: not the defaults."""
    given = (ParameterSource.COMMANDLINE, ParameterSource.DEFAULT_MAP, ParameterSource.ENVIRONMENT)
    return {k: v for k, v in ctx.params.items() if ctx.get_parameter_source(k) in given and k != "config"}


def resolved_options(ctx: typer.Context) -> dict[str, Any]:
    """All options as the command sees them (for lineage and the config written next to outputs)."""
    out = {}
    for k, v in ctx.params.items():
        if k == "config":
            continue
        if isinstance(v, enum.Enum):
            v = v.value
        elif isinstance(v, Path):
            v = str(v)
        out[k.replace("_", "-")] = v
    return out


# ---------------------------------------------------------------------------- shared options

DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N (auto: this rank's GPU if any).", rich_help_panel=PANEL_RUN)
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice; on CPU a run is reproducible.", rich_help_panel=PANEL_RUN)]
WorkersOpt = Annotated[
    int, typer.Option("--workers", min=0, help="DataLoader workers for image-folder datasets.", rich_help_panel=PANEL_RUN)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of tables.", rich_help_panel=PANEL_OUT)]
OutputOpt = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", help="Checkpoint to write (its path is the only thing printed on stdout).", rich_help_panel=PANEL_OUT),
]
DatasetOpt = Annotated[
    Optional[str], typer.Option("--dataset", help="Dataset name (prunecli list datasets).", rich_help_panel=PANEL_DATA)
]
DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data", help="Dataset root folder (CIFAR/MNIST in torchvision's layout; train/ and val/ for image folders).", rich_help_panel=PANEL_DATA),
]
DownloadOpt = Annotated[
    bool, typer.Option("--download", help="Download CIFAR/MNIST into --data when online.", rich_help_panel=PANEL_DATA)
]
ImageSizeOpt = Annotated[
    Optional[int], typer.Option("--image-size", min=1, help="Resize images to this size (default: the dataset's).", rich_help_panel=PANEL_DATA)
]
NumClassesOpt = Annotated[
    Optional[int], typer.Option("--num-classes", min=2, help="Classes of the synthetic dataset.", rich_help_panel=PANEL_DATA)
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size.", rich_help_panel=PANEL_RUN)]


# ---------------------------------------------------------------------------- paths and output


def input_checkpoint(path: Path | str) -> Path:
    """A checkpoint argument; ``-`` reads the path from stdin (the previous command's stdout)."""
    if str(path) != "-":
        return Path(path)
    line = sys.stdin.readline().strip()
    if not line:
        raise PruneCliError("checkpoint '-': expected a checkpoint path on stdin, got nothing (did the previous command fail?)")
    return Path(line)


def output_next_to(source: Path, tag: str, output: Optional[Path]) -> Path:
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


def parse_model_args(items: Optional[list[str]]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as YAML scalars (numbers, booleans, strings, lists)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--model-arg {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def parse_int_list(text: Optional[str], option: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated integers, e.g. 80,120") from None
