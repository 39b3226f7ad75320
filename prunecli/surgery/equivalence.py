"""masked == compressed: the check both `compress` and `prune --compress` run before writing."""

from __future__ import annotations

import torch

PROBE_BATCH = 8
# outputs may differ by float rounding only (sums in another order): relative to the output scale
REL_TOLERANCE = 1e-4


def probe_batch(spec, n: int = PROBE_BATCH) -> torch.Tensor:
    """A fixed random batch of the model's input shape (the same in every run)."""
    return torch.randn(n, spec.in_channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def outputs(model: torch.nn.Module, probe: torch.Tensor) -> torch.Tensor:
    was = model.training
    model.eval()
    try:
        return model(probe)
    finally:
        model.train(was)


def difference(expected: torch.Tensor, got: torch.Tensor) -> tuple[float, bool]:
    """(max |got - expected|, within tolerance)."""
    if got.shape != expected.shape:
        return float("inf"), False
    diff = float((got - expected).abs().max())
    return diff, diff <= REL_TOLERANCE * max(1.0, float(expected.abs().max()))
