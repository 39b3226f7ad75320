"""The recipe file: a paper setting as YAML, validated before anything runs.

A recipe has four parts (DESIGN.md, "Recipes"):

* a **header**: ``setting`` (one line: model, data, method, rate, start point), ``paper``
  (``title``, ``authors``, ``venue``, ``arxiv`` or ``doi``), ``source`` (where the expected
  numbers are printed: "Table 1"), ``hardware`` (what the authors used, and for how long);
* ``variables`` with defaults, used in stage options as ``${name}`` and overridden with
  ``--set name=value``;
* ``stages``, in order: ``name``, ``command`` (train, prune, compress, finetune,
  evaluate), ``input`` (an earlier stage; default: the previous one that writes a
  checkpoint; evaluate takes ``inputs``, default all of them) and ``options``, which are
  exactly the command's option names and are checked by the command's own stage config.
  A train stage may say ``from: ${checkpoint}``: when that variable is set (``--set
  checkpoint=base.pt``) the run starts from that file instead of training, which must be
  the model the stage would train;
* ``expected``: numbers to compare with, each ``{metric, value, tolerance}`` and
  optionally ``stage`` (default: the last checkpoint), ``relative-to`` (the stage a
  reduction is measured from; default: the first) and ``note``. MACs, params and their
  reductions depend only on the architecture: ``recipe check`` computes them on randomly
  initialised weights, without training.

Every error is one `RecipeError` line naming the file, the stage and the key. Nothing
here imports torch.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from prunecli.config import STAGE_CONFIGS, StageConfig, option_specs
from prunecli.config._base import key_values
from prunecli.errors import OptionError, PruneCliError, UsageError

# commands a stage may run; later issues add theirs here
RECIPE_COMMANDS = ("train", "prune", "compress", "finetune", "evaluate")
WRITES_CHECKPOINT = {"train", "prune", "compress", "finetune"}
# options the runner sets itself: where each stage writes, resumes and overwrites
RUNNER_OPTIONS = {"output", "resume", "overwrite", "config", "arch_from"}  # arch-from: a train stage's input

# conv_linear_params: Li et al.'s count (conv and linear layers, no BatchNorm)
ARCHITECTURE_METRICS = ("macs", "params", "conv_linear_params", "macs_reduction", "params_reduction", "conv_linear_params_reduction")
METRICS = ("top1", "top5", *ARCHITECTURE_METRICS)
METRIC_UNITS = {
    "top1": "%",
    "top5": "%",
    "macs": "MACs",
    "params": "params",
    "macs_reduction": "% of MACs removed",
    "params_reduction": "% of params removed",
    "conv_linear_params": "conv+linear params",
    "conv_linear_params_reduction": "% of conv+linear params removed",
}

_TOP_KEYS = {"name", "setting", "paper", "source", "hardware", "notes", "variables", "stages", "expected"}
_PAPER_KEYS = {"title", "authors", "venue", "arxiv", "doi", "url"}
_STAGE_KEYS = {"name", "command", "input", "inputs", "options", "note", "from"}
_EXPECT_KEYS = {"metric", "value", "tolerance", "stage", "relative-to", "note"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class RecipeError(PruneCliError):
    """A recipe that cannot run as written: one line naming file, stage and key; exit 1."""


@dataclass(frozen=True)
class Expectation:
    metric: str
    value: float
    tolerance: float  # absolute, in the metric's unit (percentage points for top-1 and reductions)
    stage: str  # whose checkpoint is measured
    relative_to: str  # the stage a reduction is measured from
    note: str = ""

    @property
    def architecture_only(self) -> bool:
        return self.metric in ARCHITECTURE_METRICS

    def within(self, measured: Optional[float]) -> Optional[bool]:
        return None if measured is None else abs(measured - self.value) <= self.tolerance


@dataclass(frozen=True)
class Stage:
    name: str
    command: str
    inputs: tuple[str, ...]  # earlier stages whose checkpoints this one reads
    options: dict[str, Any]  # option key -> value, variables substituted, checked by the command's config
    note: str = ""
    source: Optional[str] = None  # train stages: an existing checkpoint to start from instead of training

    @property
    def writes_checkpoint(self) -> bool:
        return self.command in WRITES_CHECKPOINT

    def config(self, **changes: Any) -> StageConfig:
        """The command's typed config of these options (with ``changes`` as option keys).

        A train stage with an input is a scratch baseline of that input's architecture:
        its config has ``arch-from`` (the input's checkpoint, ``<input>.pt`` here).
        """
        return STAGE_CONFIGS[self.command].from_options({**self.options, **_arch_from(self.command, self.inputs), **changes})


@dataclass(frozen=True)
class Recipe:
    path: Path
    name: str
    setting: str
    paper: dict[str, str]
    source: str
    hardware: str
    notes: str
    variables: dict[str, Any]  # resolved: defaults with --set applied
    stages: tuple[Stage, ...]
    expected: tuple[Expectation, ...]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    @property
    def checkpoint_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.writes_checkpoint]


def _where(path: Path, stage: Optional[str] = None, key: Optional[str] = None) -> str:
    parts = [str(path)]
    if stage is not None:
        parts.append(f"stage {stage!r}")
    if key is not None:
        parts.append(f"key {key!r}")
    return ": ".join(parts)


def _require_mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _check_keys(mapping: dict, allowed: set[str], where: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise RecipeError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items; values read as YAML scalars (numbers, booleans, null, strings)."""
    try:
        return key_values(items)
    except ValueError as e:
        raise UsageError(f"--set {e}") from None


def substitute(value: Any, variables: dict[str, Any], where: str) -> Any:
    """``${name}`` replaced: a whole-string reference keeps the variable's type."""
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole:
            name = whole.group(1)
            if name not in variables:
                raise RecipeError(f"{where}: unknown variable ${{{name}}}; variables: {', '.join(sorted(variables)) or 'none'}")
            return copy.deepcopy(variables[name])

        def one(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise RecipeError(f"{where}: unknown variable ${{{m.group(1)}}}; variables: {', '.join(sorted(variables)) or 'none'}")
            return str(variables[m.group(1)])

        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables, where) for k, v in value.items()}
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, str):  # PyYAML reads 1.25e8 (no sign in the exponent) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise RecipeError(f"{where}: expected a number, got {value!r}")
    return float(value)


def parse_recipe(data: Any, path: Path, sets: Optional[dict[str, Any]] = None) -> Recipe:
    """Validate ``data`` (the loaded YAML) and resolve variables; `RecipeError` on the first problem."""
    data = _require_mapping(data, str(path))
    _check_keys(data, _TOP_KEYS, str(path))
    for key in ("setting", "stages"):
        if key not in data:
            raise RecipeError(f"{_where(path, key=key)}: required")
    setting = data["setting"]
    if not isinstance(setting, str) or not setting.strip():
        raise RecipeError(f"{_where(path, key='setting')}: expected one line describing the setting")

    paper = data.get("paper") or {}
    paper = _require_mapping(paper, _where(path, key="paper"))
    _check_keys(paper, _PAPER_KEYS, _where(path, key="paper"))
    if paper:
        if not paper.get("title"):
            raise RecipeError(f"{_where(path, key='paper')}: needs a title")
        if not (paper.get("arxiv") or paper.get("doi")):
            raise RecipeError(f"{_where(path, key='paper')}: needs an arxiv id or a doi")
        if not data.get("source"):
            raise RecipeError(f"{_where(path, key='source')}: a recipe from a paper says where its numbers are (e.g. 'Table 1')")
    paper = {k: str(v) for k, v in paper.items()}

    variables = _require_mapping(data.get("variables") or {}, _where(path, key="variables"))
    for name, value in variables.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise RecipeError(f"{_where(path, key='variables')}: {name!r} is not a variable name")
        if isinstance(value, (dict, list)):
            raise RecipeError(f"{_where(path, key=name)}: a variable's default is a single value")
    variables = dict(variables)
    for name, value in (sets or {}).items():
        if name not in variables:
            raise UsageError(f"--set {name}: {path} has no variable {name!r}; its variables: {', '.join(sorted(variables)) or 'none'}")
        variables[name] = value

    raw_stages = data["stages"]
    if not isinstance(raw_stages, list) or not raw_stages:
        raise RecipeError(f"{_where(path, key='stages')}: expected a list of stages")
    stages: list[Stage] = []
    for i, raw in enumerate(raw_stages, start=1):
        raw = _require_mapping(raw, _where(path, key=f"stages[{i}]"))
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RecipeError(f"{_where(path, key=f'stages[{i}].name')}: a stage needs a name of lower-case letters, digits, - and _")
        _check_keys(raw, _STAGE_KEYS, _where(path, name))
        if any(s.name == name for s in stages):
            raise RecipeError(f"{_where(path, name)}: a second stage of that name")
        stages.append(_stage(raw, name, stages, variables, path))

    last_checkpoint = next((s.name for s in reversed(stages) if s.writes_checkpoint), None)
    first_checkpoint = next((s.name for s in stages if s.writes_checkpoint), None)
    expected = []
    raw_expected = data.get("expected") or []
    if not isinstance(raw_expected, list):
        raise RecipeError(f"{_where(path, key='expected')}: expected a list of {{metric, value, tolerance}} entries")
    for i, raw in enumerate(raw_expected, start=1):
        where = _where(path, key=f"expected[{i}]")
        raw = _require_mapping(raw, where)
        _check_keys(raw, _EXPECT_KEYS, where)
        metric = raw.get("metric")
        if metric not in METRICS:
            raise RecipeError(f"{where}: metric {metric!r}; valid: {', '.join(METRICS)}")
        if "value" not in raw:
            raise RecipeError(f"{_where(path, key=f'expected[{i}].value')}: required")
        if "tolerance" not in raw:
            raise RecipeError(f"{_where(path, key=f'expected[{i}].tolerance')}: an expectation needs a tolerance ({METRIC_UNITS[metric]})")
        stage = raw.get("stage", last_checkpoint)
        relative = raw.get("relative-to", first_checkpoint)
        for key, ref in (("stage", stage), ("relative-to", relative)):
            if ref is None or not any(s.name == ref and s.writes_checkpoint for s in stages):
                raise RecipeError(f"{_where(path, key=f'expected[{i}].{key}')}: {ref!r} is not a stage that writes a checkpoint")
        tolerance = _number(raw["tolerance"], _where(path, key=f"expected[{i}].tolerance"))
        if not 0 <= tolerance < float("inf"):
            raise RecipeError(f"{_where(path, key=f'expected[{i}].tolerance')}: must be a finite number >= 0")
        expected.append(
            Expectation(
                metric=metric,
                value=_number(raw["value"], _where(path, key=f"expected[{i}].value")),
                tolerance=tolerance,
                stage=stage,
                relative_to=relative,
                note=str(raw.get("note") or ""),
            )
        )
    name = data.get("name") or path.stem
    return Recipe(
        path=path,
        name=str(name),
        setting=setting.strip(),
        paper=paper,
        source=str(data.get("source") or ""),
        hardware=str(data.get("hardware") or ""),
        notes=str(data.get("notes") or ""),
        variables=variables,
        stages=tuple(stages),
        expected=tuple(expected),
        raw=data,
    )


def _arch_from(command: str, inputs: tuple[str, ...]) -> dict[str, str]:
    """The ``arch-from`` a train stage with an input has (the runner passes the real path)."""
    return {"arch-from": f"{inputs[0]}.pt"} if command == "train" and inputs else {}


def _stage(raw: dict, name: str, earlier: list[Stage], variables: dict[str, Any], path: Path) -> Stage:
    command = raw.get("command")
    if command not in RECIPE_COMMANDS:
        raise RecipeError(f"{_where(path, name, 'command')}: {command!r}; valid: {', '.join(RECIPE_COMMANDS)}")
    checkpoints = [s.name for s in earlier if s.writes_checkpoint]
    if "input" in raw and "inputs" in raw:
        raise RecipeError(f"{_where(path, name, 'inputs')}: give input or inputs, not both")
    if command == "train":
        if "inputs" in raw:
            raise RecipeError(f"{_where(path, name, 'inputs')}: train reads at most one checkpoint (input: the architecture of a scratch baseline)")
        # input: an earlier stage whose compressed architecture this stage trains from scratch (--arch-from)
        inputs: tuple[str, ...] = (raw["input"],) if "input" in raw else ()
    elif command == "evaluate":
        given = raw.get("inputs", [raw["input"]] if "input" in raw else checkpoints)
        if not isinstance(given, list) or not given:
            raise RecipeError(f"{_where(path, name, 'inputs')}: expected a list of earlier stages")
        inputs = tuple(given)
    else:
        if "inputs" in raw:
            raise RecipeError(f"{_where(path, name, 'inputs')}: {command} reads one checkpoint: use input")
        default = checkpoints[-1] if checkpoints else None
        inputs = (raw.get("input", default),)
    for ref in inputs:
        if ref not in checkpoints:
            what = "no earlier stage writes a checkpoint" if ref is None else f"{ref!r} is not an earlier stage that writes a checkpoint"
            raise RecipeError(f"{_where(path, name, 'input')}: {what}")

    options = raw.get("options") or {}
    options = _require_mapping(options, _where(path, name, "options"))
    config_cls = STAGE_CONFIGS[command]
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        where = _where(path, name, str(key))
        try:
            spec = config_cls.spec(key)
        except OptionError:
            valid = ", ".join(s.key for s in option_specs(config_cls) if s.name not in RUNNER_OPTIONS)
            raise RecipeError(f"{where}: `prunecli {command}` has no option {key!r}; its options: {valid}") from None
        if spec.name in RUNNER_OPTIONS:
            raise RecipeError(f"{where}: the recipe runner sets {spec.key} itself (each stage writes <run dir>/<stage>.pt)")
        if spec.key in resolved:
            raise RecipeError(f"{where}: the option {spec.key} is given twice (as {key!r} and another spelling)")
        resolved[spec.key] = substitute(value, variables, where)
    try:
        config_cls.from_options({**resolved, **_arch_from(command, inputs)})
    except OptionError as e:
        keys = e.keys
        raise RecipeError(f"{_where(path, name, keys[0].replace('_', '-') if keys else None)}: {e.render(lambda k: k.replace('_', '-'))}") from None
    source = None
    if "from" in raw:
        if command != "train":
            raise RecipeError(f"{_where(path, name, 'from')}: only a train stage can start from an existing checkpoint")
        source = substitute(raw["from"], variables, _where(path, name, "from"))
        if source is not None and not isinstance(source, str):
            raise RecipeError(f"{_where(path, name, 'from')}: expected a checkpoint path, got {source!r}")
    return Stage(name=name, command=command, inputs=inputs, options=resolved, note=str(raw.get("note") or ""), source=source or None)
