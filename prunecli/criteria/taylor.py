"""Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019, arXiv:1906.10771.

First-order Taylor importance from calibration batches. Torch-Pruning's TaylorImportance is
not reused: it checks for GroupNorm's pruning function where BatchNorm's is meant, so the
BatchNorm terms are silently dropped, and it sums |g*w| per weight rather than squaring the
channel's summed g*w as the paper does.

`gradient_pass`, `parameter_grads` and `per_channel_sum` are shared with hessian.py.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from prunecli.criteria._registry import Batches, Criterion, register_criterion, require_calibration
from prunecli._progress import batches_bar
from prunecli.errors import PruneCliError
from prunecli.criteria.norm import output_filters
from prunecli.models.layers import is_prunable
from prunecli.surgery.units import Producer, Unit


@contextlib.contextmanager
def gradient_pass(model) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Eval mode and requires_grad on every parameter; both restored exactly afterwards.

    Eval mode because we score the trained network as it will run: BatchNorm with its
    running statistics (train mode would also overwrite them) and no dropout noise.
    Gradients come from torch.autograd.grad, so no ``.grad`` is created or touched.
    """
    modes = [(m, m.training) for m in model.modules()]
    named = list(model.named_parameters())
    flags = [(p, p.requires_grad) for _, p in named]
    model.eval()
    try:
        for _, p in named:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield named
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training


def parameter_grads(model, named, inputs, labels) -> dict[str, torch.Tensor]:
    """Gradient of the mean cross-entropy on (inputs, labels) for every named parameter."""
    loss = F.cross_entropy(model(inputs), labels)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    # a parameter the forward pass never uses has no gradient: it cannot change the loss
    return {n: torch.zeros_like(p) if g is None else g.detach() for (n, p), g in zip(named, grads)}


def channel_parameters(unit: Unit) -> Iterator[tuple[str, torch.Tensor, Producer]]:
    """(name, parameter, layer view) of every tensor removed with the unit's channels:
    the producers' filters and biases and the norms' weights and biases."""
    for view in [*unit.producers, *unit.norms]:
        for attr in ("weight", "bias"):
            param = getattr(view.module, attr, None)
            if isinstance(param, torch.Tensor):  # affine-free norms and bias=False have None
                yield f"{view.name}.{attr}", param, view


def per_channel_sum(unit: Unit, values: Callable[[str, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Sum of ``values(name, param)`` (shaped like param) over each unit channel's entries.

    Summed in float64 on the parameters' device; the result is on the CPU.
    """
    total = None
    for name, param, view in channel_parameters(unit):
        v = values(name, param.detach()).detach().double()
        if v.dim() == 1:
            rows = v.unsqueeze(1)
        elif is_prunable(view.module):
            rows = output_filters(view.module, v)
        else:
            raise PruneCliError(f"cannot split the {tuple(v.shape)} parameter {name} by channel")
        if total is None:
            total = torch.zeros(unit.channels, dtype=torch.float64, device=v.device)
        total.index_add_(0, view.root_idxs.to(v.device), rows[view.local_idxs.to(v.device)].sum(1))
    return total.cpu() if total is not None else torch.zeros(unit.channels, dtype=torch.float64)


def not_prepared(method: str) -> PruneCliError:
    return PruneCliError(f"{method}: prepare() must run on calibration data before scoring")


@register_criterion("taylor")
class Taylor(Criterion):
    """Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019, arXiv:1906.10771.

    Channel score = mean over calibration batches of (sum of g*w over the channel's
    parameters)^2: the producers' filters and biases and the BatchNorm weight and bias.
    Weight granularity: (g*w)^2 per weight, averaged over batches.
    """

    granularities = ("channel", "weight")
    needs_data = True
    global_normalizer = "mean"

    def __init__(self) -> None:
        super().__init__()
        self._channels: Optional[dict[str, torch.Tensor]] = None
        self._weights: Optional[dict[str, torch.Tensor]] = None

    def prepare(self, model, units, calibration: Optional[Batches]) -> None:
        channels = {u.root: torch.zeros(u.channels, dtype=torch.float64) for u in units}
        weights: dict[str, torch.Tensor] = {}
        batches = 0
        calibration = require_calibration(calibration, self.name)
        with gradient_pass(model) as named, batches_bar("taylor: gradients", calibration) as bar:
            for inputs, labels in calibration:
                grads = parameter_grads(model, named, inputs, labels)
                for u in units:
                    channels[u.root] += per_channel_sum(u, lambda n, p: grads[n] * p).pow(2)
                for n, p in named:
                    gw2 = (grads[n] * p.detach()).pow(2)
                    weights[n] = weights[n] + gw2 if n in weights else gw2
                batches += 1
                if bar is not None:
                    bar.advance(1)
        if batches == 0:
            raise PruneCliError(f"{self.name}: the calibration data is empty")
        self._channels = {root: s / batches for root, s in channels.items()}
        self._weights = {n: s / batches for n, s in weights.items()}

    def channel_scores(self, unit) -> torch.Tensor:
        if self._channels is None:
            raise not_prepared(self.name)
        return self._channels[unit.root]

    def weight_scores(self, name, param) -> torch.Tensor:
        if self._weights is None:
            raise not_prepared(self.name)
        return self._weights[name]
