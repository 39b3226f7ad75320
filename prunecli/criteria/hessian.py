"""LeCun et al., "Optimal Brain Damage", NIPS 1989: saliency 1/2 h_qq w_q^2.

The diagonal Hessian is approximated by the empirical Fisher, the mean over calibration
samples of the per-sample squared gradient. Per sample, not per batch: squaring a batch's
mean gradient averages the samples' gradients first and underestimates it. Torch-Pruning's
HessianImportance.accumulate_grad overwrites its sum instead of accumulating, so it is not
reused.
"""

from __future__ import annotations

from typing import Optional

import torch

from prunecli.errors import PruneCliError
from prunecli.criteria._registry import Batches, Criterion, register_criterion, require_calibration
from prunecli.criteria.taylor import gradient_pass, not_prepared, parameter_grads, per_channel_sum


def empirical_fisher(model, batches) -> dict[str, torch.Tensor]:
    """mean_i g_i^2 per parameter, g_i the gradient of sample i's cross-entropy."""
    fisher: dict[str, torch.Tensor] = {}
    samples = 0
    with gradient_pass(model) as named:
        for inputs, labels in batches:
            # micro-batches of one sample: simple, and exact because eval-mode samples are independent
            for i in range(len(inputs)):
                grads = parameter_grads(model, named, inputs[i : i + 1], labels[i : i + 1])
                for n, g in grads.items():
                    fisher[n] = fisher[n] + g.pow(2) if n in fisher else g.pow(2)
                samples += 1
    if samples == 0:
        raise PruneCliError("hessian: the calibration data is empty")
    return {n: s / samples for n, s in fisher.items()}


@register_criterion("hessian")
class Hessian(Criterion):
    """LeCun et al., "Optimal Brain Damage", NIPS 1989 (empirical-Fisher diagonal Hessian).

    Channel score = sum over the channel's parameters (producer filters and biases,
    BatchNorm weight and bias) of 1/2 h w^2, with h = mean over calibration samples of the
    per-sample squared gradient. Weight granularity: 1/2 h w^2 per weight. One forward and
    backward pass per calibration sample.
    """

    granularities = ("channel", "weight")
    needs_data = True
    global_normalizer = "mean"

    def __init__(self) -> None:
        super().__init__()
        self._fisher: Optional[dict[str, torch.Tensor]] = None

    def prepare(self, model, units, calibration: Optional[Batches]) -> None:
        self._fisher = empirical_fisher(model, require_calibration(calibration, self.name))

    def _fisher_or_fail(self) -> dict[str, torch.Tensor]:
        if self._fisher is None:
            raise not_prepared(self.name)
        return self._fisher

    def channel_scores(self, unit) -> torch.Tensor:
        fisher = self._fisher_or_fail()
        return per_channel_sum(unit, lambda n, p: 0.5 * fisher[n] * p.pow(2))

    def weight_scores(self, name, param) -> torch.Tensor:
        return 0.5 * self._fisher_or_fail()[name] * param.detach().pow(2)
