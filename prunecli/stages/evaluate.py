"""`evaluate`: accuracy, loss, MACs, params, latency and per-layer widths of checkpoints.

Side by side, a checkpoint is compared with its own ancestor when that ancestor is in the
same table (`ancestor_columns`): ratios between unrelated models say nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from prunecli.checkpoint import load_checkpoint, sha256_file
from prunecli.config import EvaluateConfig
from prunecli.data.loaders import make_batches
from prunecli.engine.distributed import resolve_device
from prunecli.engine.loop import evaluate
from prunecli.errors import PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli._console import log, warn
from prunecli.metrics.latency import measure_latencies, unreliable
from prunecli.metrics.runtimes import measure_runtimes
from prunecli.metrics.layers import LayerInfo, layer_table
from prunecli.stages.checkpoints import data_for_checkpoint, rebuild_model, shuffled_label_seed
from prunecli.stages.export import deployed_runtime, require_runtime


@dataclass
class Report:
    checkpoint: str
    stage: str
    model: str
    dataset: str
    top1: float
    top5: float
    loss: float
    samples: int
    macs: int
    params: int
    nonzero_params: int
    latency_ms: Optional[float] = None
    latency_batch_size: Optional[int] = None
    memory_format: Optional[str] = None
    layers: list[LayerInfo] = field(default_factory=list)
    latency: Optional[dict] = None  # spread, threads, device: prunecli.metrics.latency.Latency.to_json
    sha256: Optional[str] = None  # of the file evaluated
    ancestors: list[str] = field(default_factory=list)  # parent files' sha256 from the lineage, oldest first

    def to_json(self, with_layers: bool = False) -> dict:
        d = {
            "checkpoint": self.checkpoint,
            "top1": round(self.top1, 4),
            "top5": round(self.top5, 4),
            "loss": round(self.loss, 6),
            "macs": self.macs,
            "params": self.params,
            "latency_ms": round(self.latency_ms, 4) if self.latency_ms is not None else None,
            "nonzero_params": self.nonzero_params,
            "model": self.model,
            "dataset": self.dataset,
            "stage": self.stage,
            "samples": self.samples,
            "latency_batch_size": self.latency_batch_size,
            "memory_format": self.memory_format,
            "latency": self.latency,
            "sha256": self.sha256,
        }
        if with_layers:
            d["layers"] = [vars(layer) for layer in self.layers]
        return d


def evaluate_checkpoints(paths: list[Path], cfg: Optional[EvaluateConfig] = None) -> list[Report]:
    """Each checkpoint on its test set; latency of those with the same input shape measured side by side."""
    cfg = cfg or EvaluateConfig()
    dev = resolve_device(cfg.device)
    if cfg.latency:
        require_runtime(cfg.runtime.value)  # a missing optional runtime: before any evaluation
    loaded = [load_checkpoint(p) for p in paths]  # fail on a bad file before any work
    reports, models = [], []
    deployed = []  # (Runtime, BatchNorms folded) per checkpoint with --runtime torchscript|onnxruntime
    for ckpt in loaded:
        model = rebuild_model(ckpt, allow_nonfinite=cfg.allow_nonfinite).to(dev)
        if cfg.latency and cfg.runtime.value != "eager":
            # before its evaluation: a model the runtime cannot take fails in seconds, not after the test set
            try:
                deployed.append(deployed_runtime(model, ckpt.model, cfg.runtime.value, threads=cfg.threads))
            except PruneCliError as e:
                raise PruneCliError(f"{ckpt.path}: {e} (--runtime eager times the module as it is)") from None
        bundle = data_for_checkpoint(ckpt, dataset=cfg.dataset, data=cfg.data, download=cfg.download)
        split = cfg.split.value
        label_seed = shuffled_label_seed(ckpt) if split == "train" else None
        batches = make_batches(
            bundle, split, batch_size=cfg.batch_size, device=dev, train=False, workers=cfg.workers,
            labels_shuffled=label_seed is not None, seed=label_seed or 0,
        )
        result = evaluate(model, batches, device=dev)
        shape = (ckpt.model.in_channels, ckpt.model.image_size, ckpt.model.image_size)
        cx = count_complexity(model, shape)
        nonzero = sum(int((p != 0).sum().item()) for p in model.parameters())
        reports.append(
            Report(
                checkpoint=str(ckpt.path),
                stage=ckpt.stage,
                model=ckpt.model.name,
                dataset=bundle.spec.name if split == "test" else f"{bundle.spec.name} train" + (" (shuffled labels)" if label_seed is not None else ""),
                top1=result.top1,
                top5=result.top5,
                loss=result.loss,
                samples=result.samples,
                macs=cx.macs,
                params=cx.params,
                nonzero_params=nonzero,
                layers=layer_table(model, ckpt.masks),
                sha256=sha256_file(ckpt.path),
                ancestors=[str(e["parent_sha256"]) for e in ckpt.lineage if e.get("parent_sha256")],
            )
        )
        models.append((model, shape))
    if cfg.latency:
        runtime = cfg.runtime.value
        by_shape: dict[tuple, list[int]] = {}
        for i, (_, shape) in enumerate(models):
            by_shape.setdefault(shape, []).append(i)
        for shape, idx in by_shape.items():  # same input: measured interleaved, side by side
            if runtime == "eager":
                lats = measure_latencies([models[i][0] for i in idx], shape, batch_size=cfg.batch_size, device=dev, repeats=cfg.repeats, threads=cfg.threads)
            else:
                # the deployed form, as `prunecli export` writes it; exported graphs run on the CPU
                lats = measure_runtimes([deployed[i][0] for i in idx], shape, batch_size=cfg.batch_size, repeats=cfg.repeats, threads=cfg.threads)
            for i, lat in zip(idx, lats):
                record = {**lat.to_json(), "runtime": runtime}
                if runtime != "eager":
                    record["batchnorm_folded"] = deployed[i][1]
                reports[i] = replace(
                    reports[i], latency_ms=lat.median_ms, latency_batch_size=lat.batch_size, memory_format=lat.memory_format, latency=record
                )
            how = "" if runtime == "eager" else f"{runtime}, {_folded_words([deployed[i][1] for i in idx])}, "
            log(f"latency: {how}interleaved, median of {lats[0].runs} runs after warm-up; {lats[0].conditions()}")
            why = unreliable(lats)
            if why:
                warn(why)
    return reports


def _folded_words(counts: list[int]) -> str:
    """How the deployed models' BatchNorms stand, in words (export folds what it can)."""
    if all(counts):
        return "BatchNorm folded"
    return "no BatchNorm folded" if not any(counts) else "BatchNorm folded where a conv precedes it"


def ancestor_columns(reports: list[Report]) -> list[Optional[int]]:
    """For each report, the index of its ancestor in the same list, or None.

    An ancestor is a file the checkpoint's lineage names as a parent, matched by sha256
    (a lineage entry records its parent's path and sha256; the path may have moved, the
    hash says it is that file). With several ancestors in the table the oldest wins: the
    dense model is what a user measures a pruned one against. Identical files are not
    each other's ancestors.
    """
    first_of: dict[str, int] = {}
    for i, r in enumerate(reports):
        if r.sha256 is not None:
            first_of.setdefault(r.sha256, i)
    out: list[Optional[int]] = []
    for r in reports:
        found = next((first_of[h] for h in r.ancestors if h in first_of and h != r.sha256), None)
        out.append(found)
    return out
