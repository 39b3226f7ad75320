"""The public Python API: a checkpoint as an ``nn.Module``, pruned, compressed, counted and saved in memory.

This module is the stable surface for library users; the rest of the package may move.
Everything here is what the commands do, without the files in between:

    import prunecli.api as pc

    net = pc.load("runs/digits/base.pt")          # a Network: .module is the nn.Module, masks applied
    pc.prune(net, "geomedian", rate=0.4)          # masks whole dependency groups, shapes kept
    pc.compress(net)                              # removes them, checked against the masked outputs
    print(pc.complexity(net))                     # MACs and params of the model as it is now
    pc.save(net, "runs/digits/small.pt")          # a checkpoint every command reads

`build` starts from a zoo architecture instead of a file. Every step appends a lineage
entry (command "prune" or "compress", with the options given, as the CLI would record
them), so ``prunecli info`` shows what was done, and a saved file rebuilds from itself
(``structure`` holds Torch-Pruning's removal history). Training is the Trainer
(prunecli.engine.trainer) or the ``finetune`` command on the saved file.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import nn

from prunecli.checkpoint import Checkpoint, derive, save_checkpoint
from prunecli.metrics.complexity import Complexity, count_complexity
from prunecli.models import ModelSpec, build_model, example_input

__all__ = ["Network", "build", "complexity", "compress", "load", "prune", "save"]


@dataclass
class Network:
    """A model and the checkpoint it will be saved as (spec, lineage, masks, structure so far)."""

    module: nn.Module
    checkpoint: Checkpoint
    # what the last `prune` traced and removed from a copy, for a `compress` right after it
    _pending: Optional["_Pending"] = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> ModelSpec:
        return self.checkpoint.model

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Tensor name -> bool mask (True = kept) of what is pruned but not yet removed."""
        return self.checkpoint.masks

    @property
    def input_shape(self) -> tuple[int, int, int]:
        s = self.spec
        return (s.in_channels, s.image_size, s.image_size)


def load(path: str | Path, *, device: str | torch.device = "cpu") -> Network:
    """A checkpoint file as a `Network`: the model rebuilt (architecture, converters, removal
    history, weights), its masks applied, in eval mode. Never unpickles code."""
    from prunecli.stages.checkpoints import load_model

    ckpt, model = load_model(Path(path), device=torch.device(device))
    return Network(model, ckpt)


def build(model: str, *, num_classes: int = 10, image_size: int = 32, in_channels: int = 3, seed: int = 0, **kwargs: Any) -> Network:
    """A freshly initialised zoo model (``prunecli list models``; ``tv:NAME`` for torchvision's)."""
    spec = ModelSpec(model, in_channels=in_channels, num_classes=num_classes, image_size=image_size, kwargs=dict(kwargs))
    torch.manual_seed(seed)
    module = build_model(spec).eval()
    ckpt = derive(None, "train", {"model": model, "epochs": 0, "seed": seed}, model=spec, state_dict=module.state_dict())
    return Network(module, ckpt)


def prune(
    net: Network,
    method: str,
    *,
    rate: Optional[float] = None,
    calibration: Optional[Iterable[tuple[torch.Tensor, torch.Tensor]]] = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Select with ``method`` and zero the selection in place (shapes kept); returns the per-layer rows.

    ``options`` are ``prune``'s selection options as Python values: ``granularity``,
    ``scope``, ``layer_rate=[("layer1.*", 0.5)]``, ``layer_rates``, ``skip``, ``protect``,
    ``round_to``, ``max_layer_rate``, ``target_macs``, ``mix_norm``, ``count_rule``, ``seed``.
    Data-driven criteria (taylor, hessian) need ``calibration``: any iterable of
    ``(inputs, labels)`` batches on the model's device. Methods that learn their mask while
    training (edgepopup, sss) are the ``prune --epochs N`` command's.
    """
    from prunecli.config import PruneConfig
    from prunecli.stages.prune import check_something_selected, count_rule, criterion_for, prune_record
    from prunecli.surgery import Pruner
    from prunecli.surgery.masks import combine

    cfg = PruneConfig.from_options({"method": method, "rate": rate, "device": "cpu", **options})
    criterion = criterion_for(cfg)
    if criterion.needs_data and calibration is None:
        from prunecli.errors import OptionError

        raise OptionError(f"criterion {method!r} needs calibration batches: pass calibration=[(inputs, labels), ...]")
    pruner = Pruner(
        net.module,
        criterion,
        cfg.selection(count_rule(cfg, criterion)),
        example_input=example_input(net.spec, device=_device(net.module)),
        granularity=cfg.granularity.value,
        calibration=calibration,
        name=net.spec.name,
    )
    plan = pruner.plan_for_macs(cfg.target_macs) if cfg.target_macs is not None else pruner.plan()
    check_something_selected(plan, cfg)
    masked = pruner.mask(plan, check=False)
    checked = None
    if masked.compressed is not None:
        # that the smaller network runs is checked by running it on compress's probe: compress
        # right after then needs only the masked network's half of the masked == compressed check
        from prunecli.surgery.equivalence import counted_outputs, probe_batch
        from prunecli.surgery.removal import must_run

        with must_run(net.spec.name):
            checked = counted_outputs(masked.compressed, probe_batch(net.spec, device=_device(net.module)))
    net._pending = _Pending(pruner, plan, masked, _fingerprint(net.module), checked)
    extra = dict(net.checkpoint.extra)
    extra["prune"] = {**prune_record(cfg, criterion, "one-shot", plan.rate), "layers": [vars(r) for r in plan.rows()]}
    given = {k: v for k, v in {"method": method, "rate": rate, **options}.items() if v is not None}
    net.checkpoint = _next(net, "prune", given, masks=combine(net.checkpoint.masks, masked.masks), extra=extra)
    return [vars(r) for r in plan.rows()]


def compress(net: Network) -> float:
    """Remove every channel whose output is identically zero, in place, through the dependency
    groups, and drop the residual blocks whose branch is dead (Sparse Structure Selection's),
    as ``prunecli compress`` does; returns the max |masked - compressed| on a fixed probe
    batch (an error, and the network left as it was, if the two differ)."""
    import copy

    from prunecli.errors import PruneCliError
    from prunecli.stages.checkpoints import derive_compressed
    from prunecli.models.residual import dead_blocks
    from prunecli.stages.compress import drop_dead_blocks
    from prunecli.surgery import Pruner
    from prunecli.surgery.equivalence import counted_outputs, difference, probe_batch
    from prunecli.surgery.removal import must_run

    device = _device(net.module)
    probe = probe_batch(net.spec, device=device)
    expected, before = counted_outputs(net.module, probe)  # the masked network's outputs, its MACs counted on the way
    parent = replace(net.checkpoint, state_dict=net.module.state_dict())
    pending, net._pending = net._pending, None
    checked = None
    if pending is not None and pending.still_fits(net.module) and not dead_blocks(net.module)[0]:
        # right after `prune`: its Pruner has the trace, and removed the same channels from a copy already
        plan, dropped = pending.pruner.plan_zeroed(), []
        if _same_channels(plan, pending.plan):
            done, checked = pending.masked, pending.checked  # that copy ran on this probe in `prune`
        else:
            done = pending.pruner.mask(plan, apply=False, check=False)
        work, history, kept = done.compressed, done.history, done.kept
    else:
        work = copy.deepcopy(net.module)
        parent, work, dropped, _ = drop_dead_blocks(parent, work)
        pruner = Pruner(work, example_input=example_input(net.spec, device=device), name=net.spec.name)
        plan = pruner.plan_zeroed()
        removal = pruner.remove(plan, check=False)
        history, kept = removal.history, removal.kept
    if checked is not None:
        got, after = checked
    else:
        with must_run(net.spec.name):  # the probe is the compressed network's first forward pass
            got, after = counted_outputs(work, probe)
    diff, same = difference(expected, got)
    if not same:
        raise PruneCliError(f"the compressed model differs from the masked one (max |diff| {diff:.3g}); the network is unchanged")
    metrics = {"macs": after.macs, "params": after.params, "macs_before_compress": before.macs, "max_abs_diff": diff}
    extra = dict(net.checkpoint.extra)
    extra.pop("rewind", None)  # rewind weights have the uncompressed shapes
    extra["compress"] = {"removed": [[p.unit.root, p.size, p.kept] for p in plan.units], "dropped_blocks": dropped}
    net.checkpoint = derive_compressed(parent, "compress", {}, work, history, kept, metrics=metrics, extra=extra)
    net.module = work.eval()
    return diff


def complexity(net: Network | nn.Module, input_shape: Optional[tuple[int, ...]] = None) -> Complexity:
    """MACs and params (ptflops) of the model as it is now, for one input of ``input_shape``
    (default: the network's own). Masked entries still count: compress to see the saving."""
    if isinstance(net, Network):
        return count_complexity(net.module, input_shape or net.input_shape)
    if input_shape is None:
        raise TypeError("complexity(module) needs input_shape=(C, H, W)")
    return count_complexity(net, input_shape)


def save(net: Network, path: str | Path) -> Path:
    """Write the network as a prunecli checkpoint (atomically); returns the path."""
    ckpt = replace(net.checkpoint, state_dict=net.module.state_dict(), resume=None)
    out = save_checkpoint(ckpt, Path(path))
    net.checkpoint = replace(ckpt, path=Path(path))
    return out


def _next(net: Network, command: str, options: dict[str, Any], **fields: Any) -> Checkpoint:
    """The checkpoint after one in-memory step: a lineage entry, the module's weights now."""
    parent = replace(net.checkpoint, state_dict=net.module.state_dict())
    return derive(parent, command, {"api": True, **options}, state_dict=net.module.state_dict(), **fields)


def _fingerprint(module: nn.Module) -> list[tuple]:
    """What changes when a module's structure or any tensor of it changes: the modules, and each
    tensor's identity, storage and version counter (in-place writes such as an optimizer step bump it)."""
    tensors = [(id(t), t.data_ptr(), t._version) for t in (*module.parameters(), *module.buffers())]
    return [tuple(id(m) for m in module.modules()), *tensors]


@dataclass(eq=False)
class _Pending:
    """The last `prune` of a Network: its Pruner (trace and units), plan, removal from a copy, and
    that copy's outputs and complexity on compress's probe batch (None for weight-level plans)."""

    pruner: Any
    plan: Any
    masked: Any
    fingerprint: list[tuple]
    checked: Optional[tuple[torch.Tensor, Any]] = None

    def still_fits(self, module: nn.Module) -> bool:
        """Is ``module`` still the network pruned, unchanged since (not trained, edited, replaced)?"""
        return self.pruner.model is module and _fingerprint(module) == self.fingerprint


def _same_channels(a, b) -> bool:
    """Do plans ``a`` and ``b`` remove the same channels of the same units?"""

    def channels(plan):
        return {p.unit.root: sorted(int(i) for i in p.prune) for p in plan.pruned}

    return channels(a) == channels(b)


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))
