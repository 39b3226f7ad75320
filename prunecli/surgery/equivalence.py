"""masked == compressed: the check both `compress` and `prune --compress` run before writing."""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch

from prunecli.surgery.plan import Plan, UnitPlan
from prunecli.surgery.removal import apply_plan
from prunecli.surgery.units import build_graph, units

PROBE_BATCH = 8
# outputs may differ by float rounding only (sums in another order): relative to the output scale
REL_TOLERANCE = 1e-4


def probe_batch(spec, n: int = PROBE_BATCH, device: Optional[torch.device] = None) -> torch.Tensor:
    """A fixed random batch of the model's input shape (the same in every run, drawn on the CPU)."""
    x = torch.randn(n, spec.in_channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))
    return x if device is None else x.to(device)


@contextlib.contextmanager
def _full_precision(device: torch.device):
    """TF32 off on CUDA: its 10-bit mantissa alone would exceed REL_TOLERANCE."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@torch.no_grad()
def outputs(model: torch.nn.Module, probe: torch.Tensor) -> torch.Tensor:
    """The model's eval-mode outputs on ``probe`` (in full precision on CUDA)."""
    was = model.training
    model.eval()
    try:
        with _full_precision(probe.device):
            return model(probe)
    finally:
        model.train(was)


def difference(expected: torch.Tensor, got: torch.Tensor) -> tuple[float, bool]:
    """(max |got - expected|, within tolerance)."""
    if got.shape != expected.shape:
        return float("inf"), False
    diff = float((got - expected).abs().max())
    return diff, diff <= REL_TOLERANCE * max(1.0, float(expected.abs().max()))


def first_differing_unit(reference: torch.nn.Module, plan: Plan, example: torch.Tensor, probe: torch.Tensor, *, name: str) -> str:
    """Remove the plan's units one at a time from a copy of ``reference``; name the first that changes its outputs."""
    expected = outputs(reference, probe)
    work = copy.deepcopy(reference)
    graph = build_graph(work, example, name=name)
    fresh = {u.root: u for u in units(graph)}
    for p in plan.pruned:
        u = fresh.get(p.unit.root)
        if u is None:
            continue
        apply_plan(graph, Plan("channel", [UnitPlan(u, "prune", prune=p.prune)]))
        if not difference(expected, outputs(work, probe))[1]:
            return f"{u.root} (coupled: {', '.join(u.members[:6])}{' ...' if len(u.members) > 6 else ''})"
    return "an unidentified group"
