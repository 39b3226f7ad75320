"""Rethinking's scratch baselines: a compressed architecture trained from a fresh initialisation.

Liu et al., "Rethinking the Value of Network Pruning" (ICLR 2019, arXiv:1810.05270), ask
whether a pruned network needs the weights it inherits, or only its architecture. Their
baselines train the pruned architecture from scratch, with two budgets:

* Scratch-E (``--budget epochs``, the default): the epochs asked (the dense model's);
* Scratch-B (``--budget compute``): the same computation as the dense model's epochs,
  ``round(E x MACs_dense / MACs_pruned)`` epochs, at most ``2E`` (the paper caps the extra
  epochs where pruning saves more than 2x).

``prunecli train --arch-from small.pt`` rebuilds ``small.pt``'s architecture (spec ->
converters -> pruning history), initialises every parameter anew (`reinitialise`, seeded
by ``--seed``) and trains it, on ``small.pt``'s dataset and data root unless ``--dataset`` /
``--data`` say otherwise. MACs_dense is the spec built without the pruning history.

The checkpoint written is a new training run: its lineage has one train entry whose
parent is ``small.pt`` (path and sha256); it keeps ``small.pt``'s structure and converters,
so it rebuilds from itself, and ``extra["scratch"]`` records the budget. Its resume state
holds the options the run resolved to (the model, input size and classes of ``small.pt``,
the epochs the budget gave), so ``--resume`` continues it like any train run. Weight-level
masks (what compress could not remove: unstructured pruning) are carried and enforced,
as Rethinking trains unstructured sparse models from scratch with their mask fixed; a
structured pruning leaves none.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import CodeType
from typing import Any, Callable, Optional

import torch
from torch import nn

from prunecli._console import log, markup_safe
from prunecli.checkpoint import Checkpoint, lineage_entry, load_checkpoint
from prunecli.config.train import SCRATCH_ARCH_FIELDS, Budget, TrainConfig
from prunecli.data import DataBundle, get_dataset
from prunecli.errors import CheckpointError, PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.models import rebuild
from prunecli.models._init import slimming_init
from prunecli.models.build import offline_spec
from prunecli.models.folding import inference_only_reason
from prunecli.stages.checkpoints import check_data_fits_model, rebuild_model

# Scratch-B trains at most this many times the epochs asked (Liu et al., section 4.1)
MAX_COMPUTE_FACTOR = 2


@dataclass
class ScratchRun:
    """What ``train --arch-from`` hands to the Trainer."""

    cfg: TrainConfig  # the options the run resolved to (model, data, epochs): what its resume state records
    options: dict[str, Any]  # the options asked, in command-line form: lineage and <stem>.config.yaml
    model: nn.Module  # the compressed architecture, freshly initialised
    template: Checkpoint
    bundle: DataBundle


def prepare_scratch(cfg: TrainConfig, output: Path) -> ScratchRun:
    """Load ``cfg.arch_from``, resolve data and budget, and build its architecture with fresh weights."""
    path = Path(cfg.arch_from)
    where = f"--arch-from {path}"
    if path.exists() and Path(output).resolve() == path.resolve():
        raise PruneCliError(f"--output {output} is the --arch-from checkpoint; write the result elsewhere")
    parent = load_checkpoint(path)
    if not parent.structure:
        raise CheckpointError(f"{where}: not a compressed checkpoint (no pruned structure); run prunecli compress first")

    name, root, num_classes = _data_of(parent, cfg)
    bundle = get_dataset(name, root=root, download=cfg.download, image_size=parent.model.image_size, num_classes=num_classes, seed=cfg.seed)
    check_data_fits_model(bundle, parent.model, where)

    model = rebuild_model(parent, allow_nonfinite=True)  # the architecture; its trained weights are replaced below
    if inference_only_reason(model):
        # the Trainer would refuse it too, with advice for fine-tuning; a scratch run wants the architecture only
        raise PruneCliError(
            f"{where}: its BatchNorms are folded into the convs (compress --fold-bn), so the architecture has no "
            "normalisation to train from scratch with; pass the compressed checkpoint from before folding"
        )
    torch.manual_seed(cfg.seed)
    dense, inits = _fresh_dense(parent, where)
    shape = (parent.model.in_channels, parent.model.image_size, parent.model.image_size)
    macs_dense, macs_pruned = count_complexity(dense, shape).macs, count_complexity(model, shape).macs
    ratio = macs_dense / macs_pruned if macs_dense > 0 and macs_pruned > 0 else None
    budget = cfg.budget or Budget.epochs
    if budget is Budget.compute and ratio is None:
        raise PruneCliError(f"--budget compute: cannot count the MACs of {path}'s architecture (ptflops counted {macs_pruned} of {macs_dense})")
    epochs = scratch_epochs(budget, cfg.epochs, ratio)
    log(markup_safe(budget_line(budget, cfg.epochs, ratio)))

    torch.manual_seed(cfg.seed)  # the initialisation is part of the seeded run, as in train
    reinitialise(model, dense, inits)
    del dense

    run_cfg = cfg.replace(
        model=parent.model.name,
        model_args=dict(parent.model.kwargs),
        image_size=parent.model.image_size,
        num_classes=num_classes,
        dataset=name,
        data=root,
        arch_from=None,  # resolved: a resume rebuilds the architecture from the run's own checkpoint
        budget=None,
        epochs=epochs,
    )
    asked = cfg.replace(dataset=name, data=root, budget=budget)
    from_file = {TrainConfig.spec(f).key for f in SCRATCH_ARCH_FIELDS}
    options = {k: v for k, v in asked.to_options().items() if k not in from_file}
    entry = lineage_entry("train", options, parent=path)
    record = {
        "arch_from": str(path),
        "sha256": entry["parent_sha256"],
        "budget": budget.value,
        "epochs_asked": cfg.epochs,
        "epochs": epochs,
        "macs_ratio": ratio,
        "macs_dense": macs_dense,
        "macs_pruned": macs_pruned,
    }
    extra: dict[str, Any] = {"scratch": record}
    if parent.extra.get("model_code_sha256"):
        extra["model_code_sha256"] = parent.extra["model_code_sha256"]
    template = Checkpoint(
        model=parent.model,
        state_dict={},
        dataset=bundle.spec,
        structure=list(parent.structure),
        masks=dict(parent.masks),
        lineage=[entry],
        extra=extra,
        converters=list(parent.converters),
    )
    return ScratchRun(cfg=run_cfg, options=options, model=model, template=template, bundle=bundle)


# ---------------------------------------------------------------------------- the budget


def scratch_epochs(budget: Budget, epochs: int, macs_ratio: Optional[float]) -> int:
    """Epochs of a scratch run: ``epochs`` (Scratch-E), or ``epochs x macs_ratio`` rounded
    half up and capped at ``2 x epochs`` (Scratch-B)."""
    if budget is Budget.epochs:
        return epochs
    if macs_ratio is None:
        raise ValueError("Scratch-B needs the MACs ratio")
    return min(_scaled(epochs, macs_ratio), MAX_COMPUTE_FACTOR * epochs)


def _scaled(epochs: int, macs_ratio: float) -> int:
    return math.floor(epochs * macs_ratio + 0.5)


def budget_line(budget: Budget, epochs: int, macs_ratio: Optional[float]) -> str:
    """The log line that says how many epochs a scratch run trains, and why."""
    if budget is Budget.epochs:
        saving = f" ({macs_ratio:.2f}x fewer MACs than the dense model)" if macs_ratio is not None else ""
        return f"Scratch-E: {epochs} epochs{saving}"
    scaled = _scaled(epochs, macs_ratio)
    cap = MAX_COMPUTE_FACTOR * epochs
    capped = f" (capped at {MAX_COMPUTE_FACTOR}x: {cap})" if scaled > cap else ""
    return f"Scratch-B: {epochs} epochs x {macs_ratio:.2f} MACs ratio = {scaled} epochs{capped}"


# ---------------------------------------------------------------------------- the data


def _data_of(parent: Checkpoint, cfg: TrainConfig) -> tuple[str, Optional[str], Optional[int]]:
    """Dataset name, root and classes option: ``parent``'s unless ``cfg`` names others.

    ``--dataset`` left at its default counts as not given. The same choices as finetune's
    (prunecli.stages.checkpoints.data_for_checkpoint); the input size is the model's.
    """
    recorded = parent.dataset
    given = cfg.dataset != TrainConfig.spec("dataset").default
    name = cfg.dataset if given or recorded is None else recorded.name
    same = recorded is not None and recorded.name == name
    root = cfg.data if cfg.data is not None else (recorded.root if same else None)
    opts = recorded.options if same else {}
    num_classes = opts.get("num_classes") if opts else (parent.model.num_classes if name == "synthetic" else None)
    return name, root, num_classes


# ---------------------------------------------------------------------------- a fresh initialisation


@dataclass(frozen=True)
class InitCall:
    """One ``torch.nn.init`` call a model's constructor made, by the state-dict name of its tensor."""

    tensor: str
    fn: str  # the nn.init function's name
    args: tuple
    kwargs: dict
    caller: CodeType  # the function that called it

    @property
    def default(self) -> bool:
        """Made by a module's reset_parameters: PyTorch's default init, which `reinitialise` re-derives."""
        return self.caller.co_name in _RESET_METHODS


_RESET_METHODS = ("reset_parameters", "_reset_parameters")  # nn.MultiheadAttention has the second

# Init functions of prunecli's families that compute a layer's std from its width
# themselves (He-normal with n = k*k*out, not through nn.init's fan): a replayed call would
# keep the unpruned width's std, so they run again on the pruned model, with their default
# arguments (what other arguments draw, slimming_init's linear_std, does not depend on a
# width and was replayed already).
_WIDTH_AWARE_INITS: tuple[Callable[[nn.Module], None], ...] = (slimming_init,)


def reinitialise(model: nn.Module, dense: nn.Module, inits: list[InitCall]) -> None:
    """Give every parameter of the pruned ``model`` the fresh value its family's init would.

    ``dense`` is the unpruned architecture freshly built (seeded) and ``inits`` the
    nn.init calls its constructor made (`_fresh_dense`). In order:

    1. every module's ``reset_parameters()``: PyTorch's default init, with the fan-in of the
       pruned shapes; BatchNorm's running statistics start again;
    2. the constructor's own nn.init calls, replayed on the pruned tensors of the same
       names: kaiming_normal_(mode="fan_out") computes the pruned layer's fan-out, as
       Rethinking's code initialises the small network it builds;
    3. the width-aware init functions among them (slimming_init), run again;
    4. a parameter none of these reached (a constant or fixed-std tensor a constructor
       creates directly, as ConvNeXt's layer scale) takes the leading slice of its fresh
       unpruned value: right for any init that does not depend on the width.

    Buffers other than normalisation statistics (a shortcut's channel map, a gate) describe
    the architecture and stay as rebuilt.
    """
    done: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
                done.update(id(p) for p in module.parameters(recurse=False))
        tensors = model.state_dict(keep_vars=True)
        for call in inits:
            if not call.default and call.tensor in tensors:
                getattr(nn.init, call.fn)(tensors[call.tensor], *call.args, **call.kwargs)
                done.add(id(tensors[call.tensor]))
        callers = {call.caller for call in inits}
        for fn in _WIDTH_AWARE_INITS:
            if fn.__code__ in callers:
                fn(model)
        fresh = dense.state_dict()
        for name, p in model.named_parameters():
            if id(p) not in done and name in fresh:
                p.copy_(fresh[name][tuple(slice(0, n) for n in p.shape)])


def _fresh_dense(parent: Checkpoint, where: str) -> tuple[nn.Module, list[InitCall]]:
    """The unpruned architecture (spec + converters) freshly built, and the nn.init calls that built it."""
    calls: list[tuple] = []
    with _recording_inits(calls):
        dense = rebuild(offline_spec(parent.model), converters=parent.converters, where=where)
    names = {_key(t): n for n, t in dense.state_dict(keep_vars=True).items() if t.numel()}
    inits = [InitCall(names[_key(t)], fn, args, kwargs, caller) for t, fn, args, kwargs, caller in calls if _key(t) in names]
    return dense, inits


def _key(t: torch.Tensor) -> tuple:
    # a constructor may pass ``m.weight`` or ``m.weight.data``: the same memory, another object
    return t.data_ptr(), tuple(t.shape)


@contextlib.contextmanager
def _recording_inits(calls: list):
    """Every public ``torch.nn.init`` function records ``(tensor, name, args, kwargs, caller)``
    into ``calls`` before it runs (calls it makes itself are not recorded)."""
    originals = {n: getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")}
    depth = [0]

    def recording(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def record(tensor, *args, **kwargs):
            if depth[0] == 0 and isinstance(tensor, torch.Tensor):
                calls.append((tensor, name, args, kwargs, sys._getframe(1).f_code))
            depth[0] += 1
            try:
                return fn(tensor, *args, **kwargs)
            finally:
                depth[0] -= 1

        return record

    try:
        for name, fn in originals.items():
            setattr(nn.init, name, recording(name, fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(nn.init, name, fn)
