"""`compress`: remove masked channels and dead residual blocks physically and prove nothing else changed.

A channel of a unit is removed when its output is identically zero: every entry of it in
the unit's producing layers (filter and bias) and normalisation layers (scale and shift)
is zero (`Pruner.plan_zeroed`). Structured masks from `prune` zero exactly those entries;
weight-level masks rarely zero a whole channel, and then only those channels go. Removal
goes through the Torch-Pruning dependency group, so coupled layers shrink together.

A residual block whose branch ends in a BatchNorm with zero scale and shift (Sparse
Structure Selection's dead blocks, prunecli.algorithms.sss) only passes its input on: it
is dropped first (the ``drop-blocks`` converter, prunecli.models.residual), then the dead
channels are removed from the shallower network. A dead block whose shortcut downsamples
stays, and so do the dead blocks of a file that is already channel-compressed (the
recorded removal names the full network's layers); the notes say so.

The compressed model is checked against the masked one on a probe batch before anything
is written: the check covers the dropped blocks and the removed channels together.

``--fold-bn`` then folds every BatchNorm that directly follows a conv
(prunecli.stages.fold, which checks folded == unfolded and that the file rebuilds); the
latency measured is the folded model's.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from prunecli._progress import step_bar
from prunecli.checkpoint import Checkpoint, save_checkpoint, with_result
from prunecli.config import CompressConfig
from prunecli.engine.distributed import resolve_device
from prunecli.errors import PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.latency import measure_latencies, unreliable
from prunecli.models import example_input
from prunecli.models.residual import DROP_BLOCKS, dead_blocks, drop_blocks, without_blocks
from prunecli.outputs import claim_output
from prunecli.stages.checkpoints import derive_compressed, load_model
from prunecli.stages.fold import fold_checkpoint
from prunecli.surgery.equivalence import counted_outputs, difference, first_differing_unit, outputs, probe_batch
from prunecli.surgery.pruner import Pruner
from prunecli.surgery.removal import must_run


class NothingToRemove(PruneCliError):
    """``compress`` of a dense checkpoint: nothing is zero, so nothing is written (unless ``--force``)."""


@dataclass
class CompressReport:
    output: Path
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    size_before: int
    size_after: int
    latency_ms_before: Optional[float]
    latency_ms_after: Optional[float]
    latency_batch_size: int
    max_abs_diff: float
    removed: list[tuple[str, int, int]]  # (unit root, channels before, after)
    masked_weights_left: int = 0
    notes: list[str] = field(default_factory=list)
    latency: Optional[dict[str, Any]] = None  # before/after medians, spreads and how they were measured
    dropped_blocks: list[str] = field(default_factory=list)  # dead residual blocks replaced by the identity

    def to_json(self) -> dict[str, Any]:
        return {
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "latency_ms_before": self.latency_ms_before,
            "latency_ms_after": self.latency_ms_after,
            "max_abs_diff": self.max_abs_diff,
            "output": str(self.output),
            "size_before": self.size_before,
            "size_after": self.size_after,
            "latency_batch_size": self.latency_batch_size,
            "masked_weights_left": self.masked_weights_left,
            "layers_shrunk": len(self.removed),
            "latency": self.latency,
            "blocks_dropped": list(self.dropped_blocks),
            "notes": list(self.notes),
        }


def compress_checkpoint(source: Path, cfg: Optional[CompressConfig] = None, *, output: Path) -> CompressReport:
    cfg = cfg or CompressConfig()
    with claim_output(Path(output), overwrite=cfg.overwrite):  # checked and locked before any work
        # a bar over the phases (tens of seconds each on tv ResNet-152 or DenseNet): the trace, the removal,
        # the masked == compressed check, folding, timing; none off a terminal
        steps = 4 + bool(cfg.fold_bn) + bool(cfg.latency)
        with step_bar("compress: loading and checking the masked model", steps, unit="steps") as bar:
            return _compress(Path(source), cfg, Path(output), _Phases(bar))


class _Phases:
    """Advances the compress bar to the next phase, named (nothing off a terminal)."""

    def __init__(self, bar):
        self.bar = bar

    def __call__(self, what: str) -> None:
        if self.bar is not None:
            self.bar.advance(1, description=f"compress: {what}")


def _compress(source: Path, cfg: CompressConfig, output: Path, phase: _Phases) -> CompressReport:
    ckpt, model = load_model(source, allow_nonfinite=cfg.allow_nonfinite)
    spec = ckpt.model
    example = example_input(spec)
    shape = tuple(example.shape[1:])
    probe = probe_batch(spec)
    # the masked model's outputs, and its MACs counted in the same forward pass
    expected, before = counted_outputs(model, probe)
    # only the latency measurement needs the masked model beside the compressed one: a
    # copy of tv ResNet-50 is 100 MB and 0.1 s, so none is made without it
    reference = copy.deepcopy(model) if cfg.latency else None

    phase("tracing the dependency graph")
    ckpt, model, dropped, notes = drop_dead_blocks(ckpt, model)
    sss = ckpt.extra.get("sss")
    if isinstance(sss, dict) and sss.get("granularity") == "group" and sss.get("dead"):
        notes.append(
            f"{len(sss['dead'])} group(s) that Sparse Structure Selection gated to zero stay, masked: Torch-Pruning cannot remove "
            "one whole group of a grouped conv"
        )
    pruner = Pruner(model, example_input=example, name=spec.name)
    plan = pruner.plan_zeroed()
    notes += plan.notes
    if not plan.units and not dropped:
        pruned = ckpt.masks or any(e.get("command") == "prune" for e in ckpt.lineage)
        if not pruned and not cfg.force and not cfg.fold_bn:  # folding alone is worth a file
            # never pruned: the only saving would be the optimizer state the file no longer carries. (A pruning
            # run that removed nothing, e.g. SSS with no gate at zero, still writes: pipelines and recipes go on.)
            raise NothingToRemove(
                f"{source}: nothing to remove: it was never pruned and no channel is entirely zero (prune first, e.g. "
                f"prunecli prune {source} --method l1 --rate 0.5); nothing written (--force writes it anyway)"
            )
        hint = "" if ckpt.masks else f" (prune first, e.g. prunecli prune {source} --method l1 --rate 0.5)"
        notes.append(f"no channel is entirely zero: nothing removed{hint}")
    phase(f"removing channels ({len(plan.units)} layer groups)")
    removal = pruner.remove(plan, check=False)  # the probe runs the compressed model next
    phase("checking masked == compressed")
    with must_run(spec.name):
        got, after = counted_outputs(model, probe)
    diff, same = difference(expected, got)
    if not same:
        # the diagnosis needs the masked model again: rebuilt from the file (the error path only)
        reference = load_model(source, allow_nonfinite=cfg.allow_nonfinite)[1]
        shallower = drop_blocks(copy.deepcopy(reference), blocks=dropped) if dropped else reference
        if dropped and not difference(expected, outputs(shallower, probe))[1]:
            raise PruneCliError(
                f"{source}: dropping the dead residual blocks {', '.join(dropped)} changes the model's outputs (max |diff| {diff:.3g}): "
                "a block there does not read a ReLU output, so the identity does not stand for it; nothing written"
            )
        culprit = first_differing_unit(shallower, plan, example, probe, name=spec.name)
        raise PruneCliError(
            f"{source}: the compressed model differs from the masked one (max |diff| {diff:.3g}) after removing "
            f"channels of the group at {culprit}; the masks do not describe a removable structure there; nothing written"
        )

    removed = [(p.unit.root, p.size, p.kept) for p in plan.units]
    extra = dict(ckpt.extra)
    extra.pop("rewind", None)  # rewind weights have the uncompressed shapes: they no longer fit
    extra["compress"] = {"removed": [list(r) for r in removed], "dropped_blocks": list(dropped)}
    metrics = dict(ckpt.metrics)
    metrics.update(macs=after.macs, params=after.params, macs_before_compress=before.macs, max_abs_diff=diff)
    out = derive_compressed(ckpt, "compress", cfg.to_options(), model, removal.history, removal.kept, metrics=metrics, extra=extra)
    if cfg.fold_bn:
        phase("folding BatchNorms")
        # after the removal: folding is recorded as a converter, and converters replay before the removal history
        out, model, folded = fold_checkpoint(out, model, where=str(source))
        if folded:
            after = count_complexity(model, shape)  # a BatchNorm's scale and shift go, a conv bias comes
            out = replace(out, metrics={**out.metrics, "macs": after.macs, "params": after.params})
            notes.append(f"folded {folded} BatchNorm(s) into the convs before them: the file is inference-only (finetune refuses it)")
        elif not plan.units and not dropped and not cfg.force:
            raise NothingToRemove(
                f"{source}: nothing to do: no channel is entirely zero and no BatchNorm directly follows a conv (nothing to fold); "
                "nothing written (--force writes it anyway)"
            )
        else:
            notes.append("--fold-bn: no BatchNorm directly follows a conv here; nothing folded")
    out = with_result(out, macs_before=before.macs, params_before=before.params, macs_after=after.macs, params_after=after.params, compressed=True)
    lat_before = lat_after = None
    latency = None
    if cfg.latency:
        phase(f"timing latency (within {cfg.latency_budget:g} s)")
        lb, la = measure_latencies(
            [reference, model],
            shape,
            batch_size=cfg.batch_size,
            device=resolve_device(cfg.device),
            repeats=cfg.repeats,
            threads=cfg.threads,
            warmup=1,  # one untimed pass pays the first-call allocations; rounds interleave the rest
            max_seconds=cfg.latency_budget,
            min_repeats=3,
        )
        reference = None  # freed before the file is written
        lat_before, lat_after = lb.median_ms, la.median_ms
        latency = {"before": lb.to_json(), "after": la.to_json(), "conditions": lb.conditions() if lb.memory_format == la.memory_format else f"{lb.conditions()} / {la.memory_format}"}
        why = unreliable([lb, la])
        if why:
            notes.append(why)
    save_checkpoint(out, output)
    left = sum(int((~m).sum()) for m in out.masks.values())
    pruned_as = (ckpt.extra.get("prune") or {}).get("granularity") if isinstance(ckpt.extra.get("prune"), dict) else None
    if pruned_as == "weight":
        notes.append(
            f"{source} was pruned at --granularity weight ({(ckpt.extra['prune'] or {}).get('method')}): weight-level masks keep "
            "every layer's shape, so only channels that ended up entirely zero were removed"
        )
    if left:
        notes.append(f"{left:,} masked weights stay as zeros inside the smaller layers (weight-level sparsity gives no speed-up here)")
    return CompressReport(
        output=output,
        macs_before=before.macs,
        macs_after=after.macs,
        params_before=before.params,
        params_after=after.params,
        size_before=os.path.getsize(source),
        size_after=os.path.getsize(output),
        latency_ms_before=lat_before,
        latency_ms_after=lat_after,
        latency_batch_size=cfg.batch_size,
        max_abs_diff=diff,
        removed=removed,
        masked_weights_left=left,
        notes=notes,
        latency=latency,
        dropped_blocks=dropped,
    )


def drop_dead_blocks(ckpt: Checkpoint, model) -> tuple[Checkpoint, Any, list[str], list[str]]:
    """The checkpoint and model with the dead residual blocks dropped (see the module docstring).

    Returns (checkpoint, model, the blocks dropped, notes). The checkpoint gains the
    ``drop-blocks`` converter, and loses the dropped blocks' masks, so that the compressed
    file rebuilds from itself.
    """
    droppable, downsampling = dead_blocks(model)
    notes = []
    if downsampling:
        notes.append(
            f"{len(downsampling)} dead residual block(s) kept: {', '.join(downsampling)} downsample through the shortcut, so the "
            "block cannot become the identity (its branch stays, masked to zero)"
        )
    if droppable and ckpt.structure:
        notes.append(
            f"{len(droppable)} dead residual block(s) kept ({', '.join(droppable[:6])}{' ...' if len(droppable) > 6 else ''}): "
            f"{ckpt.path or 'the checkpoint'} is already channel-compressed, and blocks can only be dropped before a recorded channel removal; "
            "run sss on the uncompressed model to drop them"
        )
        droppable = []
    if not droppable:
        return ckpt, model, [], notes
    model = drop_blocks(model, blocks=droppable)
    ckpt = replace(
        ckpt,
        converters=[*ckpt.converters, {"name": DROP_BLOCKS, "args": {"blocks": list(droppable)}}],
        masks=without_blocks(ckpt.masks, droppable),
    )
    notes.append(f"dropped {len(droppable)} dead residual block(s): {', '.join(droppable)}")
    return ckpt, model, list(droppable), notes
