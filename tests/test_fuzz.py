"""Property-based fuzzing of the command-line options (issue 8), on a tiny model.

For `prune` and `train`, hypothesis picks a few options and a value for each: in range,
out of range, non-finite, huge, negative, a string with control characters, unicode, or
empty. Whatever it picks:

* no traceback and no internal error: exit 0, 1 or 2 with one error line;
* no hang: every run ends within 60 s (an alarm turns a hang into a failure);
* no exit 0 when a numeric value is outside the option's declared bounds or not finite;
* nothing written when the command fails; the output written when it succeeds.
"""

from __future__ import annotations

import math
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from prunecli.config import PruneConfig, TrainConfig
from prunecli.config._base import Kind, option_specs

# options a fuzzed run must not take: where it writes, what it reads, how long it runs
_LEFT_OUT = {"output", "resume", "config", "data", "download", "device", "overwrite", "epochs", "dataset", "model", "model_args", "workers", "teacher", "arch_from"}
_NASTY_STRINGS = ["", " ", "-", "--", "\x1b[2J", "a\nb", "é€😀", "../../etc/passwd", "*", "0", "-1", "1e999", "nan", "x" * 300]


def _numbers(spec) -> st.SearchStrategy:
    lo = spec.opt.min if spec.opt.min is not None else -1e6
    hi = spec.opt.max if spec.opt.max is not None else 1e6
    if spec.kind is Kind.INT:
        return st.one_of(
            st.integers(int(lo), int(min(hi, lo + 4))),  # in range, small
            st.integers(-(2**80), 2**80),
            st.sampled_from([-1, 0, 2**63, 2**63 - 1, int(hi) + 1]),
        )
    return st.one_of(
        st.floats(lo, min(hi, lo + 1.0)),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([-1.0, 0.0, 1.0, 1.5, 1e300, -1e-300]),
    )


def _value(spec) -> st.SearchStrategy:
    if spec.kind is Kind.BOOL:
        return st.none()  # a switch: given or not
    if spec.kind in (Kind.INT, Kind.FLOAT):
        return st.one_of(_numbers(spec).map(repr), st.sampled_from(_NASTY_STRINGS))
    if spec.kind is Kind.ENUM:
        return st.one_of(st.sampled_from([m.value for m in spec.choices]), st.sampled_from(_NASTY_STRINGS))
    if spec.kind in (Kind.INTS, Kind.FLOATS):
        return st.one_of(st.lists(_numbers(spec).map(repr), max_size=4).map(",".join), st.sampled_from(_NASTY_STRINGS))
    return st.sampled_from(_NASTY_STRINGS + ["conv1", "features.*=0.5", "1-3", "width=2"])


def _out_of_range(spec, text: str) -> bool:
    """Whether ``text`` is a number this option must refuse (outside bounds, not finite)."""
    def number(v: str):
        try:
            return int(v)  # exactly: 2**63 - 1 as a float rounds up past the bound
        except ValueError:
            return float(v)

    try:
        values = [number(v) for v in text.split(",") if v] if spec.kind in (Kind.INTS, Kind.FLOATS) else [number(text)]
    except ValueError:
        return False
    lo, hi = spec.opt.min, spec.opt.max
    return any(not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi) for v in values)


def _options(config_cls) -> st.SearchStrategy:
    specs = [s for s in option_specs(config_cls) if s.name not in _LEFT_OUT]
    return st.lists(st.sampled_from(specs), min_size=1, max_size=3, unique_by=lambda s: s.name).flatmap(
        lambda chosen: st.tuples(*(st.tuples(st.just(s), _value(s)) for s in chosen))
    )


def _hung(signum, frame):
    raise AssertionError("hung: no result within 60 s")


def _run_and_check(cli, command: list[str], picked) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.pt"
        args = list(command)
        for spec, value in picked:
            args += [f"--{spec.key}"] if value is None else [f"--{spec.key}", value]
        signal.signal(signal.SIGALRM, _hung)
        signal.alarm(60)  # no hang: a run that takes a minute here is one
        try:
            r = cli(*args, "-o", out)
        finally:
            signal.alarm(0)
        event(f"exit {r.code}")
        assert r.code in (0, 1, 2), (args, r.code, r.stderr)
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, (args, r.stderr)
        bad = [s.key for s, v in picked if v is not None and s.kind in (Kind.INT, Kind.FLOAT, Kind.INTS, Kind.FLOATS) and _out_of_range(s, v)]
        if bad:
            assert r.code != 0, (args, "accepted out-of-range", bad)
        if r.code == 0:
            assert out.exists(), args
        else:
            assert r.stderr.strip().splitlines()[-1].startswith("prunecli: error: "), (args, r.stderr)
            assert "\x1b" not in r.stderr and sorted(p.name for p in Path(tmp).iterdir()) == [], (args, r.stderr)


_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_FUZZ
@given(picked=_options(PruneConfig))
def test_fuzz_prune_options(cli, tiny_base, picked):
    _run_and_check(cli, ["prune", str(tiny_base), "--rate", "0.3"], picked)


@_FUZZ
@given(picked=_options(TrainConfig))
def test_fuzz_train_options(cli, picked):
    _run_and_check(cli, ["train", "--dataset", "synthetic", "--image-size", "8", "--model", "conv2", "--epochs", "0", "--device", "cpu"], picked)


@pytest.mark.parametrize("command", ["prune", "train"])
def test_fuzz_covers_every_numeric_option(command):
    """The fuzzer reaches each bounded option (a new option cannot escape it by accident)."""
    cls = PruneConfig if command == "prune" else TrainConfig
    numeric = {s.name for s in option_specs(cls) if s.kind in (Kind.INT, Kind.FLOAT)} - _LEFT_OUT
    assert numeric and all(s.opt.min is not None or s.kind is Kind.FLOAT for s in option_specs(cls) if s.name in numeric and s.kind is Kind.INT)
