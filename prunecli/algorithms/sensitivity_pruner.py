"""The Sensitivity Pruner: a learned, SNIP-guided strategy that chooses one block's channels.

Guo et al., "Sensitivity Pruner: Filter-Level Compression Algorithm for Deep Neural
Networks", Pattern Recognition 140, 2023 (seed 004; it builds on AutoPruner, Luo & Wu,
arXiv:1805.08941). ``prunecli compress --block-by-block --method sensitivity`` runs it on
every block (prunecli.stages.block_by_block); this module trains one block's strategy.

For every mini-batch of the block's ``--unit-epochs`` epochs:

1. *Sensitivity target* (SNIP, Lee et al. 2019): |w * dL/dw| of every eligible layer (the
   single conv/linear producing a pruning unit's channels, i.e. not a residual stream, not
   the output layer), summed per output filter. The filters to keep (the fraction
   1 - ``--rate``) come from one sort over all eligible filters of the network, or per
   layer with ``--layersort``; a layer left with none keeps its best int(C * keep * 0.2)
   (at least one), as the reference does. ``--snip-on``:

   - ``reinit`` (default, the reference's choice): on a copy of the run's *starting*
     architecture whose conv/linear weights are drawn afresh (Xavier normal) for every
     batch, so the target says which filters the architecture needs, independent of the
     trained weights. The copy is built once and re-initialised in place each batch,
     which computes the same thing as the reference's rebuilding, without the rebuild.
   - ``current``: on the network being pruned, as it is (in eval mode, so that its
     BatchNorm statistics are not updated by the extra pass).

   The loss of that pass is the reference's: ``nll_loss`` on the raw logits (-logit of
   the true class), not the cross-entropy.
2. *Strategy*: a small conv per layer maps the layer's sensitivity map (the per-filter
   |w * dL/dw| summed over input channels, normalised by the total over all eligible
   filters: C x kh x kw) to C logits; mask = sigmoid(beta * logits) scales the channel
   where the next layer reads it. beta rises along linspace(1, 100) over the block's run,
   one step every 100 iterations, and a layer whose masks are not yet two-sided (fewer
   than 90% of entries below 0.2 or above 0.8) gets +1 on its whole beta row.
3. *Loss*: cross-entropy + sum_l lambda_l * mean|mask_l - target_l|. lambda_l starts at
   0.1 and is re-set every 20 iterations: 0 once the voted keep fraction is at or below
   the target's, else 5 * |voted prune fraction - target prune fraction|.
4. *Indicator*: every 20 iterations a majority vote over the binarised masks of those
   iterations (a tie keeps the channel; the reference's sign() gives it 0.5). Weights and
   strategy train together: SGD (lr 1e-3, momentum 0.9, wd 5e-4), lr x 0.1 at half the
   epochs. After every epoch the network is validated with the hard indicator, and the
   best epoch's weights and indicator are kept.

Differences from the reference code, on purpose: the sensitivity map sums |w * dL/dw|
over the input channels of each filter (the reference reshapes (out, in, kh, kw) to
(in, out, kh, kw) and sums the first axis, which mixes filters); a short epoch (< 20
iterations) still votes at its end (the reference would have no indicator to validate);
with one unit epoch the lr never decays (the reference divides by int(epochs / 2) = 0).
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunecli.data import DataBundle
from prunecli.data.loaders import epoch_seed, make_batches
from prunecli.engine.callbacks import KILL_ENV
from prunecli.engine.loop import evaluate
from prunecli.errors import PruneCliError
from prunecli.models.folding import inference_only_reason
from prunecli.surgery.units import Producer, Unit

BETA_RANGE = 100  # iterations per beta step (the reference's --beta_range)
VOTE_EVERY = 20  # iterations per indicator vote and lambda update (--channel_index_range)
LAMBDA0 = 0.1


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def primary_producer(unit: Unit, output_layer: Optional[str]) -> Optional[Producer]:
    """The one conv/linear whose filters make ``unit``'s channels, or None when the unit is not eligible.

    Eligible: prunable, no routing layer, exactly one producer besides depthwise convs (a
    residual stream has several), and not the network's output layer.
    """
    if unit.unprunable or unit.routing or unit.conv_groups > 1:
        return None
    main = [p for p in unit.producers if not _depthwise(p.module)]
    if len(main) != 1 or main[0].name == output_layer:
        return None
    if len(main[0].local_idxs) != unit.channels:
        return None
    return main[0]


@dataclass
class Layer:
    """One eligible unit of the block being pruned."""

    root: str
    unit: Unit
    producer: Producer
    consumers: list[tuple[nn.Module, torch.Tensor, torch.Tensor]]  # (module, local input idxs, unit channel of each)


def block_layers(units: list[Unit], owned: Callable[[Unit], bool], output_layer: Optional[str]) -> list[Layer]:
    """The block's eligible units, with the layers that read their channels (where the mask applies)."""
    layers = []
    for u in units:
        if not owned(u):
            continue
        p = primary_producer(u, output_layer)
        if p is None:
            continue
        producers = {q.module for q in u.producers}
        consumers = []
        for item in u.group.items:
            module = item.dep.target.module
            if item.dep.handler.__name__ != "prune_in_channels" or module in producers:
                continue
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                continue
            local = torch.as_tensor([int(i) for i in item.idxs], dtype=torch.long)
            root = torch.as_tensor([int(i) for i in item.root_idxs], dtype=torch.long)
            consumers.append((module, local, root))
        if consumers:
            layers.append(Layer(u.root, u, p, consumers))
    return layers


class Gates:
    """Forward pre-hooks scaling each block layer's channels where its consumers read them."""

    def __init__(self, layers: list[Layer]):
        self.layers = layers
        self.values: list[Optional[torch.Tensor]] = [None] * len(layers)
        self._handles = []
        for i, layer in enumerate(layers):
            for module, local, root in layer.consumers:
                self._handles.append(module.register_forward_pre_hook(self._hook(i, module, local, root)))

    def _hook(self, i: int, module: nn.Module, local: torch.Tensor, root: torch.Tensor):
        width = module.in_channels if isinstance(module, nn.modules.conv._ConvNd) else module.in_features

        def hook(_, args):
            g = self.values[i]
            if g is None:
                return None
            scale = torch.ones(width, dtype=args[0].dtype, device=args[0].device)
            scale = scale.index_put((local.to(scale.device),), g.to(scale.dtype)[root.to(g.device)])
            shape = (1, width) + (1,) * (args[0].dim() - 2)
            return (args[0] * scale.view(shape),) + tuple(args[1:])

        return hook

    def set(self, values: Optional[list[torch.Tensor]]) -> None:
        self.values = list(values) if values is not None else [None] * len(self.layers)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class Snip:
    """Per batch: the block layers' normalised sensitivity maps and keep targets (module docstring, step 1)."""

    def __init__(self, net: nn.Module, net_units: list[Unit], output_layer: Optional[str], block_roots: list[str], *, keep: float, layersort: bool, reinit: bool):
        self.net, self.keep, self.layersort, self.reinit = net, keep, layersort, reinit
        eligible = [(u.root, primary_producer(u, output_layer)) for u in net_units]
        self.eligible = [(root, p) for root, p in eligible if p is not None]
        roots = [r for r, _ in self.eligible]
        missing = [r for r in block_roots if r not in roots]
        if missing:
            raise ValueError(f"the sensitivity network lacks the block's layer {missing[0]}")
        self.block = [roots.index(r) for r in block_roots]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        net = self.net
        if self.reinit:
            with torch.no_grad():
                for m in net.modules():
                    if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
                        nn.init.xavier_normal_(m.weight)
        was = net.training
        if not self.reinit:
            net.eval()  # the network being pruned: this extra pass must not move its BatchNorm statistics
        try:
            weights = [p.module.weight for _, p in self.eligible]
            with torch.enable_grad():
                loss = F.nll_loss(net(x), y)  # the reference's: -logit of the true class
                grads = torch.autograd.grad(loss, weights, allow_unused=True)
        finally:
            net.train(was)
        sens = []
        for (_, p), w, g in zip(self.eligible, weights, grads):
            s = (w.detach() * g).abs() if g is not None else torch.zeros_like(w)
            if s.dim() == 2:
                s = s[:, :, None, None]  # a linear layer's filter: a 1x1 map
            sens.append(s[p.local_idxs.to(s.device)])
        per_filter = [s.flatten(1).sum(1) for s in sens]
        scores = torch.cat(per_filter)
        total = scores.sum().clamp(min=1e-30)
        if self.layersort:
            kept = [_top(f, max(1, int(len(f) * self.keep))) for f in (per_filter[i] for i in self.block)]
        else:
            k = int(len(scores) * self.keep)
            threshold = torch.topk(scores, k).values[-1] if k >= 1 else scores.max() + 1
            kept = []
            for i in self.block:
                t = (per_filter[i] >= threshold).float()
                if t.sum() == 0:  # the reference's rescue: the layer keeps its best few
                    t = _top(per_filter[i], max(1, int(len(per_filter[i]) * self.keep * 0.2)))
                kept.append(t)
        maps = [sens[i].sum(1) / total for i in self.block]  # C x kh x kw: summed over input channels
        return maps, kept


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    t = torch.zeros_like(scores)
    t[torch.topk(scores, min(k, len(scores))).indices] = 1.0
    return t


def strategy_for(layers: list[Layer], maps_shapes: list[tuple[int, ...]]) -> nn.ModuleList:
    """One conv per layer: its C x kh x kw sensitivity map -> C logits (the reference's init)."""
    convs = []
    for shape in maps_shapes:
        c, kh, kw = shape
        conv = nn.Conv2d(c, c, kernel_size=(kh, kw))
        with torch.no_grad():
            conv.weight.normal_(0, 10 * math.sqrt(2.0 / (9 * c)))  # the reference's n = 3 * 3 * C, whatever the kernel
        convs.append(conv)
    return nn.ModuleList(convs)


@dataclass
class SPConfig:
    rate: float  # fraction removed (the reference's compression_rate is 1 - rate)
    epochs: int
    batch_size: int
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    layersort: bool = False
    steps_per_epoch: Optional[int] = None
    seed: int = 0
    workers: int = 0


@dataclass
class SPResult:
    kept: dict[str, torch.Tensor]  # unit root -> bool per channel
    votes: dict[str, torch.Tensor]  # unit root -> fraction of votes to keep (tie-breaker)
    best_top1: Optional[float]
    best_epoch: int
    seconds: dict[str, float] = field(default_factory=dict)  # where the block's time went: snip, train, validate


def train_block(
    model: nn.Module,
    layers: list[Layer],
    snip: Snip,
    bundle: DataBundle,
    cfg: SPConfig,
    *,
    device: torch.device,
    resume: Optional[dict[str, Any]] = None,
    save: Optional[Callable[[dict[str, Any]], None]] = None,
    log: Callable[[str], None] = lambda s: None,
) -> SPResult:
    """Train the strategy and the weights of ``model`` for one block; ``model`` ends with the best epoch's weights.

    ``save(state)`` runs after every epoch but the last with everything a resumed call
    needs (``resume=state``) to end exactly as an uninterrupted one.
    """
    folded = inference_only_reason(model)  # its own loop, not the Trainer's: the same refusal
    if folded:
        raise PruneCliError(folded)
    train_batches = make_batches(bundle, "train", batch_size=cfg.batch_size, device=device, train=True, seed=cfg.seed, workers=cfg.workers)
    # validation batches of at least 256: the batch size does not change an eval-mode result, and
    # small pruning batches (the reference prunes with 12) would make validation dominate the run
    test_batches = make_batches(bundle, "test", batch_size=max(cfg.batch_size, 256), device=device, train=False, seed=cfg.seed, workers=cfg.workers)
    steps = min(len(train_batches), cfg.steps_per_epoch) if cfg.steps_per_epoch else len(train_batches)
    x0, y0 = next(iter(train_batches))
    torch.manual_seed(epoch_seed(cfg.seed, 0, stream=6))  # the strategy's initialisation
    shapes = [tuple(m.shape) for m in snip(x0[:2], y0[:2])[0]]
    strategy = strategy_for(layers, shapes).to(device)
    gates = Gates(layers)
    params = [p for p in model.parameters() if p.requires_grad] + list(strategy.parameters())
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n_beta = max(1, int(cfg.epochs * steps / BETA_RANGE))
    beta = torch.linspace(1, 100, n_beta, dtype=torch.float64).repeat(len(layers), 1)
    beta_index, lam, window = 0, [LAMBDA0] * len(layers), []
    index = [torch.ones(m[0], dtype=torch.bool) for m in shapes]
    votes = [torch.ones(m[0]) for m in shapes]
    best = {"top1": None, "epoch": 0, "state": None, "index": None, "votes": None}
    start = 0
    if resume:
        start = int(resume["epoch"])
        strategy.load_state_dict(resume["strategy"])
        opt.load_state_dict(resume["optimizer"])
        beta, beta_index, lam = resume["beta"].clone(), int(resume["beta_index"]), list(resume["lam"])
        index = [t.clone() for t in resume["index"]]
        votes = [t.clone() for t in resume["votes"]]
        best = dict(resume["best"])
    half = cfg.epochs // 2
    kill = os.environ.get(KILL_ENV, "")
    kill_epoch = int(kill) if kill.strip().isdigit() else None
    timing = {"snip": 0.0, "train": 0.0, "validate": 0.0}  # seconds, reported in the result
    try:
        for epoch in range(start, cfg.epochs):
            for group in opt.param_groups:  # x0.1 at half the epochs (never with one epoch)
                group["lr"] = cfg.lr * (0.1 ** (epoch // half) if half else 1.0)
            torch.manual_seed(epoch_seed(cfg.seed, epoch, stream=4))  # the SNIP copy's draws: a function of (seed, epoch)
            train_batches.set_epoch(epoch)
            model.train()
            strategy.train()
            window = []
            for i, (x, y) in enumerate(train_batches):
                if i >= steps:
                    break
                if i == 1 and kill_epoch == epoch + 1:  # the resume tests: die inside this epoch, after a save
                    os.kill(os.getpid(), signal.SIGKILL)
                if i % BETA_RANGE == 0:  # the reference steps beta on the epoch's own iteration count
                    beta_index = min(beta_index, n_beta - 1)
                    beta_index += 1
                b = beta[:, beta_index - 1].clone()
                t = time.perf_counter()
                maps, targets = snip(x, y)
                timing["snip"] += time.perf_counter() - t
                t = time.perf_counter()
                masks = [torch.sigmoid(float(b[l]) * strategy[l](maps[l].unsqueeze(0).to(device)).flatten()) for l in range(len(layers))]
                gates.set(masks)
                out = model(x)
                loss = F.cross_entropy(out, y)
                for l, (m, tgt) in enumerate(zip(masks, targets)):
                    loss = loss + lam[l] * F.l1_loss(m, tgt.to(m.device))
                window.append([m.detach().cpu() for m in masks])
                if len(window) == VOTE_EVERY or i == steps - 1:
                    index, votes = _vote(window, index)
                    for l, m_last in enumerate(window[-1]):
                        two_side = float(((m_last > 0.8) | (m_last < 0.2)).float().mean())
                        if two_side < 0.9 and beta_index >= n_beta // max(1, cfg.epochs):
                            beta[l] += 1
                        pruned = float((~index[l]).float().mean())
                        ratio = float(targets[l].float().mean())  # the target's keep fraction
                        lam[l] = next_lambda(pruned, ratio)
                    window = []
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                timing["train"] += time.perf_counter() - t
            gates.set([kept.float() for kept in index])  # validate with the hard indicator
            t = time.perf_counter()
            ev = evaluate(model, test_batches, device=device)
            timing["validate"] += time.perf_counter() - t
            log(f"strategy epoch {epoch + 1}/{cfg.epochs}: loss {float(loss.detach()):.4f}, top-1 with the indicator {ev.top1:.2f}%, "
                f"keeps {sum(int(t.sum()) for t in index)}/{sum(len(t) for t in index)} channels")
            if best["top1"] is None or ev.top1 > best["top1"]:
                best = {"top1": ev.top1, "epoch": epoch + 1, "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                        "index": [t.clone() for t in index], "votes": [t.clone() for t in votes]}
            if save is not None and epoch + 1 < cfg.epochs:
                save({"epoch": epoch + 1, "strategy": strategy.state_dict(), "optimizer": opt.state_dict(), "beta": beta.clone(),
                      "beta_index": beta_index, "lam": list(lam), "index": [t.clone() for t in index], "votes": [t.clone() for t in votes],
                      "best": best})
    finally:
        gates.remove()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        index, votes = best["index"], best["votes"]
    return SPResult(
        kept={layer.root: t for layer, t in zip(layers, index)},
        votes={layer.root: v for layer, v in zip(layers, votes)},
        best_top1=best["top1"],
        best_epoch=int(best["epoch"]),
        seconds=timing,
    )


def next_lambda(pruned: float, target_keep: float) -> float:
    """The reference's lambda rule: 0 once the voted keep fraction (1 - pruned) is below the
    target's, else 5 x the gap between the voted and the target prune fractions."""
    return 0.0 if 1 - pruned < target_keep else 5.0 * abs(pruned - 1 + target_keep)


def _vote(window: list[list[torch.Tensor]], previous: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Majority vote of the binarised masks of the last iterations (a tie keeps the channel)."""
    index, votes = [], []
    for l in range(len(previous)):
        v = torch.stack([w[l] > 0.5 for w in window]).float().mean(0)
        votes.append(v)
        index.append(v >= 0.5)
    return index, votes


def snip_network(reference: nn.Module) -> nn.Module:
    """The copy ``--snip-on reinit`` re-initialises every batch (its own module, never trained)."""
    net = copy.deepcopy(reference)
    for p in net.parameters():
        p.requires_grad_(True)
    return net.train()
