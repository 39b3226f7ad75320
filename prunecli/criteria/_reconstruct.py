"""What the reconstruction methods (ThiNet, CP) share: one layer's sampled problem and least squares.

ThiNet (Luo et al., ICCV 2017, arXiv:1707.06342) and channel pruning (He et al., ICCV
2017, arXiv:1707.06168) both prune the channels of layer i by looking at layer i+1, the
single conv (or linear) layer that reads them, and then change that layer's weights so its
output stays close to the original network's. prunecli.algorithms.reconstruction builds a
`LayerSamples` per unit from calibration data and asks the method two things:

* ``choose(samples, n_keep) -> LongTensor`` -- the unit channels to keep (sorted);
* ``refit(samples, kept) -> Tensor[K, len(kept), s]`` -- the consumer's new weights on the
  kept channels (the others become zero through the dependency group's mask).

Every tensor here is float64 on the activations' device: the Gram matrices of a few
thousand samples lose digits in float32, and the greedy / LASSO choices must not change
with the summation order of a GPU kernel more than float64 allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from prunecli.criteria._registry import Criterion
from prunecli.errors import PruneCliError

@dataclass(eq=False)
class LayerSamples:
    """Layer i+1 at m sampled output positions, with its inputs grouped by the unit's channels.

    ``patches[i, c, j]``: input feature j of unit channel c at sample i (for a conv, the
    kh*kw patch values of input channel c; for a linear layer after a flatten, the c-th
    channel's features), taken from the *current* (partly pruned) network.
    ``weight[k, c, j]``: the consumer's weight on those features, same grouping.
    ``target[i, k]``: the *original* network's consumer output k at sample i, minus the
    consumer's bias (which reconstruction leaves as it is).
    ``out_channel[i]``: ThiNet's randomly drawn output channel of sample i.
    """

    patches: torch.Tensor  # (m, C, s)
    weight: torch.Tensor  # (K, C, s)
    target: torch.Tensor  # (m, K)
    out_channel: torch.Tensor  # (m,) long

    @property
    def channels(self) -> int:
        return self.patches.shape[1]

    def outputs(self, channels: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(m, K): the consumer's outputs (no bias) from ``channels`` only, with ``weight`` on them
        (default: the current weights of those channels)."""
        w = self.weight[:, channels] if weight is None else weight
        return torch.einsum("ics,kcs->ik", self.patches[:, channels], w)

    def relative_error(self, channels: torch.Tensor, weight: Optional[torch.Tensor] = None) -> float:
        """||target - outputs||^2 / ||target||^2 over every sampled output (all K)."""
        residual = self.target - self.outputs(channels, weight)
        return float(residual.pow(2).sum() / self.target.pow(2).sum().clamp(min=1e-300))


def solve_least_squares(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """argmin_x ||a x - b||^2 through the normal equations with a tiny ridge.

    The ridge (1e-10 of the mean diagonal) only keeps the solve defined when calibration
    samples leave a direction unexcited (a dead ReLU channel); it moves a well-posed
    solution by far less than float32 weights can hold. Normal equations rather than
    torch.linalg.lstsq because its rank-revealing drivers are CPU-only.
    """
    gram = a.T @ a
    n = gram.shape[0]
    ridge = 1e-10 * float(gram.diagonal().mean().clamp(min=1e-300))
    gram = gram + ridge * torch.eye(n, dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, a.T @ b)


class ReconstructionCriterion(Criterion):
    """Base of the methods that choose channels while reconstructing the next layer (module docstring).

    They have no per-channel scores of their own: a choice depends on the layers pruned
    before it, so only the reconstruction algorithm (prunecli.algorithms.reconstruction)
    can run them, unit by unit in forward order.
    """

    granularities = ("channel",)
    needs_data = True
    global_normalizer = None
    reconstructs = True
    samples_per_image = 10  # both papers sample 10 output locations per calibration image

    def __init__(self, *, seed: int = 0):
        super().__init__()
        self.seed = int(seed)

    def channel_scores(self, unit) -> Optional[torch.Tensor]:
        raise PruneCliError(
            f"{self.name} chooses channels while reconstructing the next layer, one layer after another: "
            "it has no standalone scores (run it through prunecli.algorithms.reconstruction.reconstruct)"
        )

    def choose(self, samples: LayerSamples, n_keep: int) -> torch.Tensor:
        raise NotImplementedError

    def refit(self, samples: LayerSamples, kept: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# ridge of the full refit, relative to the mean diagonal of X'^T X: small enough to leave a
# well-sampled fit alone, large enough that a direction few samples excite keeps its old weight
FULL_RIDGE = 1e-3


def full_least_squares(samples: LayerSamples, kept: torch.Tensor) -> torch.Tensor:
    """(K, len(kept), s): the consumer weights on ``kept`` that best reproduce every sampled target.

    One least-squares problem with the kept channels' patch features (len(kept) * s of them)
    as regressors and all K outputs as targets: He et al.'s second step, W' = argmin
    ||Y - X' W'^T||_F^2 (arXiv:1707.06168, Section 3.1), plus a small ridge *towards the
    current weights*, alpha ||W' - W||^2 with alpha = FULL_RIDGE x the mean diagonal of
    X'^T X. The papers fit on 50,000 sampled rows; with a few calibration batches a linear
    layer after a flatten has more regressors than distinct samples, and plain least squares
    would then fit noise with huge weights. The ridge keeps the unexcited directions at their
    old weights instead.
    """
    m, _, s = samples.patches.shape
    k = samples.weight.shape[0]
    design = samples.patches[:, kept].reshape(m, len(kept) * s)
    current = samples.weight[:, kept].reshape(k, -1).T  # (len(kept) * s, K)
    gram = design.T @ design
    alpha = FULL_RIDGE * float(gram.diagonal().mean().clamp(min=1e-300))
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram + alpha * eye, design.T @ samples.target + alpha * current)
    return solution.T.reshape(k, len(kept), s)
