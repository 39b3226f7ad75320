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

from dataclasses import dataclass, replace
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
    masked = pruner.mask(plan)
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
    from prunecli.stages.compress import drop_dead_blocks
    from prunecli.surgery import Pruner
    from prunecli.surgery.equivalence import difference, outputs, probe_batch

    device = _device(net.module)
    work = copy.deepcopy(net.module)
    probe = probe_batch(net.spec, device=device)
    expected = outputs(net.module, probe)
    parent, work, dropped, _ = drop_dead_blocks(replace(net.checkpoint, state_dict=net.module.state_dict()), work)
    pruner = Pruner(work, example_input=example_input(net.spec, device=device), name=net.spec.name)
    plan = pruner.plan_zeroed()
    removal = pruner.remove(plan)
    diff, same = difference(expected, outputs(work, probe))
    if not same:
        raise PruneCliError(f"the compressed model differs from the masked one (max |diff| {diff:.3g}); the network is unchanged")
    before, after = count_complexity(net.module, net.input_shape), count_complexity(work, net.input_shape)
    metrics = {"macs": after.macs, "params": after.params, "macs_before_compress": before.macs, "max_abs_diff": diff}
    extra = dict(net.checkpoint.extra)
    extra.pop("rewind", None)  # rewind weights have the uncompressed shapes
    extra["compress"] = {"removed": [[p.unit.root, p.size, p.kept] for p in plan.units], "dropped_blocks": dropped}
    net.checkpoint = derive_compressed(parent, "compress", {}, work, removal.history, removal.kept, metrics=metrics, extra=extra)
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


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))
