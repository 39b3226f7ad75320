"""He, Zhang and Sun, "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017, arXiv:1707.06168.

Channel pruning ("CP") reconstructs the original network's output of layer i+1 from a
subset of its input channels in two steps (Section 3.1):

1. Channel selection by LASSO: with Z_c the (samples x outputs) contribution of input
   channel c to layer i+1's sampled outputs Y, solve
   beta = argmin 1/(2N) ||Y - sum_c beta_c Z_c||_F^2 + lambda ||beta||_1 and raise lambda
   until at most c' coefficients are non-zero (c' = the channels the rate keeps).
2. Least squares for the remaining weights of layer i+1: W' = argmin ||Y - X' W'^T||_F^2
   over the kept channels' inputs X'.

The LASSO is written here in torch rather than with scikit-learn's Lasso: the problem only
depends on the C x C Gram matrix G = sum Z_c . Z_d and the vector b = sum Z_c . Y, which
are computed from the patches' and weights' own Gram matrices (`channel_gram`), so the solver never forms the (samples * outputs) x C
design matrix that sklearn would need (5120 samples x 512 outputs x 512 channels of float64
for a ResNet-50 layer is 10 GiB). FISTA (Beck & Teboulle, 2009) on G is a handful of
matrix-vector products, runs on the activations' device and is deterministic.

lambda is found by bisection in log space between lambda_max = max|b| (everything zero) and
1e-6 lambda_max until exactly c' channels survive. When no lambda gives exactly c' (two
coefficients leave the support together) the c' largest |beta_c| * ||Z_c|| of the last
solution with more survivors are kept, so the count is always exactly c'. beta is not
constrained to be non-negative; step 2 refits every kept weight anyway.
"""

from __future__ import annotations

import math

import torch

from prunecli.criteria._reconstruct import LayerSamples, ReconstructionCriterion, full_least_squares
from prunecli.criteria._registry import register_criterion

BISECTION_STEPS = 40  # log-space halvings of [1e-6, 1] x lambda_max: 2^-40 of 14 decades is far below any jump
FISTA_ITERATIONS = 1000  # warm-started along the path; each is one C x C matrix-vector product
FISTA_TOLERANCE = 1e-7  # of max |beta|: the support (all the selection reads) is settled long before


def channel_gram(samples: LayerSamples) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(G, b, N): G[c, d] = sum_ik Z[i,c,k] Z[i,d,k], b[c] = sum_ik Z[i,c,k] Y[i,k], N = m * K.

    With Z[i,c,k] = sum_s P[i,c,s] W[k,c,s], G is the (c,s),(d,t) block sums of the
    elementwise product of P'P and W'W (both (C*s) x (C*s)), so it costs two matrix
    products instead of forming the m x C x K contributions.
    """
    m, c, s = samples.patches.shape
    k = samples.weight.shape[0]
    p = samples.patches.reshape(m, c * s)
    w = samples.weight.reshape(k, c * s)
    gram = ((p.T @ p) * (w.T @ w)).view(c, s, c, s).sum((1, 3))
    cross = (p * (samples.target @ w)).sum(0).view(c, s).sum(1)
    return gram, cross, m * k


def lipschitz_constant(gram: torch.Tensor) -> float:
    """An upper bound of G's largest eigenvalue (the proximal gradient's step is its inverse).

    The largest absolute row sum (Gershgorin) bounds it from above, so the step is always
    safe; an eigen-decomposition would be tighter but took seconds on a 256 x 256 Gram on
    a loaded CPU, longer than all the FISTA iterations together.
    """
    return float(gram.abs().sum(1).max().clamp(min=1e-300))


def lasso(gram: torch.Tensor, cross: torch.Tensor, lam: float, start: torch.Tensor | None = None, lipschitz: float | None = None) -> torch.Tensor:
    """argmin 1/2 b'Gb - cross'b + lam ||b||_1 (the LASSO with G and cross already divided by N), by FISTA."""
    lipschitz = lipschitz_constant(gram) if lipschitz is None else lipschitz
    beta = torch.zeros_like(cross) if start is None else start.clone()
    momentum, t = beta.clone(), 1.0
    for _ in range(FISTA_ITERATIONS):
        step = momentum - (gram @ momentum - cross) / lipschitz
        new = torch.sign(step) * (step.abs() - lam / lipschitz).clamp(min=0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        momentum = new + ((t - 1) / t_next) * (new - beta)
        done = float((new - beta).abs().max()) <= FISTA_TOLERANCE * max(float(new.abs().max()), 1e-300)
        beta, t = new, t_next
        if done:
            break
    return beta


def lasso_selection(gram: torch.Tensor, cross: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, float]:
    """The ``n_keep`` channels the LASSO path keeps (sorted), and the lambda that kept them."""
    c = gram.shape[0]
    if n_keep >= c:
        return torch.arange(c), 0.0
    lam_max = float(cross.abs().max())
    if lam_max == 0.0:  # no channel explains anything: keep the first ones, it cannot matter
        return torch.arange(n_keep), 0.0
    strength = gram.diagonal().clamp(min=0).sqrt()  # ||Z_c||: ranks a support that came out too large
    lo, hi = lam_max * 1e-6, lam_max
    step = lipschitz_constant(gram)
    beta_lo = lasso(gram, cross, lo, lipschitz=step)
    if int((beta_lo != 0).sum()) <= n_keep:
        rank = beta_lo.abs() * strength
        return torch.sort(torch.sort(rank, descending=True, stable=True).indices[:n_keep]).values.cpu(), lo
    for _ in range(BISECTION_STEPS):
        mid = math.sqrt(lo * hi)
        beta = lasso(gram, cross, mid, start=beta_lo, lipschitz=step)
        alive = int((beta != 0).sum())
        if alive == n_keep:
            return torch.nonzero(beta).flatten().cpu(), mid
        if alive > n_keep:
            lo, beta_lo = mid, beta
        else:
            hi = mid
    rank = beta_lo.abs() * strength
    return torch.sort(torch.sort(rank, descending=True, stable=True).indices[:n_keep]).values.cpu(), lo


@register_criterion("cp")
class ChannelPruning(ReconstructionCriterion):
    """He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV 2017, arXiv:1707.06168.

    LASSO on per-channel coefficients, lambda raised until c' channels survive, then least
    squares for the kept weights of the next layer.
    """

    def __init__(self, *, seed: int = 0):
        super().__init__(seed=seed)
        self.last_lambda: float = 0.0  # the lambda of the last selection (reported per layer)

    def choose(self, samples: LayerSamples, n_keep: int) -> torch.Tensor:
        gram, cross, n = channel_gram(samples)
        kept, self.last_lambda = lasso_selection(gram / n, cross / n, n_keep)
        return kept

    def refit(self, samples: LayerSamples, kept: torch.Tensor) -> torch.Tensor:
        return full_least_squares(samples, kept)
