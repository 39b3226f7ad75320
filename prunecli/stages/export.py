"""`export`: a checkpoint's model as a TorchScript or ONNX file, BatchNorm folded, checked before it is written.

    prunecli export small.pt --format torchscript -o small.torchscript.pt
    prunecli export small.pt -o small.onnx            # the format follows the .onnx suffix

What happens, in order (the output is claimed first; nothing is written unless every
step passes):

1. The checkpoint's model is rebuilt (masks applied, eval mode).
2. **A masked, not compressed, checkpoint is refused**, with the ``prunecli compress``
   command to run: its pruned channels are zeros that the exported graph would still
   compute, so the file would be as slow as the dense model, which is never what
   exporting a pruned model is for. Compressing is its own stage with its own check
   (masked == compressed) and report; export does not do it silently. A checkpoint whose
   masks only zero single weights inside kept channels (weight-level pruning, after
   compress) exports, with a note: those zeros stay in the file and give no speed-up.
3. BatchNorms that directly follow a conv are folded into it (prunecli.models.folding;
   ``--no-fold-bn`` keeps them). Where Torch-Pruning cannot trace the model (ShuffleNetV2)
   the model is exported unfolded, with a note.
4. The model is exported on the CPU: TorchScript by ``torch.jit.trace`` (Python control
   flow is recorded for the traced shapes; the batch dimension stays free), ONNX by
   ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``; it needs
   the ``onnx`` package, which the ``onnx`` extra installs; the newer exporter also needs
   ``onnxscript``) and a free batch dimension.
5. **The check**: the exported bytes are loaded back in their runtime (``torch.jit.load``;
   an ONNX Runtime session) and run on the fixed probe batch
   (prunecli.surgery.equivalence); their outputs are compared with the checkpoint's own,
   unfolded model. A difference beyond float tolerance is an error. Without onnxruntime
   an ONNX file is written unchecked, and the report says so in one note line.
6. The file is written atomically. It carries a small JSON record (TorchScript: the extra
   file ``prunecli.json``; ONNX: the ``prunecli`` metadata property): the input shape,
   the dataset normalisation the model expects its inputs in, the class count, the
   source checkpoint and its sha256, the prunecli version.

``--latency`` also times the checkpoint's eager model against the exported file in its
runtime, interleaved (prunecli.metrics.runtimes).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from prunecli import __version__
from prunecli.checkpoint import Checkpoint, sha256_file
from prunecli.config.export import SUFFIX, ExportConfig, ExportFormat
from prunecli.errors import PruneCliError
from prunecli.metrics.runtimes import (
    EAGER,
    ONNX_EXTRA,
    ONNXRUNTIME,
    TORCHSCRIPT,
    Runtime,
    eager_runtime,
    measure_runtimes,
    onnxruntime_available,
    onnxruntime_runtime,
    torchscript_runtime,
)
from prunecli.models import example_input
from prunecli.models.folding import fold_batchnorm
from prunecli.models.structure import first_line
from prunecli.outputs import atomic_write, claim_output
from prunecli.stages.checkpoints import load_model
from prunecli.surgery.equivalence import REL_TOLERANCE, difference, outputs, probe_batch

METADATA_KEY = "prunecli"  # TorchScript extra file prunecli.json; ONNX metadata property "prunecli"
TRACE_BATCH = 2  # traced at 2, checked at the probe's 8: a graph that baked the batch size in fails the check


@dataclass
class ExportReport:
    output: Path
    format: str
    folded: int  # BatchNorms folded into convs
    max_abs_diff: Optional[float]  # exported vs the checkpoint's model on the probe batch; None: not checked
    checked_with: Optional[str]  # the runtime that ran the check (torchscript, onnxruntime), None: unchecked
    size: int  # bytes written
    notes: list[str] = field(default_factory=list)
    latency: Optional[dict[str, Any]] = None  # eager vs exported: medians, spreads, conditions

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "format": self.format,
            "batchnorm_folded": self.folded,
            "max_abs_diff": self.max_abs_diff,
            "checked_with": self.checked_with,
            "size": self.size,
            "latency": self.latency,
            "notes": self.notes,
        }


def default_output(source: Path, fmt: ExportFormat) -> Path:
    """``<stem>.torchscript.pt`` or ``<stem>.onnx`` beside the checkpoint."""
    return source.with_name(f"{source.stem}.torchscript.pt" if fmt is ExportFormat.torchscript else f"{source.stem}{SUFFIX[fmt]}")


def export_checkpoint(source: Path, cfg: Optional[ExportConfig] = None, *, output: Optional[Path] = None) -> ExportReport:
    """Export ``source``'s model (module docstring); the output is claimed before any work."""
    cfg = cfg or ExportConfig()
    source = Path(source)
    fmt = cfg.resolved_format()
    output = Path(output if output is not None else cfg.output if cfg.output is not None else default_output(source, fmt))
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise PruneCliError(f"--output {output} is the input checkpoint; write the export elsewhere")
    with claim_output(output, overwrite=cfg.overwrite):
        return _export(source, cfg, fmt, output)


def _export(source: Path, cfg: ExportConfig, fmt: ExportFormat, output: Path) -> ExportReport:
    if fmt is ExportFormat.onnx:
        _require_onnx()  # before the model is even loaded: the one thing the user must install
    ckpt, model = load_model(source, allow_nonfinite=cfg.allow_nonfinite)
    spec = ckpt.model
    notes: list[str] = []
    _refuse_masked(ckpt, model, source)
    left = sum(int((~m).sum()) for m in ckpt.masks.values())
    if left:
        notes.append(f"{left:,} masked weights are exported as zeros inside the kept layers (weight-level sparsity gives no speed-up here)")

    probe = probe_batch(spec)
    expected = outputs(model, probe)
    example = example_input(spec, batch=TRACE_BATCH)
    if cfg.fold_bn:
        net, folded, note = folded_copy(model, spec, probe=probe, expected=expected)
        if note:
            notes.append(note)
    else:
        net, folded = copy.deepcopy(model).eval(), 0

    metadata = _metadata(ckpt, source, folded)
    if fmt is ExportFormat.torchscript:
        data = _torchscript_bytes(net, example, metadata, spec.name)
        runtime = torchscript_runtime(data)
    else:
        data = _onnx_bytes(net, example, metadata, spec.name, cfg.opset)
        runtime = None
        if onnxruntime_available():
            runtime = onnxruntime_runtime(data, threads=cfg.threads or torch.get_num_threads())
        else:
            notes.append(f"onnxruntime is not installed: the ONNX file was not checked against the checkpoint ({ONNX_EXTRA})")

    diff = None
    if runtime is not None:
        with torch.inference_mode():
            got = runtime(probe)
        diff, same = difference(expected, got)
        if not same:
            raise PruneCliError(
                f"{source}: the exported {fmt.value} model differs from the checkpoint's (max |diff| {diff:.3g} on the probe batch, "
                f"tolerance {REL_TOLERANCE:g} of the output scale); nothing written"
            )
    latency = _latency(model, runtime, spec, cfg) if cfg.latency and runtime is not None else None
    if cfg.latency and runtime is None:
        notes.append("latency not measured: ONNX Runtime is not installed")
    atomic_write(output, lambda f: f.write(data))
    return ExportReport(
        output=output,
        format=fmt.value,
        folded=folded,
        max_abs_diff=diff,
        checked_with=runtime.name if runtime is not None else None,
        size=len(data),
        notes=notes,
        latency=latency,
    )


def deployed_runtime(model: torch.nn.Module, spec, runtime: str, *, threads: Optional[int] = None, fold_bn: bool = True) -> tuple[Runtime, int]:
    """(``model`` in ``runtime`` as `export` would write it, BatchNorms folded): for timing it where it is deployed.

    ``runtime``: eager (a folded copy of the module), torchscript or onnxruntime (the bytes
    `export` would write, opened in memory). ``model`` itself is not changed. A model that
    Torch-Pruning cannot trace is used unfolded. The second value counts the folded
    BatchNorms. onnxruntime (and onnx, which writes the file) missing: one-line error.
    """
    require_runtime(runtime)
    model = copy.deepcopy(model).cpu()  # the caller's module stays where it is (a GPU evaluation goes on there)
    if fold_bn:
        net, folded, _ = folded_copy(model, spec)
    else:
        net, folded = model.eval(), 0
    if runtime == EAGER:
        return eager_runtime(net), folded
    example = example_input(spec, batch=TRACE_BATCH)
    if runtime == TORCHSCRIPT:
        return torchscript_runtime(_torchscript_bytes(net, example, {}, spec.name)), folded
    return onnxruntime_runtime(_onnx_bytes(net, example, {}, spec.name, None), threads=threads or torch.get_num_threads()), folded


def folded_copy(model: torch.nn.Module, spec, *, probe: Optional[torch.Tensor] = None, expected=None) -> tuple[torch.nn.Module, int, Optional[str]]:
    """(a copy of ``model`` with its BatchNorms folded, how many are folded, a note or None); ``model`` is unchanged.

    The fold is checked against the unfolded model on the probe batch: the trace that finds
    the pairs sees only what autograd records, so a conv output that is also read without
    a gradient (``conv_out > 0`` as a gate) looks foldable and is not. Then the copy stays
    unfolded, and the note says so; so it does where Torch-Pruning cannot trace the model.
    BatchNorms that an earlier ``compress --fold-bn`` folded count as folded.
    """
    from prunecli.models.folding import FoldedBatchNorm

    before = sum(isinstance(m, FoldedBatchNorm) for m in model.modules())
    net = copy.deepcopy(model).eval()
    try:
        folded = fold_batchnorm(net, example_input(spec), name=spec.name)
    except PruneCliError as e:  # Torch-Pruning cannot trace it: as it is
        return copy.deepcopy(model).eval(), before, f"BatchNorm not folded: {e}"
    if folded:
        probe = probe if probe is not None else probe_batch(spec)
        expected = expected if expected is not None else outputs(model, probe)
        diff, same = difference(expected, outputs(net, probe))
        if not same:
            return copy.deepcopy(model).eval(), before, (
                f"BatchNorm not folded: folding changed the outputs (max |diff| {diff:.3g}): a conv output is also read where the trace "
                "does not see it; left unfolded"
            )
    if folded + before == 0:
        return net, 0, "no BatchNorm directly follows a conv in this model: nothing to fold"
    if not folded:
        return net, before, f"its {before} BatchNorm(s) were folded already (compress --fold-bn)"
    return net, folded + before, None


def require_runtime(runtime: str) -> None:
    """One line when ``runtime`` cannot run here (onnxruntime and onnx are the optional extra)."""
    if runtime == ONNXRUNTIME:
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise PruneCliError(f"--runtime onnxruntime needs the onnx package (the model is exported through it) and ONNX Runtime: {ONNX_EXTRA}") from None
        if not onnxruntime_available():
            raise PruneCliError(f"--runtime onnxruntime needs ONNX Runtime, which is not installed: {ONNX_EXTRA}")
    elif runtime not in (EAGER, TORCHSCRIPT):
        raise PruneCliError(f"unknown runtime {runtime!r}: valid: {EAGER}, {TORCHSCRIPT}, {ONNXRUNTIME}")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise PruneCliError(f"--format onnx needs the onnx package (torch's ONNX exporter writes through it): {ONNX_EXTRA}") from None


def _refuse_masked(ckpt: Checkpoint, model: torch.nn.Module, source: Path) -> None:
    """A masked checkpoint whose zeroed channels compress would remove is refused (module docstring, step 2)."""
    if not ckpt.masks:
        return
    from prunecli.surgery.pruner import Pruner

    plan = Pruner(model, example_input=example_input(ckpt.model), name=ckpt.model.name).plan_zeroed()
    channels = sum(len(p.prune) for p in plan.pruned)
    if channels:
        raise PruneCliError(
            f"{source} is masked, not compressed: {channels:,} channels in {len(plan.pruned)} layer groups are zeros the exported "
            f"model would still compute; compress it first (prunecli compress {source}) and export the result"
        )


def _metadata(ckpt: Checkpoint, source: Path, folded: int) -> dict[str, Any]:
    spec, data = ckpt.model, ckpt.dataset
    return {
        "prunecli_version": __version__,
        "source": str(source),
        "source_sha256": sha256_file(source),
        "model": spec.name,
        "input_shape": [spec.in_channels, spec.image_size, spec.image_size],
        "num_classes": spec.num_classes,
        # inputs are expected normalised as the model was trained: (x - mean) / std per channel
        "normalization": {"mean": list(data.mean), "std": list(data.std)} if data is not None else None,
        "dataset": data.name if data is not None else None,
        "batchnorm_folded": folded,
    }


def _torchscript_bytes(net: torch.nn.Module, example: torch.Tensor, metadata: dict, name: str) -> bytes:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on Python branches: the check below is the judge
            traced = torch.jit.trace(net, example, check_trace=False)
            buf = io.BytesIO()
            # torch 2.14 marks torch.jit deprecated in favour of torch.export: it still works, and is what libtorch loads
            torch.jit.save(traced, buf, _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
    except Exception as e:
        raise PruneCliError(f"cannot export {name} to TorchScript: {type(e).__name__}: {first_line(e)[:300]}") from None
    return buf.getvalue()


@contextlib.contextmanager
def _stdout_to_stderr():
    """File descriptor 1 pointed at 2 for the duration: on a failure torch's ONNX exporter prints
    the whole traced graph from C++ ("Torch IR graph at exception"), which Python's
    redirection does not catch, and stdout is only for the output path or the JSON."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no fd 1 (an embedded interpreter): nothing to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _onnx_bytes(net: torch.nn.Module, example: torch.Tensor, metadata: dict, name: str, opset: Optional[int]) -> bytes:
    import onnx

    buf = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _stdout_to_stderr():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice and tracer warnings
            torch.onnx.export(
                net,
                (example,),
                buf,
                dynamo=False,  # the TorchScript-based exporter: the dynamo one needs onnxscript as well
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                opset_version=opset,
            )
        proto = onnx.load_model_from_string(buf.getvalue())
        onnx.checker.check_model(proto)
    except Exception as e:
        raise PruneCliError(f"cannot export {name} to ONNX: {type(e).__name__}: {first_line(e)[:300]}") from None
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return proto.SerializeToString()


def _latency(model: torch.nn.Module, runtime, spec, cfg: ExportConfig) -> dict[str, Any]:
    """The checkpoint's eager model and the exported file, timed interleaved."""
    from prunecli.metrics.latency import unreliable

    shape = (spec.in_channels, spec.image_size, spec.image_size)
    eager, exported = measure_runtimes([eager_runtime(model), runtime], shape, batch_size=cfg.batch_size, repeats=cfg.repeats, threads=cfg.threads)
    return {
        "eager": eager.to_json(),
        runtime.name: exported.to_json(),
        "runtime": runtime.name,
        "conditions": f"batch {eager.batch_size}, {eager.threads} thread{'s' if eager.threads != 1 else ''}, contiguous, cpu",
        "speedup": eager.median_ms / exported.median_ms if exported.median_ms > 0 else None,
        "unreliable": unreliable([eager, exported]),
    }
