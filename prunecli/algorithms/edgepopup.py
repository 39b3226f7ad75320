"""Learned masks with edge-popup scores: seed 000's score stage (``prune --method edgepopup --epochs N``).

Ramanujan et al., "What's Hidden in a Randomly Weighted Neural Network?", CVPR 2020,
arXiv:1911.13299; the three-step workflow (pretrain -> learn the mask -> fine-tune) and its
options are seed 000's (METHODS.md, "Learned-score neuron pruning").

The stage freezes every weight and trains one score per weight of the prunable conv and
linear layers, and nothing else:

* forward: each scored layer computes with ``w * m``, where the hard mask ``m`` keeps the
  top scores; the module's weight is swapped for that product in a forward pre-hook and
  put back after the call, so the model's parameters (and its state dict) are never
  rewritten;
* backward: a straight-through estimator, ``m + a - a.detach()`` with ``a = |s|`` (``s``
  for ``--rank relevant --no-rank-abs``), whose value is ``m`` and whose gradient reaches
  every score as ``dL/d(w m) * w``, as hidden-networks' GetSubnet does;
* ``--granularity weight`` ranks each weight by |s| (hidden-networks); ``channel`` ranks
  each channel of a dependency group by its rows' scores (prunecli.criteria.edgepopup)
  and masks the whole channel: the producers' filters and biases and the BatchNorm scale
  and shift, so the channel is exactly zero and the checkpoint's group masks compress;
* ``--scope layerwise`` keeps the top (1 - rate) of each layer at every forward pass;
  ``global`` keeps what lies above one threshold over all eligible layers, recomputed at
  every epoch end (seed 000) -- so the layers' widths follow the scores between epochs;
* ``--warmup-epochs N``: the scores train with nothing masked for N epochs first.

Every epoch's checkpoint is an ordinary masked checkpoint (weights zero under the masks,
channel masks over whole dependency groups), so ``finetune`` trains the weights under the
fixed mask and ``compress`` removes the channels. The scores and the *initial* scores go
into ``extra["edgepopup_scores"]`` of this stage's file only (the seed recomputed its
initial scores from a fresh random init in every phase, a bug: here they are drawn once,
stored, and read back on resume); ``extra["edgepopup"]`` keeps the settings and each
layer's kept fraction, and is carried on. The frozen weights themselves go into the
resume state, as the file's weights are zero wherever the current selection masks them
and a global run may bring a channel back.

BatchNorm running statistics update as the scores train (the layers are in train mode, as
in hidden-networks); every parameter, BatchNorm scale and shift included, stays bit-identical.
Under torchrun the stage refuses to start: the scores live outside the model DDP wraps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from prunecli.algorithms._registry import Algorithm, register_algorithm
from prunecli.config.prune import Selection
from prunecli.criteria import Criterion
from prunecli.criteria.random import stream_seed
from prunecli.engine.trainer import Callback, FitState
from prunecli.errors import PruneCliError
from prunecli.surgery.masks import Masks, apply_masks, combine
from prunecli.surgery.plan import Plan, UnitPlan, global_count, removed_count, resolve
from prunecli.surgery.pruner import Pruner
from prunecli.surgery.units import layer_weights

SCORES_KEY = "edgepopup_scores"  # extra of the score stage's file: {"scores", "initial"} (not carried on)
RECORD_KEY = "edgepopup"  # extra: settings and per-layer kept fractions (carried on)


def initial_scores(shape: torch.Size, how: str, seed: int, layer: str) -> torch.Tensor:
    """One layer's initial scores, drawn from a stream of (seed, layer name) (float32, CPU).

    kaiming-uniform: U(-b, b), b = gain * sqrt(3 / fan_in) with gain = sqrt(2 / (1 + a^2)),
    a = sqrt(5) (hidden-networks: nn.init.kaiming_uniform_(scores, a=math.sqrt(5)));
    uniform: U[0, 1); gaussian: N(0, 1).
    """
    gen = torch.Generator().manual_seed(stream_seed(seed, f"edgepopup-scores:{layer}"))
    if how == "kaiming-uniform":
        fan_in = int(math.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
        gain = math.sqrt(2.0 / (1.0 + 5.0))
        bound = gain * math.sqrt(3.0 / max(1, fan_in))
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * bound
    if how == "uniform":
        return torch.rand(shape, generator=gen)
    if how == "gaussian":
        return torch.randn(shape, generator=gen)
    raise PruneCliError(f"--score-init {how!r}: kaiming-uniform, uniform or gaussian")


@dataclass(eq=False)
class _Scored:
    """A scored conv/linear layer: its rows belong to one channel unit (channel mode)."""

    name: str
    module: nn.Module
    unit: Any = None  # channel mode: the Unit
    local: Optional[torch.Tensor] = None  # local output indices -> unit channels (roots)
    roots: Optional[torch.Tensor] = None
    rate: float = 0.0  # layerwise rate (weight mode)


@dataclass(eq=False)
class _Channels:
    """A channel unit edge-popup selects in: its producers, norms and rate."""

    unit: Any
    rate: float
    norms: list = field(default_factory=list)  # (module, local, roots) of its affine norms


class EdgePopupCallback(Callback):
    """Trains the scores with the weights frozen; each checkpoint holds the current selection."""

    key = "edgepopup"

    def __init__(self, model: nn.Module, criterion: Criterion, selection: Selection, *, granularity: str, example: torch.Tensor,
                 name: str, score_init: str, warmup_epochs: int, seed: int, store: dict[str, Any], base: Masks):
        self.criterion = criterion
        self.selection = selection
        self.granularity = granularity
        self.warmup = int(warmup_epochs)
        self.score_init = score_init
        self.store = store  # the run's checkpoint extra (its template's): the scores are written there
        self.base = {k: v.detach().cpu().clone() for k, v in base.items()}  # the parent's masks, enforced as ever
        self.model = model
        self.settings = {
            "granularity": granularity,
            "scope": selection.scope,
            "rate": selection.rate,
            "rank": getattr(criterion, "rank", "absolute"),
            "rank_abs": getattr(criterion, "rank_abs", True),
            "score_init": score_init,
            "warmup_epochs": int(warmup_epochs),
        }
        # noabs ranks channels by the signed sum of their scores: the gradient goes to s itself
        self.signed = getattr(criterion, "rank", "absolute") == "relevant" and not getattr(criterion, "rank_abs", True)
        self.pruner = Pruner(model, criterion, selection, example_input=example, granularity=granularity, name=name)
        self.notes: list[str] = []
        self.layers: list[_Scored] = []
        self.units: list[_Channels] = []
        self._find_targets()
        if not self.layers:
            raise PruneCliError("edgepopup: no prunable layer to score (check --skip, --protect and the rates)")
        self.scores: dict[str, nn.Parameter] = {}
        self.initial: dict[str, torch.Tensor] = {}
        for s in self.layers:
            init = initial_scores(s.module.weight.shape, score_init, seed, s.name)
            self.initial[s.name] = init.clone()
            self.scores[s.name] = nn.Parameter(init)
        criterion.bind(self.scores, self.initial)
        for p in model.parameters():  # the weights are frozen: only the scores train
            p.requires_grad_(False)
        self.frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.pruning = self.warmup == 0
        self.threshold: Optional[float] = None  # global scope: this epoch's threshold on the ranks
        self._cache: Optional[dict[str, torch.Tensor]] = None
        self._by_id: dict[int, tuple[str, str]] = {}  # id(module) -> (kind, name)
        self._handles: list = []
        self._install()

    # -- what is scored

    def _find_targets(self) -> None:
        sel = self.selection
        pruner = self.pruner
        if self.granularity == "weight":
            plans = resolve(layer_weights(self.model), sel, output_layer=pruner.output_layer, linear_layers=pruner._linear_layers())
            for p in plans:
                if p.status == "prune" and (p.rate > 0 or sel.scope == "global"):
                    self.layers.append(_Scored(p.unit.root, p.unit.module, rate=p.rate))
            return
        plans = resolve(pruner.units, sel, output_layer=pruner.output_layer, linear_layers=pruner._linear_layers())
        skipped = []
        for p in plans:
            u = p.unit
            if p.status != "prune" or (p.rate <= 0 and sel.scope != "global"):
                continue
            why = _unselectable(u)
            if why:
                skipped.append(f"{u.root} ({why})")
                continue
            entry = _Channels(u, p.rate)
            for n in u.norms:
                entry.norms.append((n.module, n.local_idxs.clone(), n.root_idxs.clone()))
            self.units.append(entry)
            for q in u.producers:
                self.layers.append(_Scored(q.name, q.module, unit=entry, local=q.local_idxs.clone(), roots=q.root_idxs.clone()))
        if skipped:
            self.notes.append(f"edgepopup leaves {len(skipped)} layer group(s) whole: {', '.join(skipped[:4])}")

    # -- the forward pass: w * mask, with the straight-through gradient to the scores

    def _install(self) -> None:
        this = self  # closures, not bound methods: a deep copy of the model (Pruner.mask) shares them harmlessly

        def pre(module, args):
            hit = this._by_id.get(id(module))
            if hit is None:
                return
            kind, name = hit
            hard = this._hard()
            saved = {}
            if kind == "layer":
                s = this.scores[name]
                a = s if this.signed else s.abs()
                m = hard.get(name)
                ste = (a - a.detach()) + (m if m is not None else 1.0)
                w = module._parameters["weight"]
                saved["weight"] = w
                module._parameters["weight"] = w * ste
                rows = hard.get(name + ":rows")
                if rows is not None and module._parameters.get("bias") is not None:
                    saved["bias"] = module._parameters["bias"]
                    module._parameters["bias"] = saved["bias"] * rows
            else:  # a norm of a channel unit: its scale and shift follow the channel mask
                m = hard.get(name)
                if m is not None:
                    for t in ("weight", "bias"):
                        if module._parameters.get(t) is not None:
                            saved[t] = module._parameters[t]
                            module._parameters[t] = saved[t] * m
            module.__dict__["_edgepopup_saved"] = saved

        def post(module, args, out):
            saved = module.__dict__.pop("_edgepopup_saved", None)
            if saved:
                module._parameters.update(saved)

        norms_done: set[int] = set()
        for s in self.layers:
            self._by_id[id(s.module)] = ("layer", s.name)
        for u in self.units:
            for module, _, _ in u.norms:
                if id(module) not in norms_done:
                    norms_done.add(id(module))
                    self._by_id[id(module)] = ("norm", f"norm:{id(module)}")
        modules = {id(m): m for m in self.model.modules()}
        for mid in self._by_id:
            m = modules[mid]
            self._handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # -- the selection

    def _channel_ranks(self) -> dict[int, torch.Tensor]:
        return {id(u): self.criterion.channel_scores(u.unit) for u in self.units}

    @torch.no_grad()
    def keep(self) -> dict[str, torch.Tensor]:
        """The current selection: unit channels kept (channel mode, keyed ``unit:<root>``) or
        weights kept (weight mode, keyed by layer), as bool tensors on the CPU."""
        sel = self.selection
        out: dict[str, torch.Tensor] = {}
        if self.granularity == "weight":
            for s in self.layers:
                a = self.scores[s.name].detach().abs().flatten().double().cpu()
                if not self.pruning:
                    keep = torch.ones_like(a, dtype=torch.bool)
                elif sel.scope == "global":
                    keep = a > self.threshold
                    if not keep.any():
                        keep[int(torch.argmax(a))] = True  # a layer never loses every weight
                else:
                    n = min(removed_count(a.numel(), s.rate, sel.count_rule), a.numel() - 1)
                    keep = torch.ones_like(a, dtype=torch.bool)
                    keep[torch.sort(a, stable=True).indices[:n]] = False
                out[s.name] = keep.view(self.scores[s.name].shape)
            return out
        ranks = self._channel_ranks()
        for u in self.units:
            r = ranks[id(u)].cpu()
            size = len(r)
            if not self.pruning:
                keep = torch.ones(size, dtype=torch.bool)
            else:
                order = torch.sort(r, stable=True).indices  # ascending: the first ones go
                if sel.scope == "global":
                    kept = int((r > self.threshold).sum())
                else:
                    kept = size - min(removed_count(size, u.rate, sel.count_rule), size - 1)
                kept = max(kept, self._min_keep(size))
                step = max(1, sel.round_to)
                if step > 1 and size >= step:
                    kept = min(size, int(math.ceil(kept / step)) * step)
                keep = torch.zeros(size, dtype=torch.bool)
                keep[order[size - kept:]] = True
            out[f"unit:{u.unit.root}"] = keep
        return out

    def _min_keep(self, size: int) -> int:
        cap = self.selection.max_layer_rate
        floor = 1 if cap is None else max(1, size - int(size * cap + 1e-9))
        return min(size, floor)

    @torch.no_grad()
    def _set_threshold(self) -> None:
        """Global scope: one threshold over every eligible channel (or weight) rank, from the scores now."""
        if self.selection.scope != "global":
            return
        if self.granularity == "weight":
            allv = torch.cat([self.scores[s.name].detach().abs().flatten().double().cpu() for s in self.layers])
        else:
            allv = torch.cat([r.cpu() for r in self._channel_ranks().values()])
        target = min(global_count(allv.numel(), self.selection.rate or 0.0, self.selection.count_rule), allv.numel())
        self.threshold = float(torch.kthvalue(allv, target).values) if target > 0 else -math.inf

    def _hard(self) -> dict[str, torch.Tensor]:
        """The hard masks of this forward pass (float, on the layers' devices), cached until the scores change."""
        if self._cache is not None:
            return self._cache
        keep = self.keep()
        out: dict[str, torch.Tensor] = {}
        if self.granularity == "weight":
            for s in self.layers:
                out[s.name] = keep[s.name].to(device=s.module.weight.device, dtype=s.module.weight.dtype)
        else:
            for s in self.layers:
                k = keep[f"unit:{s.unit.unit.root}"]
                w = s.module.weight
                rows = torch.ones(w.shape[0], dtype=w.dtype)
                rows[s.local] = k[s.roots].to(w.dtype)
                rows = rows.to(w.device)
                out[s.name + ":rows"] = rows
                out[s.name] = rows.view(-1, *([1] * (w.dim() - 1)))
            for u in self.units:
                k = keep[f"unit:{u.unit.root}"]
                for module, local, roots in u.norms:
                    ref = module.weight if getattr(module, "weight", None) is not None else None
                    if ref is None:
                        continue
                    ch = torch.ones(ref.shape[0], dtype=ref.dtype)
                    ch[local] = k[roots].to(ref.dtype)
                    name = f"norm:{id(module)}"
                    out[name] = out[name] * ch.to(ref.device) if name in out else ch.to(ref.device)
        self._cache = out
        return out

    def checkpoint_masks(self) -> Masks:
        """The current selection as checkpoint masks: whole dependency groups (channel mode), so it compresses."""
        keep = self.keep()
        if self.granularity == "weight":
            return {f"{s.name}.weight": keep[s.name].clone() for s in self.layers if not bool(keep[s.name].all())}
        plans = []
        for u in self.units:
            k = keep[f"unit:{u.unit.root}"]
            gone = torch.nonzero(~k).flatten()
            if len(gone):
                plans.append(UnitPlan(u.unit, "prune", rate=len(gone) / len(k), prune=gone))
        if not plans:
            return {}
        # Torch-Pruning traces through autograd: the copy it traces needs weights that take gradients
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                return self.pruner.mask(Plan("channel", plans, rate=self.selection.rate), apply=False).masks
        finally:
            for p in params:
                p.requires_grad_(False)

    def kept_fractions(self) -> list[dict[str, Any]]:
        """Per scored layer: the fraction of its weights (weight mode) or filters (channel mode) kept now."""
        keep = self.keep()
        rows = []
        for s in self.layers:
            if self.granularity == "weight":
                k = keep[s.name]
                rows.append({"layer": s.name, "kept": round(float(k.float().mean()), 6), "of": int(k.numel()), "unit": "weights"})
            else:
                k = keep[f"unit:{s.unit.unit.root}"][s.roots]
                rows.append({"layer": s.name, "kept": round(float(k.float().mean()), 6), "of": int(k.numel()), "unit": "filters"})
        return rows

    # -- the Trainer's events

    def parameters(self, model: nn.Module) -> list[nn.Parameter]:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for p in self.scores.values():
            p.data = p.data.to(device)
        return list(self.scores.values())

    def on_fit_start(self, state: FitState) -> None:
        if state.dist.enabled:
            raise PruneCliError("edgepopup trains its scores in one process: run it without torchrun (the scores live outside the model DDP wraps)")
        self.pruning = state.epoch >= self.warmup
        if self.pruning:
            self._set_threshold()
        self._cache = None

    def after_backward(self, state: FitState) -> None:
        pass

    def after_step(self, state: FitState) -> None:
        self._cache = None  # the scores moved

    def before_eval(self, state: FitState) -> None:
        if state.epoch >= self.warmup:
            if not self.pruning:
                self.pruning = True
                state.masks_changed()  # the dense warm-up epochs do not compare with the pruned ones
            self._set_threshold()  # once per epoch, from the scores the next epoch starts with
        self._cache = None

    @torch.no_grad()
    def before_save(self, state: FitState) -> None:
        masks = combine(self.base, self.checkpoint_masks())
        state.checkpoint_masks = masks
        apply_masks(state.model, masks)  # the file's weights are zero under its masks, as every checkpoint's
        self.store[SCORES_KEY] = {
            "scores": {n: p.detach().cpu().clone() for n, p in self.scores.items()},
            "initial": {n: t.clone() for n, t in self.initial.items()},
        }
        record = dict(self.settings)
        record.update(epoch=state.epoch, pruning=self.pruning, threshold=self.threshold, layers=self.kept_fractions())
        self.store[RECORD_KEY] = record

    @torch.no_grad()
    def after_save(self, state: FitState) -> None:
        params = dict(state.model.named_parameters())
        for n, t in self.frozen.items():
            params[n].copy_(t.to(params[n].device))

    def on_fit_end(self, state: FitState) -> None:
        self.remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"frozen": {n: t.cpu() for n, t in self.frozen.items()}, "base": dict(self.base)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = self.store.get(SCORES_KEY)
        frozen = state.get("frozen")
        if not isinstance(stored, dict) or not isinstance(frozen, dict):
            raise PruneCliError("this checkpoint's edge-popup scores or frozen weights are missing: start the score stage again")
        scores, initial = stored.get("scores") or {}, stored.get("initial") or {}
        for name, p in self.scores.items():
            s, i = scores.get(name), initial.get(name)
            if not isinstance(s, torch.Tensor) or not isinstance(i, torch.Tensor) or s.shape != p.shape or i.shape != p.shape:
                raise PruneCliError(f"this checkpoint's edge-popup scores do not fit layer {name}")
            p.data.copy_(s.to(p.device))
            self.initial[name] = i.clone()  # read back, never drawn again
        self.criterion.bind(self.scores, self.initial)
        params = dict(self.model.named_parameters())
        for n, t in frozen.items():
            if n in params and isinstance(t, torch.Tensor) and t.shape == params[n].shape:
                self.frozen[n] = t.clone()
                params[n].copy_(t.to(params[n].device))
        self._cache = None


def _unselectable(unit) -> str:
    """Why edge-popup's channel mode leaves a unit whole ('' when it can select in it)."""
    if not unit.producers:
        return "no producing layer to score"
    if unit.conv_groups > 1 or unit.multiple > 1:
        return "grouped channels"
    if unit.stat_norms:
        return "LayerNorm/GroupNorm over its channels"
    if unit.unprunable:
        return unit.unprunable
    if any(getattr(q.module, "transposed", False) for q in unit.producers):
        return "transposed convolution"
    for n in unit.norms:
        if getattr(n.module, "weight", None) is None:
            return f"{n.name} has no scale and shift to zero"
    return ""


def without_scores(extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` without the score tensors, which belong to the score stage's own file."""
    return {k: v for k, v in extra.items() if k != SCORES_KEY}


@register_algorithm("edgepopup")
class EdgePopupAlgorithm(Algorithm):
    """Learn the mask: a score per weight, the weights frozen (Ramanujan et al., edge-popup, CVPR 2020, arXiv:1911.13299; seed 000's neuron pruning).

    ``prune --method edgepopup --epochs N [--granularity channel|weight] [--scope global]
    [--rank relevant] [--warmup-epochs W]``; then ``finetune`` the weights under the
    learned mask and ``compress`` (channel mode).
    """

    criteria_note = "its own scores (edgepopup)"
    trains = True

    def accepts(self, criterion: Criterion) -> Optional[str]:
        if getattr(criterion, "learned", None) != self.name:
            return "edgepopup trains its own scores: use --method edgepopup"
        return None
