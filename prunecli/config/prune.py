"""Options of ``prunecli prune``, and `Selection`: how much to prune, and where.

``prune`` takes every option of ``finetune`` (it is a subclass of `FinetuneConfig`):
with ``--epochs N`` it prunes *while* training for N epochs (soft, gradual or iterative
pruning, prunecli.algorithms); with the default ``--epochs 0`` it prunes once.

`Selection` is the part the Pruner reads (prunecli.surgery.pruner); it is plain data and
validates itself, so a library caller building ``Selection(rate=0.4)`` gets the same
checks as ``--rate 0.4``. Rates are always fractions *removed*.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Optional

import re

from prunecli.config._base import MAX_BATCH, PANEL_DATA, PANEL_OPT, PANEL_RUN, PANEL_WHAT, PANEL_WHEN, PANEL_WHERE, option
from prunecli.config.methods import NON_CHANNEL_GRANULARITIES, canonical_method
from prunecli.config.profile import Runtime, runtime_option, threads_option
from prunecli.config.train import MAX_EPOCHS, FinetuneConfig
from prunecli.errors import OptionError


class Granularity(str, enum.Enum):
    channel = "channel"
    weight = "weight"
    # Sparse Structure Selection's gates only (prune --method sss): a gate per residual
    # block, or per group of a grouped convolution (ResNeXt's cardinality groups)
    block = "block"
    group = "group"


class Rank(str, enum.Enum):
    """How edge-popup's channel mode ranks a channel from its weights' scores (seed 000's rank_method)."""

    absolute = "absolute"  # mean |s| over the channel's weights (hidden-networks)
    relevant = "relevant"  # sum |s| (or sum s, --no-rank-abs) / sum |s_init|


class ScoreInit(str, enum.Enum):
    """Edge-popup's score initialisation (hidden-networks: kaiming-uniform, a = sqrt(5))."""

    kaiming_uniform = "kaiming-uniform"
    uniform = "uniform"
    gaussian = "gaussian"


class Scope(str, enum.Enum):
    layerwise = "layerwise"
    global_ = "global"


class CountRule(str, enum.Enum):
    """How many entries a rate removes (prunecli.surgery.plan.removed_count)."""

    reference = "reference"  # the method's own reference code's rule (Criterion.count_rule)
    keep_floor = "keep-floor"
    remove_floor = "remove-floor"
    remove_ceil = "remove-ceil"
    threshold = "threshold"


class PruneSchedule(str, enum.Enum):
    """How the sparsity rises while training (``--prune-schedule``)."""

    agp = "agp"  # Zhu & Gupta 2017: s_t = s_f * (1 - (1 - t/T)^3)


class Grouping(str, enum.Enum):
    """What one soft selection covers."""

    dependency = "dependency"  # one index set per dependency group: physically removable
    layer = "layer"  # every conv its own selection, as the FPGM/SFP references train


class StreamBN(str, enum.Enum):
    """How a BatchNorm that reads a residual or concatenated stream is pruned (``--stream-bn``)."""

    select = "select"  # a channel-selection layer: only the next conv's inputs go (Network Slimming)
    couple = "couple"  # one dependency group: the stream's channels go from every layer on it


# the methods that learn their mask while training, and their algorithm (prunecli.algorithms)
LEARNED_METHODS = {"edgepopup": "edgepopup", "sss": "sss"}

REWIND = re.compile(r"^(none|init|epoch:(\d{1,6}))$")


class RoundMode(str, enum.Enum):
    """How a kept channel count is rounded to a multiple of --round-to N (prunecli.surgery.plan.kept_count)."""

    nearest = "nearest"  # 38 -> 40 at N = 8: prunecli's rule since --round-to exists
    down = "down"  # 38 -> 32: Torch-Pruning's round_to (BasePruner._round_to), which removes more


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
    round_mode: str = "nearest"  # RoundMode: how kept counts are rounded to round_to
    max_layer_rate: Optional[float] = None
    # None: keep-floor layer-wise, round(rate * total) globally (prunecli.surgery.plan)
    count_rule: Optional[str] = None

    def __post_init__(self) -> None:
        self.scope = _choice(self.scope, Scope, "scope")
        if self.count_rule is not None:
            self.count_rule = _choice(self.count_rule, CountRule, "count_rule")
            if self.count_rule == CountRule.reference.value:
                raise OptionError("{count_rule} reference is resolved by the method: pass the rule it stands for")
        self.protect = _choice(self.protect, Protect, "protect")
        self.round_mode = _choice(self.round_mode, RoundMode, "round_mode")
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
class PruneConfig(FinetuneConfig):
    """``prunecli prune``: score and select what to remove; write a masked checkpoint.

    Every training option of ``finetune`` applies when ``--epochs`` is above 0.
    """

    command = "prune"

    method: str = option(
        "l1", help="Criterion (prunecli list methods; the names it lists as also accepted work too, e.g. fpgm).", panel=PANEL_WHAT, flags=("-m",)
    )
    rate: Optional[float] = option(
        None,
        help="Fraction removed, in [0, 1). --scope layerwise: of each layer's channels (or weights); --scope global: of all "
        "eligible channels (or weights) together, under one threshold, a coupled group (a residual stream) counting once.",
        panel=PANEL_WHAT,
        flags=("-r",),
        metavar="R",
    )
    # None: channel, or the method's only granularity when it cannot score channels (magnitude: weight)
    granularity: Optional[Granularity] = option(
        None,
        help="channel: output filters/neurons; weight: single weights; block, group: Sparse Structure Selection's gates "
        "(--method sss). Default: channel, or the method's only one (weight for magnitude).",
        panel=PANEL_WHAT,
    )
    # layer-wise is what Li et al., SFP and FPGM do; global needs comparable scores
    scope: Scope = option(
        Scope.layerwise,
        help="layerwise: every layer loses --rate of its channels; global: one threshold over all layers' normalised scores, "
        "so layers lose different shares (prune warns when one keeps under 10%).",
        panel=PANEL_WHAT,
    )
    target_macs: Optional[float] = option(
        None, help="Remove this fraction of the MACs (searches the rate on the real count).", panel=PANEL_WHAT,
        metavar="F",
    )
    target_latency: Optional[float] = option(
        None,
        help="Remove this fraction of the measured latency: per-layer widths that keep the most importance per ms saved "
        "(HALP), predicted by a latency table (prunecli profile; built and cached if needed), then measured and tightened.",
        panel=PANEL_WHAT,
        metavar="F",
    )
    latency_table: Optional[str] = option(
        None, help="The latency table to use (prunecli profile -o FILE); refused if measured on another model.", panel=PANEL_WHAT, path=True
    )
    runtime: Runtime = runtime_option()
    threads: Optional[int] = threads_option()
    # 8, as prunecli profile: --batch-size is the calibration batch (64), too slow to time a 224px model on a CPU
    latency_batch_size: int = option(8, help="Batch size the latency (table and measurement) is taken at.", panel=PANEL_RUN, min=1, max=MAX_BATCH)
    mix_norm: float = option(0.0, help="FPGM-mix (geomedian): share of the rate chosen by L2 norm.", panel=PANEL_WHAT, min=0.0, max=1.0)
    # reference: each method counts as its paper's code does, so a recipe reproduces its table
    count_rule: CountRule = option(
        CountRule.reference,
        help="How many a rate removes: reference (the method's own code: l1 and most keep int(C*(1-r)), "
        "l2/geomedian remove int(C*r), magnitude ceil(n*r), slimming int(N*r)+1), keep-floor, remove-floor, "
        "remove-ceil, threshold.",
        panel=PANEL_WHAT,
        metavar="RULE",
    )
    # None: select with slimming (its paper's structure, which its numbers need), else couple
    stream_bn: Optional[StreamBN] = option(
        None,
        help="PreResNet/DenseNet BatchNorms reading the residual or concatenated stream: select (the default with "
        "slimming, as its paper: a channel-selection layer removes only the next conv's inputs, the stream keeps its "
        "width) or couple (the stream's channels leave every layer on it at once; the only way for filter criteria).",
        panel=PANEL_WHAT,
    )
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
    # a string: N or auto (the widths where the latency table steps down)
    round_to: str = option(
        "1",
        help="Keep channel counts multiples of N (rounded by --round-mode), or auto: snap each layer to the widths where its "
        "latency table (prunecli profile) shows latency stepping down.",
        panel=PANEL_WHERE,
        metavar="N|auto",
    )
    # nearest: what prunecli has always done; down is Torch-Pruning's round_to, kept for users who compare with it
    round_mode: RoundMode = option(
        RoundMode.nearest,
        help="How --round-to N rounds a kept count: nearest multiple (38 -> 40 at N=8) or down (38 -> 32, Torch-Pruning's "
        "round_to; prunecli still keeps at least N). With --round-to auto: the nearest step width, or the one at or below.",
        panel=PANEL_WHERE,
    )
    max_layer_rate: Optional[float] = option(None, help="Cap on any one layer's rate.", panel=PANEL_WHERE, metavar="R")
    from_sensitivity: Optional[str] = option(
        None,
        help="Per-layer rates from a `prunecli sensitivity` sweep's sensitivity.json: each layer's largest rate within --max-drop "
        "(with --target-macs, all scaled by one factor until the target is met).",
        panel=PANEL_WHERE,
        path=True,
    )
    # no default: how much accuracy a layer may cost is the user's call, not ours
    max_drop: Optional[float] = option(
        None, help="With --from-sensitivity: the top-1 points (percent) a layer's rate may cost in the sweep.", panel=PANEL_WHERE, min=0.0, max=100.0,
        metavar="D",
    )
    # 0: one-shot, the setting of Li et al. and of every prune -> finetune pipeline
    epochs: int = option(
        0, help="Prune while training for N epochs (per round with --rounds); 0: prune once, no training.", panel=PANEL_WHEN, min=0, max=MAX_EPOCHS
    )
    soft: bool = option(
        False,
        help="Soft pruning (SFP; FPGM with geomedian): re-select at epoch ends; pruned filters keep training and may return; the last selection is applied hard.",
        panel=PANEL_WHEN,
        negatable=False,
    )
    mask_grads: bool = option(
        False, help="With --soft: pruned entries get zero gradients and stay zero between selections (the FPGM reference).", panel=PANEL_WHEN, negatable=False
    )
    # per-layer masks train as the FPGM/SFP papers do; only dependency groups can be removed physically
    grouping: Grouping = option(
        Grouping.dependency,
        help="With --soft: dependency (one selection per coupled group, physically removable) or layer (every conv its own, as the FPGM/SFP references train).",
        panel=PANEL_WHEN,
    )
    # 0: the papers' (hard only after the last epoch); K lets the network adapt to the removal
    hard_epochs: int = option(
        0,
        help="With --soft: the last K epochs train with the final selection applied hard (whole groups, what compress removes); 0: hard only at the end, as the papers.",
        panel=PANEL_WHEN,
        min=0,
        max=MAX_EPOCHS,
    )
    reselect_every: int = option(1, help="Re-select every K epochs (--soft, --prune-schedule agp).", panel=PANEL_WHEN, min=1, max=MAX_EPOCHS)
    prune_schedule: Optional[PruneSchedule] = option(
        None, help="agp: sparsity rises 0 -> --rate as s_f*(1-(1-t/T)^3) over --prune-epochs (Zhu & Gupta 2017).", panel=PANEL_WHEN
    )
    prune_epochs: Optional[int] = option(
        None, help="Epochs T over which agp reaches --rate (default: the first 75% of --epochs).", panel=PANEL_WHEN, min=1, max=MAX_EPOCHS
    )
    rounds: Optional[int] = option(
        None, help="Iterative pruning: R rounds, each removing --rate of the remaining entries, then training --epochs.", panel=PANEL_WHEN, min=1, max=1000
    )
    rewind: str = option(
        "none", help="Before each round's training, reset survivors to their weights at init or epoch:K (saved by train --save-rewind K).", panel=PANEL_WHEN,
        metavar="init|epoch:K",
    )
    # 0: prune from the first epoch. Seed 000 uses 20 with a global scope, so that a global
    # threshold cannot empty a layer while the scores are still at their initial scale
    warmup_epochs: int = option(
        0,
        help="Learned masks (edgepopup): train the scores with nothing pruned for the first N epochs (the seed's "
        "--gp_warm_up_epochs). The learning-rate warm-up is --lr-warmup-epochs.",
        panel=PANEL_WHEN,
        min=0,
        max=MAX_EPOCHS,
    )
    # hidden-networks' kaiming-uniform with a = sqrt(5) (nn.Conv2d's own weight init)
    score_init: ScoreInit = option(
        ScoreInit.kaiming_uniform,
        help="edgepopup: score initialisation: kaiming-uniform (a = sqrt 5, as hidden-networks), uniform [0, 1), gaussian N(0, 1).",
        panel=PANEL_WHEN,
    )
    # absolute is hidden-networks' mean |score|; relevant divides by the initial scores, so
    # layers of different fan-in compare under one global threshold
    rank: Rank = option(
        Rank.absolute,
        help="edgepopup, channel granularity: absolute (mean |s| of the channel's weights) or relevant "
        "(sum |s| / sum |s_init|; with --no-rank-abs sum s / sum |s_init|).",
        panel=PANEL_WHEN,
    )
    rank_abs: bool = option(True, help="With --rank relevant: sum |s| (default) or, with --no-rank-abs, sum s.", panel=PANEL_WHEN)
    # 0.01: the paper's gamma for its CIFAR and ImageNet ResNets
    sss_gamma: float = option(
        0.01, help="sss: weight of the L1 penalty on the gates (soft-thresholded by proximal gradient).", panel=PANEL_WHEN, min=0.0, max=10.0
    )
    # None: cpu for one-shot scoring (GPU kernels would change taylor's and hessian's choices
    # from one machine to the next); auto when training
    device: Optional[str] = option(None, help="auto, cpu, cuda or cuda:N (default: cpu when --epochs is 0, else auto).", panel=PANEL_RUN)
    # None: 64 for one-shot calibration (8 x 64 images suffice for Taylor/Fisher rankings); 128 for training, the papers' CIFAR batch
    batch_size: Optional[int] = option(
        None, help="Batch size (default: 64 for calibration, 128 when training).", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH
    )
    # the checkpoint's own dataset unless given
    dataset: Optional[str] = option(None, help="Dataset for calibration and training (default: the checkpoint's).", panel=PANEL_DATA)
    # 8 batches of 64: enough for stable Taylor / Fisher rankings on CIFAR-sized nets
    calib_batches: int = option(8, help="Calibration batches for data-driven criteria (taylor, hessian).", panel=PANEL_DATA, min=1)
    # None: 0.01 when pruning a trained model (the fine-tuning lr, not the from-scratch 0.1);
    # 0.1 for edge-popup's scores (hidden-networks and seed 000 train them at 0.1)
    lr: Optional[float] = option(None, help="Base learning rate when training (default: 0.01; 0.1 for edgepopup's scores).", panel=PANEL_OPT, min=0.0, max=1000.0)

    def validate(self) -> None:
        self.method = canonical_method(self.method)  # fpgm -> geomedian: lineage records the registered name
        self._resolve_granularity()
        training = self.epochs > 0
        if self.device is None:
            self.device = "auto" if training else "cpu"
        if self.batch_size is None:
            self.batch_size = 128 if training else 64
        if self.lr is None:
            self.lr = 0.1 if LEARNED_METHODS.get(self.method) == "edgepopup" else 0.01
        super().validate()
        self._validate_latency()  # --round-to's spelling first: the selection reads it as a number
        self.selection()  # rates, patterns and choices of the selection
        self._validate_training()
        self._validate_learned()
        self._validate_sensitivity()
        sss = LEARNED_METHODS.get(self.method) == "sss"  # the gates decide how much goes
        if sss and (self.rate is not None or self.layer_rate or self.layer_rates):
            raise OptionError("{method} sss removes what its gates drive to zero: drop {rate}/{layer_rate}/{layer_rates} (raise {sss_gamma} to remove more)")
        if not sss and self.rate is None and self.target_macs is None and self.target_latency is None and not self.layer_rate and not self.layer_rates and self.from_sensitivity is None:
            raise OptionError("say how much to prune: {rate} R, {target_macs} F, {layer_rate}/{layer_rates}, or {from_sensitivity}")
        if self.target_macs is not None:
            if self.rate is not None:
                raise OptionError("{target_macs} searches for the rate: do not also give {rate}")
            check_target_macs(self.target_macs, self.granularity.value)
        if self.compress and self.granularity is not Granularity.channel:
            raise OptionError("{compress} removes channels: it needs {granularity} channel")
        if self.mix_norm and self.scope is Scope.global_:
            raise OptionError("{mix_norm} selects within each layer: use {scope} layerwise")

    @property
    def round_auto(self) -> bool:
        """--round-to auto: snap to the latency table's step widths."""
        return str(self.round_to).strip().lower() == "auto"

    @property
    def round_to_n(self) -> int:
        """--round-to as a number (1 with auto: the table decides)."""
        return 1 if self.round_auto else int(self.round_to)

    @property
    def uses_latency(self) -> bool:
        return self.target_latency is not None or self.round_auto

    def _validate_latency(self) -> None:
        text = str(self.round_to).strip().lower()
        if text != "auto":
            try:
                n = int(text)
            except ValueError:
                raise OptionError(f"{{round_to}} {self.round_to!r}: expected N (a channel multiple, >= 1) or auto") from None
            if n < 1:
                raise OptionError(f"{{round_to}} {n}: must be >= 1 (or auto)")
            self.round_to = str(n)
        else:
            self.round_to = "auto"
        if self.target_latency is not None:
            if math.isnan(self.target_latency) or not (0.0 < self.target_latency < 1.0):
                raise OptionError(f"{{target_latency}} {self.target_latency}: the fraction of latency to remove must be in (0, 1)")
            for key, given in (("rate", self.rate is not None), ("target_macs", self.target_macs is not None), ("from_sensitivity", self.from_sensitivity is not None)):
                if given:
                    raise OptionError(f"{{target_latency}} chooses every layer's width itself: do not also give {{{key}}}")
            if self.granularity is not Granularity.channel:
                raise OptionError("{target_latency} removes whole channels: it needs {granularity} channel")
            if self.training:
                raise OptionError("{target_latency} prunes once: drop {epochs} (fine-tune the result with `prunecli finetune`)")
        if self.uses_latency and self.granularity is not Granularity.channel:
            raise OptionError("{round_to} auto snaps channel counts: it needs {granularity} channel")
        if self.uses_latency and self.training:
            raise OptionError("{round_to} auto prunes once: drop {epochs}")
        if not self.uses_latency:
            for key in ("latency_table", "threads"):
                if getattr(self, key) is not None:
                    raise OptionError(f"{{{key}}} sets how latency is measured: it needs {{target_latency}} or {{round_to}} auto")
            if self.runtime is not Runtime.eager:
                raise OptionError("{runtime} sets how latency is measured: it needs {target_latency} or {round_to} auto")

    def _resolve_granularity(self) -> None:
        """No --granularity: channel, or the only granularity of a method that cannot score channels."""
        if self.granularity is not None:
            return
        if LEARNED_METHODS.get(self.method) == "sss":  # the paper's main setting: depth selection, one gate per block
            self.granularity = Granularity.block
            return
        has = NON_CHANNEL_GRANULARITIES.get(self.method)
        if has is None:
            self.granularity = Granularity.channel
            return
        if len(has) > 1:
            raise OptionError(f"{{method}} {self.method} cannot score whole channels: add {{granularity}} {' or '.join(has)}")
        wanting = [k for k, on in (("compress", self.compress), ("target_macs", self.target_macs is not None), ("from_sensitivity", self.from_sensitivity is not None)) if on]
        if wanting:
            raise OptionError(f"{{method}} {self.method} prunes single weights only; {{{wanting[0]}}} needs whole channels: use a channel criterion such as l1 or l2")
        self.granularity = Granularity(has[0])

    def _validate_learned(self) -> None:
        """The options of the learned-mask methods (edgepopup, sss) go with them, and they train."""
        learned = LEARNED_METHODS.get(self.method)
        if learned is None:
            for name in ("warmup_epochs", "score_init", "rank", "rank_abs"):
                if getattr(self, name) != type(self).spec(name).default:
                    raise OptionError(f"{{{name}}} sets how edge-popup's scores train: it needs {{method}} edgepopup")
            if self.sss_gamma != type(self).spec("sss_gamma").default:
                raise OptionError("{sss_gamma} weighs Sparse Structure Selection's gate penalty: it needs {method} sss")
            if self.granularity in (Granularity.block, Granularity.group):
                raise OptionError(f"{{granularity}} {self.granularity.value}: only {{method}} sss gates whole blocks or groups")
            return
        if self.epochs == 0:
            raise OptionError(f"{{method}} {self.method} learns its mask while training: give {{epochs}} N")
        modes = [f for f, on in (("soft", self.soft), ("prune_schedule", self.prune_schedule is not None), ("rounds", self.rounds is not None)) if on]
        if modes:
            raise OptionError(f"{{method}} {self.method} learns its mask itself: drop {{{modes[0]}}}")
        for name, given in (("target_macs", self.target_macs is not None), ("from_sensitivity", self.from_sensitivity is not None), ("teacher", getattr(self, "teacher", None))):
            if given:
                raise OptionError(f"{{{name}}} cannot be used with {{method}} {self.method}")
        if learned == "edgepopup":
            if self.granularity not in (Granularity.channel, Granularity.weight):
                raise OptionError(f"{{granularity}} {self.granularity.value}: edgepopup scores weights (weight) or ranks channels by them (channel)")
            if self.rank is Rank.relevant and self.granularity is not Granularity.channel:
                raise OptionError("{rank} relevant ranks channels against their initial scores: it needs {granularity} channel (weights rank by |score|)")
            if not self.rank_abs and self.rank is not Rank.relevant:
                raise OptionError("{rank_abs} chooses between sum |s| and sum s of the relevant rank: it needs {rank} relevant")
            if self.warmup_epochs >= self.epochs:
                raise OptionError(f"{{warmup_epochs}} {self.warmup_epochs}: must be fewer than {{epochs}} {self.epochs} (pruning starts after it)")
            if self.rate is None and not self.layer_rates and not self.layer_rate:
                raise OptionError("{method} edgepopup keeps the top scores: give {rate} R (or {layer_rates})")
            if self.sss_gamma != type(self).spec("sss_gamma").default:
                raise OptionError("{sss_gamma} weighs Sparse Structure Selection's gate penalty: it needs {method} sss")
        else:  # sss
            for name in ("warmup_epochs", "score_init", "rank", "rank_abs"):
                if getattr(self, name) != type(self).spec(name).default:
                    raise OptionError(f"{{{name}}} sets how edge-popup's scores train: it needs {{method}} edgepopup")
            if self.granularity is Granularity.weight:
                raise OptionError("{granularity} weight: sss gates residual blocks, groups or channels (block, group, channel)")
            # options of a ranking: the gates alone decide what goes
            ranking = (
                ("scope", self.scope is not Scope.layerwise),
                ("skip", bool(self.skip)),
                ("round_to", self.round_to != "1"),
                ("max_layer_rate", self.max_layer_rate is not None),
                ("mix_norm", bool(self.mix_norm)),
                ("count_rule", self.count_rule is not CountRule.reference),
                ("stream_bn", self.stream_bn is not None),
            )
            for name, given in ranking:
                if given:
                    raise OptionError(f"{{{name}}} shapes a ranking; {{method}} sss removes what its gates drive to zero: drop {{{name}}} (raise {{sss_gamma}} to remove more)")

    def _validate_sensitivity(self) -> None:
        if self.from_sensitivity is None:
            if self.max_drop is not None:
                raise OptionError("{max_drop} picks rates from a sensitivity sweep: it needs {from_sensitivity} FILE")
            return
        if self.max_drop is None:
            raise OptionError("{from_sensitivity} needs {max_drop} D: the top-1 points a layer may cost (e.g. 1.0)")
        for key, given in (("rate", self.rate is not None), ("layer_rate", bool(self.layer_rate)), ("layer_rates", bool(self.layer_rates))):
            if given:
                raise OptionError(f"{{from_sensitivity}} sets every layer's rate: drop {{{key}}} (scale them with {{target_macs}})")
        if self.scope is Scope.global_:
            raise OptionError("{from_sensitivity} gives per-layer rates: use {scope} layerwise")
        if self.granularity is not Granularity.channel:
            raise OptionError("{from_sensitivity} holds channel sweeps: it needs {granularity} channel")
        if self.training:
            raise OptionError("{from_sensitivity} prunes once: drop {epochs} (fine-tune the result with `prunecli finetune`)")

    def _validate_training(self) -> None:
        if not REWIND.match(self.rewind):
            raise OptionError(f"{{rewind}} {self.rewind!r}: expected init, epoch:K or none")
        modes = [f for f, on in (("soft", self.soft), ("prune_schedule", self.prune_schedule is not None), ("rounds", self.rounds is not None)) if on]
        if len(modes) > 1:
            raise OptionError(f"{{{modes[0]}}} and {{{modes[1]}}} are different ways of pruning while training: choose one")
        if modes and self.epochs == 0:
            raise OptionError(f"{{{modes[0]}}} prunes while training: give {{epochs}} N (epochs per round with {{rounds}})")
        if self.mask_grads and not self.soft:
            raise OptionError("{mask_grads} masks gradients between soft re-selections: it needs {soft}")
        if self.grouping is Grouping.layer and not self.soft:
            raise OptionError("{grouping} layer trains per-layer soft masks: it needs {soft}")
        if self.grouping is Grouping.layer and (self.scope is Scope.global_ or self.round_to != "1"):
            raise OptionError("{grouping} layer selects within each conv at its rate: use {scope} layerwise without {round_to}")
        if self.hard_epochs and not self.soft:
            raise OptionError("{hard_epochs} ends a soft run with hard masks: it needs {soft}")
        if self.hard_epochs and self.hard_epochs >= self.epochs:
            raise OptionError(f"{{hard_epochs}} {self.hard_epochs}: must be fewer than {{epochs}} {self.epochs} (the soft epochs come first)")
        if self.soft and self.granularity is not Granularity.channel:
            raise OptionError("{soft} re-selects filters (SFP/FPGM): it needs {granularity} channel")
        if self.sparsity_bn and self.epochs == 0:
            raise OptionError("{sparsity_bn} is a penalty while training: give {epochs} N")
        if self.reselect_every != 1 and not (self.soft or self.prune_schedule is not None):
            raise OptionError("{reselect_every} sets how often --soft or --prune-schedule agp re-select")
        if self.prune_epochs is not None:
            if self.prune_schedule is None:
                raise OptionError("{prune_epochs} is the length of the --prune-schedule agp ramp")
            if self.prune_epochs > self.epochs:
                raise OptionError(f"{{prune_epochs}} {self.prune_epochs}: longer than {{epochs}} {self.epochs}")
        if self.rewind != "none" and self.rounds is None:
            raise OptionError("{rewind} resets weights before each round: it needs {rounds} R")
        if self.epochs > 0 and self.compress:
            raise OptionError("{compress} with {epochs}: prune while training first, then `prunecli compress` the result")
        if modes and self.target_macs is not None:
            raise OptionError(f"{{target_macs}} searches one rate for one selection; {{{modes[0]}}} re-selects: give {{rate}}")
        if self.epochs == 0 and getattr(self, "teacher", None):
            raise OptionError("{teacher} distils while training: it needs {epochs} N")
        if self.rounds is not None and self.rounds * self.epochs > MAX_EPOCHS:
            raise OptionError(f"{{rounds}} {self.rounds} x {{epochs}} {self.epochs}: more than {MAX_EPOCHS:,} epochs in all")

    @property
    def training(self) -> bool:
        return self.epochs > 0

    def total_epochs(self) -> int:
        """Epochs the Trainer runs: --epochs, times --rounds."""
        return self.epochs * (self.rounds or 1)

    def agp_epochs(self) -> int:
        """T of the AGP ramp: --prune-epochs, or the first 75% of --epochs (Zhu & Gupta prune, then let the network recover)."""
        return self.prune_epochs if self.prune_epochs is not None else max(1, int(self.epochs * 0.75))

    def rewind_epoch(self) -> Optional[int]:
        """The epoch --rewind resets to (0 for init), or None."""
        m = REWIND.match(self.rewind)
        if m is None or m.group(1) == "none":
            return None
        return 0 if m.group(1) == "init" else int(m.group(2))

    def selection(self, count_rule: Optional[str] = None) -> Selection:
        """The Selection (``count_rule``: the resolved rule; None keeps the legacy defaults)."""
        return Selection(
            rate=self.rate,
            scope=self.scope.value,
            layer_rate=list(self.layer_rate),
            layer_rates=list(self.layer_rates),
            skip=list(self.skip),
            protect=self.protect.value,
            round_to=self.round_to_n,
            round_mode=self.round_mode.value,
            max_layer_rate=self.max_layer_rate,
            count_rule=count_rule,
        )
