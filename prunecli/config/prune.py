"""Options of ``prunecli prune``, and `Selection`: how much to prune, and where.

`Selection` is the part the Pruner reads (prunecli.surgery.pruner); it is plain data and
validates itself, so a library caller building ``Selection(rate=0.4)`` gets the same
checks as ``--rate 0.4``. Rates are always fractions *removed*.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Optional

from prunecli.config._base import MAX_BATCH, MAX_SEED, PANEL_DATA, PANEL_OUT, PANEL_RUN, PANEL_WHAT, PANEL_WHERE, StageConfig, allow_nonfinite_option, option, overwrite_option
from prunecli.errors import OptionError


class Granularity(str, enum.Enum):
    channel = "channel"
    weight = "weight"


class Scope(str, enum.Enum):
    layerwise = "layerwise"
    global_ = "global"


class Protect(str, enum.Enum):
    none = "none"
    output = "output"
    head = "head"


def check_target_macs(target: float, granularity: str) -> None:
    if not (0.0 < target < 1.0):
        raise OptionError(f"{{target_macs}} {target}: the fraction of MACs to remove must be in (0, 1)")
    if granularity != Granularity.channel.value:
        raise OptionError("{target_macs} needs {granularity} channel: removing single weights does not reduce MACs")


def check_rate(rate: float, key: str, what: str = "") -> None:
    if math.isnan(rate) or not (0.0 <= rate < 1.0):
        raise OptionError(f"{{{key}}} {what}{rate}: a rate is the fraction removed and must be in [0, 1)")


@dataclass
class Selection:
    """Which channels (or weights) each prunable unit loses.

    Per unit the rate resolves as ``rate`` < ``layer_rates`` (by position) <
    ``layer_rate`` (PATTERN=RATE, last match wins); ``skip`` and ``protect`` leave units
    whole. A pattern is a glob on layer names, a layer number or a range (``8-13``).
    ``scope="global"`` ranks normalised scores of all units under one threshold.
    """

    rate: Optional[float] = None
    scope: str = "layerwise"
    layer_rate: list[tuple[str, float]] = field(default_factory=list)
    layer_rates: list[float] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    protect: str = "output"
    round_to: int = 1
    max_layer_rate: Optional[float] = None

    def __post_init__(self) -> None:
        self.scope = _choice(self.scope, Scope, "scope")
        self.protect = _choice(self.protect, Protect, "protect")
        if self.rate is not None:
            check_rate(self.rate, "rate")
        for i, r in enumerate(self.layer_rates, start=1):
            check_rate(r, "layer_rates", f"(entry {i}) ")
        for pattern, r in self.layer_rate:
            check_rate(r, "layer_rate", f"{pattern}=")
        if self.max_layer_rate is not None and not (0.0 < self.max_layer_rate <= 1.0):
            raise OptionError(f"{{max_layer_rate}} {self.max_layer_rate}: must be in (0, 1]")
        if self.round_to < 1:
            raise OptionError(f"{{round_to}} {self.round_to}: must be >= 1")
        if self.scope == "global" and (self.layer_rate or self.layer_rates):
            raise OptionError(
                "{scope} global picks per-layer rates itself: drop {layer_rate}/{layer_rates} (use {skip} or {max_layer_rate})"
            )


def _choice(value, choices: type[enum.Enum], key: str) -> str:
    value = value.value if isinstance(value, enum.Enum) else value
    valid = [m.value for m in choices]
    if value not in valid:
        raise OptionError(f"{{{key}}} {value!r}: valid: {', '.join(valid)}")
    return value


@dataclass(kw_only=True)
class PruneConfig(StageConfig):
    """``prunecli prune``: score and select what to remove; write a masked checkpoint."""

    command = "prune"

    method: str = option("l1", help="Criterion (prunecli list methods).", panel=PANEL_WHAT, flags=("-m",))
    rate: Optional[float] = option(None, help="Fraction removed, in [0, 1).", panel=PANEL_WHAT, flags=("-r",))
    granularity: Granularity = option(
        Granularity.channel, help="channel: output filters/neurons; weight: single weights.", panel=PANEL_WHAT
    )
    # layer-wise is what Li et al., SFP and FPGM do; global needs comparable scores
    scope: Scope = option(
        Scope.layerwise, help="layerwise: the rate in every layer; global: one threshold over normalised scores.", panel=PANEL_WHAT
    )
    target_macs: Optional[float] = option(
        None, help="Remove this fraction of the MACs (searches the rate on the real count).", panel=PANEL_WHAT
    )
    mix_norm: float = option(0.0, help="FPGM-mix (geomedian): share of the rate chosen by L2 norm.", panel=PANEL_WHAT, min=0.0, max=1.0)
    compress: bool = option(
        False,
        help="Remove the channels now and write a compressed checkpoint (needed where LayerNorm/GroupNorm normalise over pruned channels).",
        panel=PANEL_WHAT,
        negatable=False,
    )
    layer_rate: list[tuple[str, float]] = option(
        default_factory=list, help="PATTERN=RATE for matching layers (repeatable; glob or layer number).", panel=PANEL_WHERE
    )
    layer_rates: list[float] = option(
        default_factory=list, help="R1,R2,... in prunable-layer order, padded with --rate.", panel=PANEL_WHERE
    )
    skip: list[str] = option(default_factory=list, help="Leave matching layers whole (repeatable; glob or layer number).", panel=PANEL_WHERE)
    # the classifier's outputs are the classes: never pruned unless asked
    protect: Protect = option(
        Protect.output, help="Never prune the output layer (output), the linear head (head), or nothing (none).", panel=PANEL_WHERE
    )
    round_to: int = option(1, help="Keep channel counts multiples of N.", panel=PANEL_WHERE, min=1)
    max_layer_rate: Optional[float] = option(None, help="Cap on any one layer's rate.", panel=PANEL_WHERE)
    dataset: Optional[str] = option(None, help="Dataset for calibration (default: the checkpoint's).", panel=PANEL_DATA)
    data: Optional[str] = option(None, help="Dataset root folder (default: the one the checkpoint records).", panel=PANEL_DATA, path=True)
    # 8 batches of 64: enough for stable Taylor / Fisher rankings on CIFAR-sized nets
    calib_batches: int = option(8, help="Calibration batches for data-driven criteria (taylor, hessian).", panel=PANEL_DATA, min=1)
    batch_size: int = option(64, help="Calibration batch size.", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    workers: int = option(4, help="DataLoader workers for image-folder datasets.", panel=PANEL_RUN, min=0)
    seed: int = option(0, help="Seed of the calibration batches and of the random criterion.", panel=PANEL_RUN, min=0, max=MAX_SEED)
    # the CPU, as before --device existed: gradients on a GPU (TF32, non-deterministic
    # kernels) would change taylor's and hessian's choices from one machine to the next
    device: str = option("cpu", help="auto, cpu, cuda or cuda:N: where the model is scored and calibrated.", panel=PANEL_RUN)
    output: Optional[str] = option(
        None, help="Checkpoint to write (its path is the only thing printed on stdout).", panel=PANEL_OUT, flags=("-o",), path=True
    )
    overwrite: bool = overwrite_option()
    allow_nonfinite: bool = allow_nonfinite_option()

    def validate(self) -> None:
        super().validate()
        self.selection()  # rates, patterns and choices of the selection
        if self.rate is None and self.target_macs is None and not self.layer_rate and not self.layer_rates:
            raise OptionError("say how much to prune: {rate} R, {target_macs} F, or {layer_rate}/{layer_rates}")
        if self.target_macs is not None:
            if self.rate is not None:
                raise OptionError("{target_macs} searches for the rate: do not also give {rate}")
            check_target_macs(self.target_macs, self.granularity.value)
        if self.compress and self.granularity is not Granularity.channel:
            raise OptionError("{compress} removes channels: it needs {granularity} channel")
        if self.mix_norm and self.scope is Scope.global_:
            raise OptionError("{mix_norm} selects within each layer: use {scope} layerwise")

    def selection(self) -> Selection:
        return Selection(
            rate=self.rate,
            scope=self.scope.value,
            layer_rate=list(self.layer_rate),
            layer_rates=list(self.layer_rates),
            skip=list(self.skip),
            protect=self.protect.value,
            round_to=self.round_to,
            max_layer_rate=self.max_layer_rate,
        )
