"""Latency: median of repeated, timed forward passes after warm-up, interleaved, with its spread.

Interleaving matters on a shared, noisy machine: timing model A 20 times and then model
B 20 times lets a burst of background load land on one of them; alternating A, B, A, B
spreads it over both. For each model both memory formats are tried and the faster is
reported (on CPU channels_last is sometimes faster, sometimes slower).

A median alone hides how noisy the runs were: each `Latency` keeps the spread (min,
quartiles, max), the threads, device, batch size and memory format it was measured with,
and the machine's load average, and `unreliable` says in one line when a comparison of
them means nothing (a wide spread, or more runnable processes than cores). ``threads``
pins PyTorch's intra-op threads for the measurement: on a shared 2-core machine, dense
conv4 at batch 64 measured 68, 784, 151 and 63 ms in four runs with the default threads,
and a sane ratio with one thread.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

# IQR / median above this: the runs disagree too much for a ratio of medians to mean much
WIDE_SPREAD = 0.25

from prunecli._progress import step_bar


@dataclass(frozen=True)
class Latency:
    median_ms: float
    memory_format: str  # "contiguous" or "channels_last"
    batch_size: int
    runs: int
    min_ms: float = 0.0
    q1_ms: float = 0.0  # first and third quartiles of the runs, ms
    q3_ms: float = 0.0
    max_ms: float = 0.0
    threads: int = 0  # PyTorch intra-op threads during the measurement
    device: str = "cpu"
    load: Optional[float] = None  # 1-minute load average when measured (None where the OS has none)
    warmup: int = 0  # untimed passes per model and memory format before the timed ones
    seconds: float = 0.0  # wall time of the whole measurement (warm-up and every model), s
    stopped: str = ""  # why the timed rounds ended: "repeats", "stable" or "budget"

    @classmethod
    def of_runs(cls, runs: list[float], **conditions) -> "Latency":
        """The median, quartiles and extremes of ``runs`` (ms), with how they were measured."""
        q1, q3 = _quartiles(runs)
        return cls(median_ms=statistics.median(runs), runs=len(runs), min_ms=min(runs), q1_ms=q1, q3_ms=q3, max_ms=max(runs), **conditions)

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.1 = the middle half of the runs within 10%)."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def describe(self) -> str:
        """``"3.21 ms (IQR 3.10-3.40, min-max 3.02-4.11, 15 runs)"``."""
        return (
            f"{self.median_ms:.2f} ms (IQR {self.q1_ms:.2f}-{self.q3_ms:.2f}, min-max {self.min_ms:.2f}-{self.max_ms:.2f}, "
            f"{self.runs} runs)"
        )

    def conditions(self) -> str:
        """How it was measured: ``"batch 64, 1 thread, channels_last, cpu"`` (and, from a
        budgeted measurement, ``", 1 warm-up, 6.1 s, stopped: budget"``)."""
        text = f"batch {self.batch_size}, {self.threads} thread{'s' if self.threads != 1 else ''}, {self.memory_format}, {self.device}"
        if self.stopped:
            text += f", {self.warmup} warm-up{'s' if self.warmup != 1 else ''}, {self.seconds:.1f} s, stopped: {self.stopped}"
        return text

    def to_json(self) -> dict:
        return {
            "median_ms": round(self.median_ms, 4),
            "q1_ms": round(self.q1_ms, 4),
            "q3_ms": round(self.q3_ms, 4),
            "min_ms": round(self.min_ms, 4),
            "max_ms": round(self.max_ms, 4),
            "runs": self.runs,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "memory_format": self.memory_format,
            "device": self.device,
            "load": self.load,
            "warmup": self.warmup,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
        }


def load_average() -> Optional[float]:
    """The 1-minute load average, or None where the OS does not report one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def unreliable(latencies: list[Latency]) -> Optional[str]:
    """One line saying why a comparison of these latencies is not meaningful, or None.

    A wide spread (IQR above `WIDE_SPREAD` of the median) in any of them, or a load
    average above the cores (other processes competed for them) on a CPU measurement.
    """
    if not latencies:
        return None
    wide = [lat for lat in latencies if lat.spread > WIDE_SPREAD]
    if wide:
        worst = max(wide, key=lambda lat: lat.spread)
        hint = " (try --threads 1 on a shared machine)" if worst.device == "cpu" and worst.threads != 1 else ""
        return f"latency runs vary widely (IQR {worst.spread:.0%} of the median): the latency ratio is not meaningful{hint}"
    cores = os.cpu_count() or 1
    loaded = [lat.load for lat in latencies if lat.device == "cpu" and lat.load is not None and lat.load > cores]
    if loaded:
        return f"the machine is loaded (load average {max(loaded):.1f} on {cores} cores): the latency ratio may not be meaningful"
    return None


@contextlib.contextmanager
def intra_op_threads(threads: Optional[int]) -> Iterator[int]:
    """PyTorch's intra-op threads set to ``threads`` (None: as they are) for the block; yields the count in use."""
    before = torch.get_num_threads()
    if threads is not None and threads != before:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# glibc mallopt parameters (malloc.h): M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, bytes): larger values are refused
_MMAP_MAX = 32 * 1024 * 1024
_pinned: list[bool] = []


def pin_allocator() -> bool:
    """Keep glibc malloc from handing each large activation fresh pages (once per process; whether it applied).

    Why: glibc serves an allocation above its *dynamic* mmap threshold with new pages from
    the kernel, and every page faults on first write. Which activations that hits depends
    on the process's allocation history, so the same layer timed twice differs by more than
    its own compute: a conv3x3 64->64 at 16x16, batch 64, 1 thread (4 MiB output) took
    18.1-19.0 ms under the default allocator and 11.3 ms with the thresholds pinned, while
    64->63 (3.9 MiB) took 11.1-11.8 ms in both, so one width looked 60% dearer than its
    neighbour and a layer alone disagreed with the same layer inside the model. Pinning the
    mmap threshold at glibc's ceiling (32 MiB) and never trimming the heap is the steady state
    a long-running process reaches (the threshold only rises as mmapped blocks are freed);
    tcmalloc/jemalloc, which PyTorch recommends for CPU inference, reuse memory the same way.
    Every latency prunecli reports is timed after it: the tables, compress, evaluate, export.
    ``PRUNECLI_MALLOC=default`` leaves the allocator alone; off glibc this does nothing.
    """
    if _pinned:
        return _pinned[0]
    ok = False
    if os.environ.get("PRUNECLI_MALLOC", "").lower() != "default":
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
        except (OSError, AttributeError):
            ok = False
    _pinned.append(ok)
    return ok


def measure_latencies(
    models: list[torch.nn.Module],
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 64,
    device: torch.device = torch.device("cpu"),
    warmup: int = 3,
    repeats: int = 15,
    max_seconds: float = 20.0,
    formats: tuple[str, ...] = ("contiguous", "channels_last"),
    threads: Optional[int] = None,
    min_repeats: int = 5,
) -> list[Latency]:
    """Latency of each model for one batch of ``input_shape``; models are restored afterwards.

    ``threads``: PyTorch intra-op threads for the measurement (None: as they are).

    Rounds of interleaved passes (one per model and memory format) run until ``repeats``
    rounds are done, or, after ``min_repeats`` rounds, until ``max_seconds`` (counted from
    the first warm-up pass, so the budget covers everything) is spent or every model's
    runs are stable (interquartile range within `STABLE_SPREAD` of the median: more
    rounds would not move the median much). Every model is warmed up in every memory
    format; when that alone takes more than a quarter of the budget, each model's rounds
    use only the format its warm-up pass was faster in (tv ResNet-50 at batch 32 on a CPU
    takes 1.9-3 s a pass: timing both formats doubled a 35 s measurement). Each `Latency`
    records the warm-up passes, the seconds spent and why the rounds stopped.
    """
    with intra_op_threads(threads) as used:
        return _measure(models, input_shape, batch_size, device, warmup, repeats, max_seconds, formats, used, min_repeats)


# IQR / median below this after `min_repeats` rounds: the medians are settled, stop early
STABLE_SPREAD = 0.05


def _stable(samples: dict, tried: dict[int, tuple[str, ...]]) -> bool:
    """Is every model's interquartile range (in its faster format) within `STABLE_SPREAD` of its median?"""
    for i, formats in tried.items():
        best = min(formats, key=lambda f: statistics.median(samples[(i, f)]))
        runs = samples[(i, best)]
        q1, q3 = _quartiles(runs)
        if (q3 - q1) > STABLE_SPREAD * statistics.median(runs):
            return False
    return True


@torch.inference_mode()
def _measure(models, input_shape, batch_size, device, warmup, repeats, max_seconds, formats, threads: int, min_repeats: int = 5) -> list[Latency]:
    pin_allocator()
    load = load_average()
    started = time.perf_counter()
    x = torch.randn(batch_size, *input_shape, device=device)
    formats = tuple(formats)
    if x.dim() != 4:
        formats = ("contiguous",)
    states = [(m.training, next((p.device for p in m.parameters()), device)) for m in models]
    min_repeats = max(1, min(min_repeats, repeats))
    stopped = "repeats"
    try:
        for m in models:
            m.eval().to(device)
        inputs = {f: x.contiguous(memory_format=_FORMATS[f]) for f in formats}
        first: dict[tuple[int, str], float] = {}  # each variant's last warm-up pass, s
        for f in formats:
            for i in range(len(models)):
                models[i].to(memory_format=_FORMATS[f])
                for _ in range(warmup):
                    _sync(device)
                    t0 = time.perf_counter()
                    models[i](inputs[f])
                    _sync(device)
                    first[(i, f)] = time.perf_counter() - t0
        tried = {i: formats for i in range(len(models))}
        if len(formats) > 1 and first and time.perf_counter() - started > max_seconds / 4:
            # the warm-up alone ate a quarter of the budget: each model's rounds use the format
            # its warm-up pass was faster in (tv ResNet-50, batch 32, CPU: 1.9 s channels_last, 3.0 s contiguous)
            tried = {i: (min(formats, key=lambda f: first[(i, f)]),) for i in range(len(models))}
        variants = [(i, f) for i in range(len(models)) for f in tried[i]]
        samples: dict[tuple[int, str], list[float]] = {v: [] for v in variants}
        # a large model's rounds take up to max_seconds on a CPU: a bar on a terminal
        with step_bar("timing latency", repeats * len(variants), unit="passes") as bar:
            for r in range(repeats):
                for i, f in variants[r % len(variants):] + variants[: r % len(variants)]:  # each round starts at the next variant
                    models[i].to(memory_format=_FORMATS[f])
                    _sync(device)
                    t0 = time.perf_counter()
                    models[i](inputs[f])
                    _sync(device)
                    samples[(i, f)].append((time.perf_counter() - t0) * 1000.0)
                    if bar is not None:
                        bar.advance(1)
                if r + 1 >= min_repeats and r + 1 < repeats:
                    if time.perf_counter() - started > max_seconds:
                        stopped = "budget"
                        break
                    if _stable(samples, tried):
                        stopped = "stable"
                        break
    finally:
        for m, (training, dev) in zip(models, states):
            m.to(memory_format=torch.contiguous_format).to(dev).train(training)
    seconds = time.perf_counter() - started
    out = []
    for i in range(len(models)):
        best = min(tried[i], key=lambda f: statistics.median(samples[(i, f)]))
        runs = samples[(i, best)]
        out.append(
            Latency.of_runs(
                runs, memory_format=best, batch_size=batch_size, threads=threads, device=str(device), load=load, warmup=warmup, seconds=seconds, stopped=stopped
            )
        )
    return out


def measure_latency(model: torch.nn.Module, input_shape: tuple[int, ...], **kwargs) -> Latency:
    return measure_latencies([model], input_shape, **kwargs)[0]
