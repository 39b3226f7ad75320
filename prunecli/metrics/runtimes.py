"""Latency in the runtime a model is deployed with: eager PyTorch, TorchScript, ONNX Runtime.

`measure_latencies` (prunecli.metrics.latency) times eager ``nn.Module``s. An exported
file runs elsewhere: a TorchScript module through ``torch.jit.load``, an ONNX file through
an ONNX Runtime session. Here each of them is a `Runtime`: a name and a callable that runs
one batch. `measure_runtimes` times several of them the same way `measure_latencies`
times modules (warm-up, then interleaved repeats, each starting at the next runtime in
turn; median with its spread, the machine's load average) and returns the same `Latency` records, so a report treats them alike.

``threads`` applies to every runtime: PyTorch's intra-op threads for eager and TorchScript
(set around the measurement), and the session's ``intra_op_num_threads`` for ONNX Runtime
(fixed when the session is made: `onnxruntime_runtime` takes it). One thread gives steady
numbers on a shared machine; left unset, each runtime uses its own default (all cores).

Memory format: inputs are contiguous (NCHW). An exported graph has its layout fixed at
export; only eager PyTorch chooses per call, and `measure_latencies` covers that.

onnxruntime is optional (``pip install 'prunecli[onnx]'``): `onnxruntime_runtime` raises a
one-line `PruneCliError` saying so when it is missing.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from prunecli.errors import PruneCliError
from prunecli.metrics.latency import Latency, intra_op_threads, load_average, pin_allocator

ONNX_EXTRA = "pip install 'prunecli[onnx]'"

EAGER, TORCHSCRIPT, ONNXRUNTIME = "eager", "torchscript", "onnxruntime"


@dataclass
class Runtime:
    """A model in one runtime: ``run(x)`` computes one batch (a CPU tensor in, outputs out)."""

    name: str  # eager, torchscript or onnxruntime
    run: Callable[[torch.Tensor], Any]
    threads: Optional[int] = None  # threads it was made with, where the runtime fixes them (ONNX Runtime)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The outputs as a torch tensor (ONNX Runtime's numpy array converted)."""
        out = self.run(x)
        return torch.from_numpy(out) if not isinstance(out, torch.Tensor) else out


def eager_runtime(model: torch.nn.Module) -> Runtime:
    model.eval()
    return Runtime(EAGER, model)


def torchscript_runtime(source: Union[str, Path, bytes, torch.jit.ScriptModule]) -> Runtime:
    """A TorchScript module, or a file (path or bytes) that ``torch.jit.load`` reads, on the CPU."""
    if isinstance(source, torch.jit.ScriptModule):
        module = source
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.14: torch.jit is deprecated in favour of torch.export
                module = torch.jit.load(io.BytesIO(source) if isinstance(source, bytes) else str(source), map_location="cpu")
        except Exception as e:
            raise PruneCliError(f"{_what(source)}: not a loadable TorchScript file ({type(e).__name__}: {_first_line(e)})") from None
    module.eval()
    return Runtime(TORCHSCRIPT, module)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnxruntime_runtime(source: Union[str, Path, bytes], *, threads: Optional[int] = None) -> Runtime:
    """An ONNX Runtime CPU session on an ONNX file (path or bytes) whose one input is the batch."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise PruneCliError(f"ONNX Runtime is not installed: {ONNX_EXTRA}") from None
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1  # a CNN's graph is a chain: no parallel branches worth a second pool
    opts.log_severity_level = 3  # errors only: its warnings are not ours to print
    try:
        session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise PruneCliError(f"{_what(source)}: ONNX Runtime cannot load it ({type(e).__name__}: {_first_line(e)})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PruneCliError(f"{_what(source)}: the ONNX graph takes {len(inputs)} inputs; prunecli runs models of one input")
    name = inputs[0].name

    def run(x: torch.Tensor):
        return session.run(None, {name: x.detach().cpu().contiguous().numpy()})[0]

    return Runtime(ONNXRUNTIME, run, threads=threads)


def open_exported(path: Union[str, Path], *, threads: Optional[int] = None) -> Runtime:
    """The runtime a file needs, told by its content: a zip archive is TorchScript, else ONNX."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise PruneCliError(f"{path}: cannot read: {(e.strerror or str(e)).lower()}") from None
    if head.startswith(b"PK\x03\x04"):
        return torchscript_runtime(path)
    return onnxruntime_runtime(path, threads=threads)


def measure_runtimes(
    runtimes: Sequence[Runtime],
    input_shape: tuple[int, ...],
    *,
    batch_size: int = 64,
    warmup: int = 3,
    repeats: int = 15,
    max_seconds: float = 20.0,
    threads: Optional[int] = None,
) -> list[Latency]:
    """Latency of each runtime for one CPU batch of ``input_shape``, timed interleaved (module docstring).

    ``threads``: PyTorch's intra-op threads during the measurement (None: as they are);
    an ONNX Runtime session keeps the threads it was made with (its `Runtime.threads`).
    """
    with intra_op_threads(threads) as used:
        return _measure(list(runtimes), input_shape, batch_size, warmup, repeats, max_seconds, used)


@torch.inference_mode()
def _measure(runtimes: list[Runtime], input_shape, batch_size: int, warmup: int, repeats: int, max_seconds: float, threads: int) -> list[Latency]:
    pin_allocator()
    load = load_average()
    x = torch.randn(batch_size, *input_shape)
    samples: list[list[float]] = [[] for _ in runtimes]
    for rt in runtimes:
        for _ in range(warmup):
            rt.run(x)
    started = time.perf_counter()
    n = len(runtimes)
    for r in range(repeats):
        # each repeat starts at the next runtime: none always runs right after the same other
        # one (a large model's freed activations, caches it cooled), whose cost it would inherit
        for i in [(r + k) % n for k in range(n)]:
            t0 = time.perf_counter()
            runtimes[i].run(x)
            samples[i].append((time.perf_counter() - t0) * 1000.0)
        if r >= 4 and time.perf_counter() - started > max_seconds:
            break
    out = []
    for rt, runs in zip(runtimes, samples):
        threads_used = rt.threads if rt.name == ONNXRUNTIME and rt.threads is not None else threads
        out.append(Latency.of_runs(runs, memory_format="contiguous", batch_size=batch_size, threads=threads_used, device="cpu", load=load))
    return out


def _what(source: Any) -> str:
    return "the exported model" if isinstance(source, (bytes, torch.jit.ScriptModule)) else str(source)


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else ""
