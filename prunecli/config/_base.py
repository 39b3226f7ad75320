"""The machinery of the typed stage configs: option metadata, coercion, validation.

A stage config is a keyword-only dataclass whose fields are the command's options, each
declared with `option` (its help, panel, extra flags and bounds). The class owns:

* the defaults (in the field declarations, each with its reason in a comment);
* the types and closed choices (field annotations: ``int``, ``Optional[float]``, a
  ``str`` Enum, ``list[int]`` ...);
* validation (`StageConfig.validate`), run on construction, so ``TrainConfig(epochs=-1)``
  fails as early as ``--epochs -1`` does.

A value has two spellings: its Python value (``milestones=[80, 120]``,
``model_args={"width": 2}``) and its command-line form (``--milestones 80,120``,
``--model-arg width=2``). `StageConfig.from_options` accepts both, from a YAML file,
a recipe stage or the parsed command line; `StageConfig.to_options` writes the
command-line form under dashed keys, which is what lineage and ``<stem>.config.yaml``
record (a user can type it, and it reads back as a config).

Errors are `OptionError`s that name the field as ``{name}``: the CLI shows the flag,
a config-file error shows the key. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import math
import reprlib
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, TypeVar

from prunecli.errors import OptionError

MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds
MAX_BATCH = 1_000_000  # a bound that catches a typo; no GPU holds a million images

# options renamed since a release: an old config file gets the new name in its error
RENAMED = {"warmup-epochs": "lr-warmup-epochs"}  # prune --warmup-epochs is now the learned-score warm-up

# a closed choice whose values, joined by |, are longer than this shows NAME in --help (and lists them in the help text)
MAX_INLINE_CHOICES = 32
# placeholders of options that several commands share, so each config need not repeat them
KEY_METAVARS = {"device": "DEVICE", "data": "DIR"}

PANEL_DATA = "Data"
PANEL_MODEL = "Model"
PANEL_OPT = "Optimisation"
PANEL_RUN = "Runtime"
PANEL_OUT = "Output"
PANEL_WHAT = "What to prune"
PANEL_WHERE = "Which layers"
PANEL_WHEN = "Pruning while training"
PANEL_BLOCKS = "Block by block"


@dataclass(frozen=True)
class Opt:
    """What the command line needs to know about one config field."""

    help: str
    panel: str = PANEL_RUN
    flags: tuple[str, ...] = ()  # extra spellings: short flags, aliases ("-b", "--wd")
    key: Optional[str] = None  # the option's name where it differs from the field's (model_args -> model-arg)
    min: Optional[float] = None
    max: Optional[float] = None
    negatable: bool = True  # booleans: --x/--no-x; False: a plain --x switch
    path: bool = False  # a file or folder (the value is kept as a string)
    metavar: Optional[str] = None  # the value's placeholder in --help; None: derived from the kind (`OptionSpec.metavar`)


def option(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **opt: Any) -> Any:
    """A config field with its command-line metadata (see `Opt`)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"opt": Opt(**opt)})


class Kind(enum.Enum):
    """How a field's value is spelled on the command line and checked."""

    BOOL = "true or false"
    INT = "an integer"
    FLOAT = "a number"
    STR = "a string"
    ENUM = "one of"
    INTS = "a list of integers"  # CLI: 80,120
    FLOATS = "a list of numbers"  # CLI: 0.5,0.3
    STRS = "a list of strings"  # CLI: repeated flag
    KEY_VALUES = "a mapping"  # CLI: repeated KEY=VALUE
    PATTERN_RATES = "a list of PATTERN=RATE"  # CLI: repeated PATTERN=RATE


@dataclass(frozen=True)
class OptionSpec:
    """One field of a stage config, as the command line and config files see it."""

    name: str  # the Python field name, used in {name} error placeholders
    key: str  # the option name: --key on the command line, key in YAML
    kind: Kind
    choices: Optional[type[enum.Enum]]
    optional: bool
    field: dataclasses.Field
    opt: Opt

    @property
    def flags(self) -> tuple[str, ...]:
        return (f"--{self.key}", *self.opt.flags)

    @property
    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        if self.field.default_factory is not dataclasses.MISSING:
            return self.field.default_factory()
        return None

    @property
    def metavar(self) -> Optional[str]:
        """The value's placeholder in ``--help`` (``N``, ``R``, ``FILE``, ``PATTERN=RATE``); None for a switch.

        Derived from the kind unless the option names its own: an integer is N, a number
        bounded to [0, 1] a fraction R, any other number X, a path FILE, a list of numbers
        N1,N2,... or R1,R2,..., a closed choice its values (when they fit) or NAME.
        """
        if self.opt.metavar is not None:
            return self.opt.metavar
        kind = self.kind
        if kind is Kind.BOOL:
            return None
        if kind is Kind.INT:
            return "N"
        if kind is Kind.FLOAT:
            return "R" if self.opt.max is not None and self.opt.max <= 1 else "X"
        if kind is Kind.STR:
            if self.key in KEY_METAVARS:
                return KEY_METAVARS[self.key]
            return "FILE" if self.opt.path else "NAME"
        if kind is Kind.ENUM:
            values = "|".join(str(m.value) for m in self.choices)
            return values if len(values) <= MAX_INLINE_CHOICES else "NAME"
        return {Kind.INTS: "N1,N2,...", Kind.FLOATS: "R1,R2,...", Kind.STRS: "PATTERN", Kind.KEY_VALUES: "KEY=VALUE", Kind.PATTERN_RATES: "PATTERN=RATE"}[kind]

    def describe(self) -> str:
        if self.kind is Kind.ENUM:
            return "one of " + ", ".join(str(m.value) for m in self.choices)
        return self.kind.value

    # -- reading a value

    def coerce(self, value: Any) -> Any:
        """The Python value of ``value`` (Python or command-line spelling); OptionError if it is neither."""
        if value is None:
            if self.optional:
                return None
            raise self._bad(value)
        kind = self.kind
        if kind is Kind.BOOL:
            if isinstance(value, bool):
                return value
        elif kind is Kind.INT:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind is Kind.FLOAT:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string: a number to anyone writing it
                try:
                    return float(value)
                except ValueError:
                    pass
        elif kind is Kind.STR:
            if isinstance(value, str):
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # a numeric folder name, a layer number
            if hasattr(value, "__fspath__"):
                return str(value)
        elif kind is Kind.ENUM:
            if isinstance(value, self.choices):
                return value
            if isinstance(value, str) and value in {m.value for m in self.choices}:
                return self.choices(value)
        elif kind in (Kind.INTS, Kind.FLOATS):
            return self._numbers(value)
        elif kind is Kind.STRS:
            items = [value] if isinstance(value, (str, int, float)) else value
            if isinstance(items, (list, tuple)) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
                return [str(v) for v in items]
        elif kind is Kind.KEY_VALUES:
            return self._key_values(value)
        elif kind is Kind.PATTERN_RATES:
            return self._pattern_rates(value)
        raise self._bad(value)

    def _bad(self, value: Any, expected: Optional[str] = None) -> OptionError:
        return OptionError(f"{{{self.name}}} expects {expected or self.describe()}, got {short_repr(value)}")

    def _numbers(self, value: Any) -> list:
        number = int if self.kind is Kind.INTS else float
        example = "80,120" if number is int else "0.5,0.3"
        if isinstance(value, str):
            try:
                return [number(v) for v in value.replace(" ", "").split(",") if v]
            except ValueError:
                raise self._bad(value, f"comma-separated {'integers' if number is int else 'numbers'}, e.g. {example}") from None
        items = [value] if isinstance(value, (int, float)) else value
        if isinstance(items, (list, tuple)):
            ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) and (number is float or isinstance(v, int)) for v in items)
            if ok:
                return [number(v) for v in items]
        raise self._bad(value)

    def _key_values(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return {str(k): v for k, v in value.items()}
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise self._bad(value)
        try:
            return key_values(items)
        except ValueError as e:
            raise OptionError(f"{{{self.name}}} {e}") from None

    def _pattern_rates(self, value: Any) -> list[tuple[str, float]]:
        if isinstance(value, dict):
            value = list(value.items())
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise self._bad(value)
        out = []
        for item in items:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                pattern, rate = item
            else:
                pattern, sep, rate = str(item).rpartition("=")
                if not sep or not pattern:
                    raise OptionError(f"{{{self.name}}} {short_repr(item)}: expected PATTERN=RATE, e.g. 'layer1.*.conv1=0.6'")
            try:
                rate = float(rate)
            except (TypeError, ValueError):
                raise OptionError(f"{{{self.name}}} {short_repr(item)}: {short_repr(rate)} is not a number") from None
            out.append((str(pattern), rate))
        return out

    def check_bounds(self, value: Any) -> None:
        """Declared bounds, and for every number: finite, and an integer that fits in 64 bits."""
        if value is None:
            return
        if self.kind in (Kind.INTS, Kind.FLOATS):
            for v in value:
                self._check_number(v, f"{{{self.name}}} {self.command_line_form(value)}: {v!r}")
        elif self.kind in (Kind.INT, Kind.FLOAT):
            self._check_number(value, f"{{{self.name}}} {short_repr(value)}")

    def _check_number(self, value: Any, what: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{what}: must be a finite number")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise OptionError(f"{what}: out of range (a 64-bit integer)")
        lo, hi = self.opt.min, self.opt.max
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = " and ".join(b for b in (f">= {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None else "") if b)
            raise OptionError(f"{what}: must be {bounds}")

    # -- writing a value

    def command_line_form(self, value: Any) -> Any:
        """``value`` as the command line spells it (plain data, reads back through `coerce`)."""
        if value is None:
            return None
        if isinstance(value, enum.Enum):
            return value.value
        if self.kind in (Kind.INTS, Kind.FLOATS):
            return ",".join(repr(v) for v in value) if value else None
        if self.kind is Kind.STRS:
            return list(value)
        if self.kind is Kind.KEY_VALUES:
            return [f"{k}={_yaml_scalar(v)}" for k, v in value.items()]
        if self.kind is Kind.PATTERN_RATES:
            return [f"{p}={r!r}" for p, r in value]
        return value


def key_values(items: list) -> dict[str, Any]:
    """``KEY=VALUE`` strings as a mapping, values read as YAML scalars (numbers, booleans, lists).

    ValueError names the first item that is not ``KEY=VALUE``. Shared by ``--model-arg``
    and a recipe's ``--set``.
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{short_repr(item)}: expected KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def overwrite_option() -> Any:
    """The ``--overwrite`` field every command that writes a checkpoint has."""
    return option(False, help="Replace an existing file at --output (otherwise refused).", panel=PANEL_OUT, negatable=False)


def allow_nonfinite_option() -> Any:
    """The ``--allow-nonfinite`` field every command that loads weights has."""
    return option(False, help="Load a checkpoint whose weights hold NaN or Inf (otherwise refused).", panel=PANEL_RUN, negatable=False)


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong = 40


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to a line: error messages quote untrusted values."""
    return _REPR.repr(value)


def _yaml_scalar(value: Any) -> str:
    """A KEY=VALUE value that `coerce` reads back as ``value`` (YAML flow syntax)."""
    import yaml

    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value)


def _kind(tp: Any) -> tuple[Kind, Optional[type], bool]:
    optional = False
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        (tp,) = args
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Kind.ENUM, tp, optional
    simple = {bool: Kind.BOOL, int: Kind.INT, float: Kind.FLOAT, str: Kind.STR}
    if tp in simple:
        return simple[tp], None, optional
    if origin is list and args == (int,):
        return Kind.INTS, None, optional
    if origin is list and args == (float,):
        return Kind.FLOATS, None, optional
    if origin is list and args == (str,):
        return Kind.STRS, None, optional
    if origin is dict:
        return Kind.KEY_VALUES, None, optional
    if origin is list and args and typing.get_origin(args[0]) is tuple:
        return Kind.PATTERN_RATES, None, optional
    raise TypeError(f"unsupported config field type {tp!r}")


@functools.cache
def option_specs(cls: type) -> tuple[OptionSpec, ...]:
    """The fields of a stage config that are options, in declaration order."""
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("opt")
        if opt is None:
            continue
        kind, choices, optional = _kind(hints[f.name])
        key = opt.key or f.name.replace("_", "-")
        specs.append(OptionSpec(f.name, key, kind, choices, optional, f, opt))
    return tuple(specs)


C = TypeVar("C", bound="StageConfig")


@dataclass(kw_only=True)
class StageConfig:
    """Base of every stage config (see the module docstring)."""

    command: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for spec in option_specs(type(self)):
            setattr(self, spec.name, spec.coerce(getattr(self, spec.name)))
        self.validate()

    def validate(self) -> None:
        """Bounds of every numeric option; subclasses add the checks between options."""
        for spec in option_specs(type(self)):
            spec.check_bounds(getattr(self, spec.name))

    @classmethod
    def spec(cls, key: str) -> OptionSpec:
        """The option a key names: ``batch-size``, ``batch_size`` and aliases all work."""
        wanted = str(key).replace("_", "-")
        for s in option_specs(cls):
            if wanted in (s.key, s.name.replace("_", "-")):
                return s
        if wanted in RENAMED and any(s.key == RENAMED[wanted] for s in option_specs(cls)):
            raise OptionError(f"{key!r} is now {RENAMED[wanted]!r} (for `prunecli {cls.command}`)")
        valid = ", ".join(s.key for s in option_specs(cls))
        raise OptionError(f"unknown key {key!r} for `prunecli {cls.command}`; valid keys: {valid}")

    @classmethod
    def check_options(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Field name -> Python value for a mapping of options (keys and types checked).

        ``None`` stands for "not set" on an option that cannot be None.
        """
        out: dict[str, Any] = {}
        for key, value in values.items():
            s = cls.spec(key)
            if value is None and not s.optional:
                continue
            out[s.name] = s.coerce(value)
            s.check_bounds(out[s.name])
        return out

    @classmethod
    def from_options(cls: type[C], values: Mapping[str, Any], **fixed: Any) -> C:
        """The config of these options (defaults for the rest); ``fixed`` are Python values."""
        return cls(**{**cls.check_options(values), **fixed})

    def to_dict(self) -> dict[str, Any]:
        """Field name -> Python value as plain data (enums as their values)."""
        return {s.name: _plain(getattr(self, s.name)) for s in option_specs(type(self))}

    def to_options(self) -> dict[str, Any]:
        """Option key -> command-line form: what lineage and the written config record."""
        return {s.key: s.command_line_form(getattr(self, s.name)) for s in option_specs(type(self))}

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
