"""masked == compressed: the check both `compress` and `prune --compress` run before writing."""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch

from prunecli.metrics.complexity import Complexity
from prunecli.surgery.plan import Plan, UnitPlan
from prunecli.surgery.removal import apply_plan
from prunecli.surgery.units import build_graph, units

PROBE_BATCH = 8  # inputs on an accelerator, where a batch costs about what one input does
# On the CPU the probe costs in proportion to its inputs (8 of them were 2 s of a 2.7 s
# prune + compress of ResNet-50; 2 were still 0.28 s of 0.93 s), and one is as telling: a
# wrong removal (a channel that was not zero, indices out of step between coupled layers)
# changes the outputs for almost every input, and one input already spans every spatial
# position of every layer. Eval mode throughout, so no layer sees batch statistics.
PROBE_BATCH_CPU = 1
# outputs may differ by float rounding only (sums in another order): relative to the output scale
REL_TOLERANCE = 1e-4


def probe_batch(spec, n: Optional[int] = None, device: Optional[torch.device] = None) -> torch.Tensor:
    """A fixed random batch of the model's input shape (the same in every run, drawn on the CPU).

    ``n`` defaults to `PROBE_BATCH_CPU` inputs on the CPU and `PROBE_BATCH` elsewhere; a
    smaller batch is the first inputs of a larger one.
    """
    if n is None:
        n = PROBE_BATCH if device is not None and torch.device(device).type != "cpu" else PROBE_BATCH_CPU
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


def counted_outputs(model: torch.nn.Module, probe: torch.Tensor) -> tuple[torch.Tensor, Complexity]:
    """`outputs` and the model's MACs and params, counted during the same forward pass
    (prunecli.metrics.complexity.run_counted): the check pays for the count."""
    from prunecli.metrics.complexity import run_counted

    with _full_precision(probe.device):
        return run_counted(model, probe)


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
