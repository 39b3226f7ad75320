"""Latency: median of repeated, timed forward passes after warm-up, interleaved.

Interleaving matters on a shared, noisy machine: timing model A 20 times and then model
B 20 times lets a burst of background load land on one of them; alternating A, B, A, B
spreads it over both. For each model both memory formats are tried and the faster is
reported (on CPU channels_last is sometimes faster, sometimes slower).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from prunecli.engine.progress import step_bar


@dataclass(frozen=True)
class Latency:
    median_ms: float
    memory_format: str  # "contiguous" or "channels_last"
    batch_size: int
    runs: int


_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
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
) -> list[Latency]:
    """Latency of each model for one batch of ``input_shape``; models are restored afterwards."""
    x = torch.randn(batch_size, *input_shape, device=device)
    if x.dim() != 4:
        formats = ("contiguous",)
    states = [(m.training, next((p.device for p in m.parameters()), device)) for m in models]
    variants = [(i, f) for i in range(len(models)) for f in formats]
    samples: dict[tuple[int, str], list[float]] = {v: [] for v in variants}
    try:
        for m in models:
            m.eval().to(device)
        inputs = {f: x.contiguous(memory_format=_FORMATS[f]) for f in formats}
        for i, f in variants:
            models[i].to(memory_format=_FORMATS[f])
            for _ in range(warmup):
                models[i](inputs[f])
        _sync(device)
        started = time.perf_counter()
        # a large model's repeats take up to max_seconds (20 s) on a CPU: a bar on a terminal
        with step_bar("timing latency", repeats * len(variants), unit="passes") as bar:
            for r in range(repeats):
                for i, f in variants:
                    models[i].to(memory_format=_FORMATS[f])
                    _sync(device)
                    t0 = time.perf_counter()
                    models[i](inputs[f])
                    _sync(device)
                    samples[(i, f)].append((time.perf_counter() - t0) * 1000.0)
                    if bar is not None:
                        bar.advance(1)
                if r >= 4 and time.perf_counter() - started > max_seconds:
                    break
    finally:
        for m, (training, dev) in zip(models, states):
            m.to(memory_format=torch.contiguous_format).to(dev).train(training)
    out = []
    for i in range(len(models)):
        best = min(formats, key=lambda f: statistics.median(samples[(i, f)]))
        out.append(
            Latency(
                median_ms=statistics.median(samples[(i, best)]),
                memory_format=best,
                batch_size=batch_size,
                runs=len(samples[(i, best)]),
            )
        )
    return out


def measure_latency(model: torch.nn.Module, input_shape: tuple[int, ...], **kwargs) -> Latency:
    return measure_latencies([model], input_shape, **kwargs)[0]
