"""Options of ``prunecli sensitivity``: a per-layer prune-rate sweep, and how rates are spelled.

``--rates`` is ``START:STOP:STEP`` (STOP included, as Distiller's and SparseML's sweeps
read) or a list ``R1,R2,...``; `parse_rates` turns either into sorted distinct rates in
(0, 1). Rate 0 is always measured once, as the baseline row, so a 0 in the list adds
nothing. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from prunecli.config._base import MAX_BATCH, PANEL_DATA, PANEL_OUT, PANEL_RUN, PANEL_WHAT, PANEL_WHERE, StageConfig, allow_nonfinite_option, option
from prunecli.config.prune import CountRule, Protect, StreamBN
from prunecli.config.methods import canonical_method
from prunecli.errors import OptionError

MAX_RATES = 1000  # a bound that catches a typo such as 0:0.9:0.0001 (9,000 evaluations per layer)


def parse_rates(text: str) -> list[float]:
    """``START:STOP:STEP`` or ``R1,R2,...`` -> sorted distinct rates in (0, 1); OptionError names {rates}."""
    spelled = str(text).replace(" ", "")
    try:
        if ":" in spelled:
            parts = spelled.split(":")
            if len(parts) != 3:
                raise ValueError
            start, stop, step = (float(p) for p in parts)
            for v in (start, stop, step):
                if not math.isfinite(v):
                    raise ValueError
            for what, v in (("START", start), ("STOP", stop)):
                if not 0.0 <= v < 1.0:
                    raise OptionError(f"{{rates}} {text!r}: {what} {v:g} is outside [0, 1) (a rate is the fraction removed)")
            if step <= 0 or stop < start:
                raise OptionError(f"{{rates}} {text!r}: expected START:STOP:STEP with START <= STOP and STEP > 0")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1  # STOP included despite float error
            if count > MAX_RATES:
                raise OptionError(f"{{rates}} {text!r}: {count:,} rates; at most {MAX_RATES:,}")
            rates = [round(start + i * step, 10) for i in range(count)]
        else:
            rates = [float(p) for p in spelled.split(",") if p]
            if not rates:
                raise ValueError
    except ValueError:
        raise OptionError(f"{{rates}} {text!r}: expected START:STOP:STEP (e.g. 0.1:0.9:0.1) or R1,R2,... (e.g. 0.2,0.5)") from None
    for r in rates:
        if math.isnan(r) or not (0.0 <= r < 1.0):
            raise OptionError(f"{{rates}} {text!r}: rate {r:g} is outside [0, 1) (a rate is the fraction removed)")
    if len(rates) > MAX_RATES:
        raise OptionError(f"{{rates}} {text!r}: {len(rates):,} rates; at most {MAX_RATES:,}")
    return sorted({r for r in rates if r > 0})


@dataclass(kw_only=True)
class SensitivityConfig(StageConfig):
    """``prunecli sensitivity``: prune one layer at a time at each rate, evaluate, restore."""

    command = "sensitivity"

    method: str = option("l1", help="Criterion that picks each layer's channels (prunecli list methods).", panel=PANEL_WHAT, flags=("-m",))
    # Distiller's and SparseML's default sweep: 10% steps up to 90%
    rates: str = option("0.1:0.9:0.1", help="Rates to try: START:STOP:STEP (STOP included) or R1,R2,...; rate 0 is the baseline row.", panel=PANEL_WHAT, metavar="RATES")
    # the same meaning as in prune, so a swept rate is the rate prune --layer-rate applies
    count_rule: CountRule = option(
        CountRule.reference, help="How many a rate removes (as prune: reference, keep-floor, remove-floor, remove-ceil, threshold).", panel=PANEL_WHAT
    )
    mix_norm: float = option(0.0, help="FPGM-mix (geomedian): share of the rate chosen by L2 norm.", panel=PANEL_WHAT, min=0.0, max=1.0)
    stream_bn: Optional[StreamBN] = option(
        None, help="PreResNet/DenseNet stream BatchNorms: select (default with slimming) or couple, as prune.", panel=PANEL_WHAT
    )
    layers: list[str] = option(
        default_factory=list, help="Sweep only the layers matching PATTERN (repeatable; glob or layer number; default: every prunable layer).", panel=PANEL_WHERE
    )
    protect: Protect = option(Protect.output, help="Never sweep the output layer (output), the linear head (head), or nothing (none).", panel=PANEL_WHERE)
    round_to: int = option(1, help="Keep channel counts multiples of N (as prune).", panel=PANEL_WHERE, min=1)
    dataset: Optional[str] = option(None, help="Dataset to evaluate on (default: the checkpoint's).", panel=PANEL_DATA)
    data: Optional[str] = option(None, help="Dataset root folder (default: the one the checkpoint records).", panel=PANEL_DATA, path=True)
    download: bool = option(False, help="Download CIFAR/MNIST into --data when online.", panel=PANEL_DATA, negatable=False)
    # None: the whole test split; N batches of --batch-size make a large sweep affordable
    eval_batches: Optional[int] = option(
        None, help="Evaluate on the first N batches of the test split (default: all of it).", panel=PANEL_DATA, min=1
    )
    # 8 batches of 64: enough for stable Taylor / Fisher rankings on CIFAR-sized nets (as prune)
    calib_batches: int = option(8, help="Calibration batches for data-driven criteria (taylor, hessian).", panel=PANEL_DATA, min=1)
    # 256: large batches use 2 CPU cores several times better than 64 on ResNet-56 (measured)
    batch_size: int = option(256, help="Evaluation batch size (also of calibration).", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    device: str = option("auto", help="auto, cpu, cuda or cuda:N (auto: this rank's GPU under torchrun).", panel=PANEL_RUN)
    workers: int = option(4, help="DataLoader workers for image-folder datasets.", panel=PANEL_RUN, min=0)
    seed: int = option(0, help="Seed of the random criterion and of calibration batches.", panel=PANEL_RUN, min=0, max=2**63 - 1)
    # exact and about twice as fast on ResNet-56; off by itself when the activations would not fit
    replay: bool = option(
        True,
        help="Replay the unpruned model's activations before each swept layer instead of recomputing them (exact; "
        "memory for the test split's activations, off above 2 GiB).",
        panel=PANEL_RUN,
    )
    allow_nonfinite: bool = allow_nonfinite_option()
    output: Optional[str] = option(
        None,
        help="Folder to write sensitivity.csv, .json and .png into (default: <checkpoint stem>.sensitivity beside it).",
        panel=PANEL_OUT,
        flags=("-o",),
        path=True,
        metavar="DIR",
    )
    overwrite: bool = option(False, help="Write into an existing non-empty --output folder (otherwise refused).", panel=PANEL_OUT, negatable=False)

    def validate(self) -> None:
        self.method = canonical_method(self.method)  # fpgm -> geomedian: lineage records the registered name
        super().validate()
        if not self.rate_list():
            raise OptionError(f"{{rates}} {self.rates!r}: no rate above 0 to sweep")

    def rate_list(self) -> list[float]:
        """The rates above 0 to try, sorted (rate 0 is the baseline row)."""
        return parse_rates(self.rates)
