"""Luo, Wu and Lin, "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression", ICCV 2017, arXiv:1707.06342.

ThiNet prunes the channels of layer i by what layer i+1 computes from them. Each sampled
output value of layer i+1 (an image, a location and an output channel k, drawn at random)
is a sum over input channels c of contributions x_c = sum_j W[k, c, j] * patch[c, j].
Removing a set T of channels changes that value by sum_{c in T} x_c, so ThiNet grows T one
channel at a time, each time adding the channel that keeps sum_i (sum_{c in T} x_ic)^2
smallest over the samples (its greedy, Algorithm 1), until T holds the channels the rate
removes. The kept channels' weights in layer i+1 are then rescaled by one factor per
channel, w_hat = argmin sum_i (y_i - w_hat . x_i)^2 (its Eq. 7), where y_i is the
original network's output value.

prunecli's ThiNet runs through prunecli.algorithms.reconstruction (unit by unit in forward
order, contributions from the already-pruned network, targets from the original). The
per-channel scale is the default, as the paper; ``ThiNet(refit="full")`` solves full
least squares for every kept weight of layer i+1 instead (He et al.'s step, more
parameters fitted to the same samples).
"""

from __future__ import annotations

import torch

from prunecli.criteria._reconstruct import LayerSamples, ReconstructionCriterion, full_least_squares, solve_least_squares
from prunecli.criteria._registry import register_criterion
from prunecli.errors import OptionError

REFITS = ("scale", "full")


def contributions(samples: LayerSamples) -> torch.Tensor:
    """(m, C): x_ic, what channel c adds to sample i's drawn output channel."""
    w = samples.weight[samples.out_channel]  # (m, C, s): each sample's filter
    return (w * samples.patches).sum(2)


def greedy_removal(x: torch.Tensor, n_remove: int) -> torch.Tensor:
    """ThiNet's greedy: the ``n_remove`` channels (in the order chosen) whose summed contribution stays smallest.

    ``x`` is (m samples, C channels). Step t adds argmin_c ||s + x_c||^2 to T, where s is
    the sum of the columns chosen so far; ||s + x_c||^2 = ||s||^2 + 2 s.x_c + ||x_c||^2,
    so one step is one (m x C) product. Ties go to the lower channel index.
    """
    m, c = x.shape
    if not 0 <= n_remove < c:
        raise ValueError(f"remove {n_remove} of {c} channels: must leave at least one")
    chosen: list[int] = []
    taken = torch.zeros(c, dtype=torch.bool, device=x.device)
    total = torch.zeros(m, dtype=x.dtype, device=x.device)
    norms = x.pow(2).sum(0)
    for _ in range(n_remove):
        value = 2.0 * (total @ x) + norms
        value[taken] = float("inf")
        best = int(torch.argmin(value))  # argmin returns the first minimum: the lower index
        chosen.append(best)
        taken[best] = True
        total = total + x[:, best]
    return torch.tensor(chosen, dtype=torch.long)


def removal_objective(x: torch.Tensor, removed) -> float:
    """sum_i (sum_{c in removed} x_ic)^2: what the greedy minimises."""
    idx = torch.as_tensor(list(removed), dtype=torch.long, device=x.device)
    return float(x[:, idx].sum(1).pow(2).sum()) if len(idx) else 0.0


@register_criterion("thinet")
class ThiNet(ReconstructionCriterion):
    """Luo et al., "ThiNet: A Filter Level Pruning Method for Deep Neural Network Compression", ICCV 2017, arXiv:1707.06342.

    Greedy choice of the channels whose removal changes layer i+1's sampled outputs least,
    then least-squares per-channel rescaling of layer i+1 (``refit="full"``: every weight).
    """

    def __init__(self, refit: str = "scale", *, seed: int = 0):
        super().__init__(seed=seed)
        if refit not in REFITS:
            raise OptionError(f"thinet refit {refit!r}: valid: {', '.join(REFITS)}")
        self.refit_mode = refit

    def choose(self, samples: LayerSamples, n_keep: int) -> torch.Tensor:
        removed = greedy_removal(contributions(samples), samples.channels - n_keep)
        keep = torch.ones(samples.channels, dtype=torch.bool)
        keep[removed] = False
        return torch.nonzero(keep).flatten()

    def refit(self, samples: LayerSamples, kept: torch.Tensor) -> torch.Tensor:
        if self.refit_mode == "full":
            return full_least_squares(samples, kept)
        return samples.weight[:, kept] * channel_scales(samples, kept).view(1, -1, 1)


def channel_scales(samples: LayerSamples, kept: torch.Tensor) -> torch.Tensor:
    """ThiNet's w_hat (its Eq. 7): one factor per kept channel, least squares over the drawn outputs."""
    x = contributions(samples)[:, kept.to(samples.patches.device)]
    y = samples.target.gather(1, samples.out_channel.view(-1, 1)).flatten()
    return solve_least_squares(x, y.view(-1, 1)).flatten()
