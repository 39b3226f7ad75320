"""Sparse Structure Selection: gates trained by accelerated proximal gradient (``prune --method sss --epochs N``).

Huang & Wang, "Data-Driven Sparse Structure Selection for Deep Neural Networks", ECCV
2018, arXiv:1707.01213. A scaling factor (gate) multiplies the output of a structure and
is trained with the weights under the penalty gamma * sum |g|; structures whose gate
reaches zero are removed. Where the gates sit here (prunecli.models.residual knows the
blocks):

* ``--granularity block``: one gate per residual block, on the output of the BatchNorm
  that ends the residual branch, i.e. on the branch's output before the add (the paper's
  depth selection; its reference multiplies the branch's last conv output);
* ``group``: one gate per group of a block's grouped convolution (ResNeXt's cardinality),
  on the channels of that group after the grouped conv's BatchNorm;
* ``channel``: one gate per channel of the BatchNorms inside a block's branch (each
  branch's inner widths); the channels of grouped convolutions are left whole, as a
  grouped conv can only lose the same positions in every group.

The gates start at 1 and do not take part in the weights' optimizer (no weight decay, no
SGD momentum): after every backward pass they take one step of the paper's modified APG
(Section 3.3, its Eqs. 10-12, with a fixed momentum as its reference code uses), where
``g`` is the gate the forward pass uses, ``v`` its velocity (zeros at the start), ``eta``
the step's learning rate (the weights' lr, after warm-up and schedule) and ``mu`` the
``--momentum``::

    z = g - eta * dL/dg                        (gradient step on the loss alone)
    s = sign(z) * max(|z| - eta * gamma, 0)    (soft threshold: the proximal step of gamma |.|)
    v = s - g + mu * v
    g = max(s + mu * v, 0)                     (Nesterov extrapolation; gates stay >= 0)

With ``mu = 0`` this is plain proximal gradient (ISTA). A gate at zero can come back
when the loss's gradient outweighs gamma; a structure counts as dead while its gate is 0.

The gates live outside the model (forward hooks multiply the BatchNorm outputs), so the
model's state dict stays the plain network. Every epoch's checkpoint is a plain model
that computes what the gated one does: each gate is folded into its BatchNorm's scale and
shift (``gamma * g``, ``beta * g``: exact), and what is dead is masked so that
``finetune`` keeps it dead and ``compress`` removes it:

* a dead block's last BatchNorm (scale and shift) is masked to zero; ``compress`` then
  replaces the block by the identity (prunecli.models.residual). A dead block whose
  shortcut downsamples cannot be removed: it stays, masked, and a note says so;
* dead channels are masked over their whole dependency group (the conv filter, the
  BatchNorm, the next conv's inputs), which ``compress`` removes;
* a dead group's BatchNorm scale and shift are masked to zero, so the group outputs zero;
  Torch-Pruning removes the same positions from every group of a grouped conv, never a
  whole group, so ``compress`` keeps the shape and says so.

The resume state holds the gates, their velocities and the unfolded values of every
tensor the file changed, so a run killed during an epoch resumes bit-identically. The
gates of the stage (and what is dead) are recorded in the checkpoint's
``extra["sss"]``. Under torchrun the stage refuses to start: the gates live outside the
model DDP wraps, and their gradients would not be averaged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn as nn

from prunecli._console import log
from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.criteria import Criterion
from prunecli.engine.trainer import Callback, FitState
from prunecli.errors import OptionError, PruneCliError
from prunecli.models.residual import ResidualBlock, residual_blocks
from prunecli.surgery.masks import Masks, apply_masks, combine, maskable_tensors
from prunecli.surgery.plan import Plan, UnitPlan
from prunecli.surgery.pruner import Pruner

RECORD_KEY = "sss"  # extra: the settings, the gates and what is dead (carried on)


def soft_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """sign(x) * max(|x| - threshold, 0): the proximal operator of threshold * |x|."""
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


@torch.no_grad()
def apg_step(gate: torch.Tensor, grad: torch.Tensor, velocity: torch.Tensor, *, lr: float, gamma: float, momentum: float) -> None:
    """One step of the modified APG (see the module docstring) on ``gate`` and ``velocity``, in place."""
    shrunk = soft_threshold(gate - lr * grad, lr * gamma)
    velocity.mul_(momentum).add_(shrunk - gate)
    gate.copy_(shrunk + momentum * velocity).clamp_(min=0.0)


@dataclass(eq=False)
class _Gate:
    """One gate vector: ``count`` gates, each scaling ``per`` channels of BatchNorm ``norm``."""

    key: str  # the block's name (block granularity) or the BatchNorm's (group, channel)
    block: ResidualBlock
    norm_name: str
    norm: nn.Module
    count: int
    per: int
    unit: Any = None  # channel granularity: the dependency group of these channels
    roots: Optional[torch.Tensor] = None  # channel c of the norm -> channel roots[c] of the unit


class SSSCallback(Callback):
    """Trains the gates by APG beside the weights; each checkpoint holds the gates folded in."""

    key = "sss"

    def __init__(self, model: nn.Module, *, granularity: str, gamma: float, momentum: float, example: torch.Tensor, name: str,
                 store: dict[str, Any], base: Masks):
        self.model = model
        self.granularity = granularity
        self.gamma = float(gamma)
        self.momentum = float(momentum)
        self.name = name
        self.store = store  # the run's checkpoint extra: the record is written there
        self.base = {k: v.detach().cpu().clone() for k, v in base.items()}  # the parent's masks, enforced as ever
        self.notes: list[str] = []
        self.pruner: Optional[Pruner] = None  # channel granularity: computes the dependency-group masks
        self.targets = self._find_targets(example)
        self.gates = {t.key: torch.ones(t.count, requires_grad=True) for t in self.targets}
        self.velocity = {t.key: torch.zeros(t.count) for t in self.targets}
        self._raw: dict[str, torch.Tensor] = {}  # unfolded values of what the last checkpoint changed
        self._dead_seen: list[str] = []  # what was dead at the last epoch end
        self._logged: Optional[str] = None  # the last summary line logged
        self._by_id = {id(t.norm): t for t in self.targets}
        self._handles: list = []
        self._install()

    # -- what is gated

    def _find_targets(self, example: torch.Tensor) -> list[_Gate]:
        blocks = residual_blocks(self.model)
        if not blocks:
            raise OptionError(
                f"{{method}} sss gates residual blocks; {self.name} has none (it works on the CIFAR ResNets, ResNeXt-29 "
                "and torchvision's ResNets)"
            )
        targets: list[_Gate] = []
        if self.granularity == "block":
            for b in blocks:
                bn = b.branch_end
                targets.append(_Gate(b.name, b, b.path(b.layout.branch_end), bn, 1, bn.num_features))
            return targets
        if self.granularity == "group":
            for b in blocks:
                if b.groups > 1:
                    attr = b.layout.grouped[1]
                    bn = b.child(attr)
                    targets.append(_Gate(b.path(attr), b, b.path(attr), bn, b.groups, bn.num_features // b.groups))
            if not targets:
                raise OptionError(
                    f"{{granularity}} group gates the groups of grouped convolutions (ResNeXt's cardinality); {self.name} has none "
                    "(use block or channel)"
                )
            self.notes.append(
                "sss --granularity group: a dead group's BatchNorm scale and shift are masked to zero; Torch-Pruning removes the "
                "same positions from every group of a grouped conv, never a whole group, so compress keeps the shape"
            )
            return targets
        return self._channel_targets(blocks, example)

    def _channel_targets(self, blocks: list[ResidualBlock], example: torch.Tensor) -> list[_Gate]:
        # a copy to trace: Torch-Pruning leaves a traced model in eval mode, and the masks
        # are worked out on copies of it (the gates' hooks do not fire there)
        self.pruner = Pruner(copy.deepcopy(self.model), example_input=example, name=self.name)
        by_norm = {}
        for u in self.pruner.units:
            for view in u.norms:
                by_norm.setdefault(view.name, []).append((u, view))
        targets, skipped = [], []
        for b in blocks:
            for attr in b.layout.inner:
                name = b.path(attr)
                found = by_norm.get(name, [])
                why = _ungateable(found, name)
                if why:
                    skipped.append(f"{name} ({why})")
                    continue
                unit, view = found[0]
                bn = b.child(attr)
                roots = torch.full((bn.num_features,), -1, dtype=torch.long)
                roots[view.local_idxs] = view.root_idxs
                targets.append(_Gate(name, b, name, bn, bn.num_features, 1, unit=unit, roots=roots))
        if skipped:
            self.notes.append(f"sss leaves {len(skipped)} BatchNorm(s) ungated: {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''}")
        if not targets:
            raise OptionError(f"{{granularity}} channel: no channel inside {self.name}'s residual blocks can be gated and removed (try block or group)")
        return targets

    # -- the forward pass: each gated BatchNorm's output times its gates

    def _install(self) -> None:
        this = self  # a closure, not a bound method: a deep copy of the model (Pruner.mask) shares it harmlessly

        def hook(module, args, out):
            t = this._by_id.get(id(module))
            if t is None:
                return None
            g = this.gates[t.key]
            scale = g.repeat_interleave(t.per) if t.per > 1 else g
            return out * scale.to(out.dtype).view(1, -1, *([1] * (out.dim() - 2)))

        self._handles = [t.norm.register_forward_hook(hook) for t in self.targets]

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- what is dead

    def dead(self) -> dict[str, torch.Tensor]:
        """Per gate vector: which of its gates are zero (bool, CPU)."""
        return {k: (g.detach() == 0).cpu() for k, g in self.gates.items()}

    def dead_names(self, dead: Optional[dict[str, torch.Tensor]] = None) -> list[str]:
        """What is dead, by name: blocks; ``bn:group k``; ``bn:channel c``."""
        dead = self.dead() if dead is None else dead
        out = []
        for t in self.targets:
            d = dead[t.key]
            if self.granularity == "block":
                if bool(d.any()):
                    out.append(t.key)
            else:
                what = "group" if self.granularity == "group" else "channel"
                out += [f"{t.key}:{what} {int(i)}" for i in torch.nonzero(d).flatten()]
        return out

    def _summary(self, dead: dict[str, torch.Tensor]) -> str:
        total = sum(t.count for t in self.targets)
        n = sum(int(d.sum()) for d in dead.values())
        what = {"block": "blocks", "group": "groups", "channel": "channels"}[self.granularity]
        line = f"sss: {n}/{total} {what} gated to zero"
        if self.granularity == "block" and n:
            names = [t.key for t in self.targets if bool(dead[t.key].any())]
            kept = self._kept_downsampling(dead)
            line += f" ({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})"
            if kept:
                line += f"; {', '.join(kept)} downsample{'s' if len(kept) == 1 else ''} through the shortcut: compress keeps {'it' if len(kept) == 1 else 'them'}"
        return line

    def _kept_downsampling(self, dead: dict[str, torch.Tensor]) -> list[str]:
        """Dead blocks whose shortcut downsamples: compress keeps them (block granularity)."""
        if self.granularity != "block":
            return []
        return [t.key for t in self.targets if bool(dead[t.key].any()) and t.block.downsamples]

    @torch.no_grad()
    def _expanded(self, t: _Gate) -> torch.Tensor:
        g = self.gates[t.key].detach()
        return g.repeat_interleave(t.per) if t.per > 1 else g

    def dead_masks(self, dead: Optional[dict[str, torch.Tensor]] = None) -> Masks:
        """Masks of what is dead (see the module docstring), in the model's tensor names."""
        dead = self.dead() if dead is None else dead
        if self.granularity == "channel":
            return self._channel_masks(dead)
        masks: Masks = {}
        for t in self.targets:
            d = dead[t.key]
            if not bool(d.any()):
                continue
            keep = ~d.repeat_interleave(t.per)
            for p in ("weight", "bias"):
                masks[f"{t.norm_name}.{p}"] = keep.clone()
        return masks

    def _channel_masks(self, dead: dict[str, torch.Tensor]) -> Masks:
        plans = []
        for t in self.targets:
            local = torch.nonzero(dead[t.key]).flatten()
            if len(local) == t.count:
                local = local[1:]  # a layer never loses every channel: the first stays, its output zero
            if len(local):
                plans.append(UnitPlan(t.unit, "prune", prune=t.roots[local].sort().values))
        if not plans:
            return {}
        with torch.enable_grad():  # Torch-Pruning traces through autograd
            return self.pruner.mask(Plan("channel", plans), apply=False).masks

    # -- the Trainer's events

    def on_fit_start(self, state: FitState) -> None:
        if state.dist.enabled:
            raise PruneCliError("sss trains its gates in one process: run it without torchrun (the gates live outside the model DDP wraps)")
        device = next((p.device for p in state.model.parameters()), torch.device("cpu"))
        for k, g in self.gates.items():
            g.data = g.data.to(device)
            self.velocity[k] = self.velocity[k].to(device)

    @torch.no_grad()
    def after_backward(self, state: FitState) -> None:
        lr = float(state.optimizer.param_groups[0]["lr"])
        grads = {}
        for k, g in self.gates.items():
            grads[k] = g.grad if g.grad is not None else torch.zeros_like(g)
            g.grad = None
        if state.scaler is not None:  # fp16 AMP: the scaler unscaled the optimizer's gradients, not these
            inv = 1.0 / state.scaler.get_scale()
            grads = {k: v * inv for k, v in grads.items()}
            if not all(bool(torch.isfinite(v).all()) for v in grads.values()):
                return  # the scaler skips this step for the weights too
        for k, g in self.gates.items():
            apg_step(g, grads[k], self.velocity[k], lr=lr, gamma=self.gamma, momentum=self.momentum)

    def before_eval(self, state: FitState) -> None:
        dead = self.dead_names()
        if dead != self._dead_seen:
            # the structure the checkpoint stands for changed: earlier results do not compare
            state.masks_changed()
            self._dead_seen = dead

    def before_save(self, state: FitState) -> None:
        dead = self.dead()
        new = self.dead_masks(dead)  # outside no_grad: channel masks trace the model
        with torch.no_grad():
            tensors = maskable_tensors(state.model)
            touched = {f"{t.norm_name}.{p}" for t in self.targets for p in ("weight", "bias")} | set(new)
            self._raw = {n: tensors[n].detach().clone() for n in sorted(touched)}
            for t in self.targets:  # the gates into the BatchNorms: gamma * g, beta * g
                scale = self._expanded(t).to(t.norm.weight.dtype)
                t.norm.weight.mul_(scale)
                t.norm.bias.mul_(scale)
            masks = combine(self.base, new)
            state.checkpoint_masks = masks
            apply_masks(state.model, masks)  # the file's weights are zero under its masks, as every checkpoint's
        record = dict(self.store.get(RECORD_KEY) or {})
        record.update(
            granularity=self.granularity,
            gamma=self.gamma,
            momentum=self.momentum,
            epoch=state.epoch,
            gates={k: g.detach().cpu().clone() for k, g in self.gates.items()},
            dead=self.dead_names(dead),
            kept_downsampling=self._kept_downsampling(dead),
        )
        self.store[RECORD_KEY] = record

    @torch.no_grad()
    def after_save(self, state: FitState) -> None:
        self._restore(self._raw)
        line = self._summary(self.dead())
        if line != self._logged:  # a line when what is dead changes, not every epoch
            log(line)
            self._logged = line

    def _restore(self, raw: dict[str, torch.Tensor]) -> None:
        tensors = maskable_tensors(self.model)
        for n, t in raw.items():
            if n not in tensors or tuple(tensors[n].shape) != tuple(t.shape):
                raise PruneCliError(f"this checkpoint's sss resume state does not fit the model ({n}): start the sss stage again")
            tensors[n].copy_(t.to(tensors[n].device))

    def on_fit_end(self, state: FitState) -> None:
        self.remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {
            "gates": {k: g.detach().cpu().clone() for k, g in self.gates.items()},
            "velocity": {k: v.detach().cpu().clone() for k, v in self.velocity.items()},
            "raw": {n: t.detach().cpu() for n, t in self._raw.items()},
            "base": dict(self.base),
            "dead_seen": list(self._dead_seen),
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        gates, velocity, raw = state.get("gates"), state.get("velocity"), state.get("raw")
        if not isinstance(gates, dict) or not isinstance(velocity, dict) or not isinstance(raw, dict):
            raise PruneCliError("this checkpoint's sss gates are missing from its resume state: start the sss stage again")
        for k, g in self.gates.items():
            a, b = gates.get(k), velocity.get(k)
            if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != g.shape or b.shape != g.shape:
                raise PruneCliError(f"this checkpoint's sss gates do not fit {k}: start the sss stage again")
            g.data = a.to(device=g.device, dtype=g.dtype).clone()
            self.velocity[k] = b.to(device=g.device, dtype=g.dtype).clone()
        self._restore(raw)  # the file holds the gates folded in; training continues from the unfolded values
        self._dead_seen = [str(x) for x in state.get("dead_seen") or []]


def _ungateable(found: list, name: str) -> str:
    """Why a BatchNorm's channels cannot be gated and removed one by one ('' when they can)."""
    if len(found) != 1:
        return "not in one dependency group"
    unit, _ = found[0]
    if not unit.producers:
        return "no producing conv"
    if unit.conv_groups > 1 or unit.multiple > 1:
        return "grouped channels"
    if unit.unprunable:
        return unit.unprunable
    if unit.stat_norms or unit.others:
        return "other layers normalise or hold these channels"
    if [v.name for v in unit.norms] != [name]:
        return "its channels feed a residual sum"
    return ""


@register_algorithm("sss")
class SparseStructureSelectionAlgorithm(Algorithm):
    """Learn which residual blocks, groups or channels to keep: gates under an L1 penalty, trained by APG (Huang & Wang, ECCV 2018, arXiv:1707.01213).

    ``prune --method sss --epochs N --granularity block|group|channel --sss-gamma 0.01``;
    then ``compress`` drops the dead blocks and removes the dead channels.
    """

    criteria_note = "its own gates (sss)"
    trains = True

    def accepts(self, criterion: Criterion) -> Optional[str]:
        if getattr(criterion, "learned", None) != self.name:
            return "sss trains its own gates: use --method sss"
        return None
