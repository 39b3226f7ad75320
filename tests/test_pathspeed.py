"""What the pruning path's speed rests on: lazy imports, masks removed and put back, counts
taken during the probe, a compress right after prune reusing its trace, and a latency
measurement that keeps to its budget (issue 14, item 6)."""

from __future__ import annotations

import copy
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import prunecli.api as pc
from prunecli.config.prune import Selection
from prunecli.criteria import get_criterion
from prunecli.metrics.complexity import count_complexity, run_counted
from prunecli.metrics.latency import measure_latencies
from prunecli.models import ModelSpec, build_model, example_input
from prunecli.surgery import pruner as pruner_module
from prunecli.surgery.pruner import Pruner

HEAVY = ("ptflops", "torchvision", "torch._dynamo")


def _imported_after(code: str) -> dict[str, bool]:
    probe = f"{code}\nimport sys\nprint({{m: m in sys.modules for m in {HEAVY!r}}})"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])


def test_the_cli_imports_no_counter_torchvision_or_dynamo():
    assert _imported_after("import prunecli.cli.app") == {m: False for m in HEAVY}


def test_loading_and_counting_a_cifar_model_imports_neither_torchvision_nor_dynamo(tmp_path):
    # the option-A shortcut used torch.cat/where under the meta device: PyTorch's meta versions import torch._dynamo
    path = tmp_path / "r20.pt"
    pc.save(pc.build("resnet20"), path)
    code = (
        "from prunecli.stages.checkpoints import load_model\n"
        "from prunecli.metrics.complexity import count_complexity\n"
        f"ckpt, model = load_model({str(path)!r})\n"
        "assert count_complexity(model, (3, 32, 32)).macs > 0"
    )
    assert _imported_after(code) == {"ptflops": True, "torchvision": False, "torch._dynamo": False}


@pytest.mark.parametrize("name,size", [("resnet20", 32), ("mobilenetv2", 32), ("vgg11", 32)])
def test_counting_during_a_forward_pass_gives_count_complexitys_numbers(name, size):
    model = build_model(ModelSpec(name, 3, 10, size)).eval()
    x = torch.randn(3, 3, size, size)
    out, counted = run_counted(model, x)
    assert counted == count_complexity(model, (3, size, size))
    with torch.no_grad():
        assert torch.equal(out, model(x))


def test_run_counted_raises_what_the_forward_pass_raises():
    with pytest.raises(RuntimeError):
        run_counted(nn.Linear(4, 2), torch.zeros(1, 5))


@pytest.mark.parametrize("name", ["resnet20", "densenet40"])  # densenet40: Torch-Pruning's concat nodes change too
def test_mask_puts_the_model_back_and_matches_a_fresh_copy(name, monkeypatch):
    spec = ModelSpec(name, 3, 10, 32)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = {k: id(p) for k, p in model.named_parameters()}
    handle = model.register_forward_hook(lambda *a: None)
    pruner = Pruner(model, get_criterion("l1"), Selection(rate=0.5), example_input=example_input(spec), name=name)
    plans = [pruner.plan(), pruner.plan(0.3)]
    done = [pruner.mask(p, apply=False) for p in plans]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert {k: id(p) for k, p in model.named_parameters()} == params
    assert pruner.graph.dg.pruning_history() == []
    handle.remove()
    assert not model._forward_hooks  # the handle still removes from the model's own hook dict
    # the reference: a deep copy traced anew for each plan (what mask did before)
    monkeypatch.setattr(pruner_module, "_restorable", lambda graph: False)
    fresh = Pruner(copy.deepcopy(model), get_criterion("l1"), Selection(rate=0.5), example_input=example_input(spec), name=name)
    for plan, got in zip(plans, done):
        want = fresh.mask(plan, apply=False)
        assert got.history == want.history
        assert got.masks.keys() == want.masks.keys() and all(torch.equal(got.masks[k], want.masks[k]) for k in got.masks)
        a, b = got.compressed.state_dict(), want.compressed.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    mine = {t.data_ptr() for t in model.state_dict().values() if t.numel()}
    assert not mine & {t.data_ptr() for t in done[0].compressed.state_dict().values() if t.numel()}


def test_api_compress_right_after_prune_reuses_its_trace_and_falls_back_when_the_weights_changed(monkeypatch):
    from prunecli.surgery import units

    traces = []
    real = units.build_graph
    monkeypatch.setattr(pruner_module, "build_graph", lambda *a, **k: (traces.append(1), real(*a, **k))[1])
    monkeypatch.setattr(units, "build_graph", pruner_module.build_graph)
    fast = pc.build("resnet20")
    pc.prune(fast, "l1", rate=0.5)
    n = len(traces)
    pc.compress(fast)
    assert len(traces) == n  # no trace of its own
    slow = pc.build("resnet20")
    pc.prune(slow, "l1", rate=0.5)
    with torch.no_grad():
        next(slow.module.parameters()).mul_(1.0)  # an in-place write: the pruned network is not the same any more
    pc.compress(slow)
    assert len(traces) > n
    a, b = fast.module.state_dict(), slow.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert fast.checkpoint.structure == slow.checkpoint.structure


class _Slow(nn.Module):
    """A model whose forward pass takes ``seconds`` whatever its input."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        time.sleep(self.seconds)
        return x * self.w


def test_latency_keeps_to_its_budget_and_says_how_it_was_measured():
    models = [_Slow(0.1), _Slow(0.05)]
    t0 = time.perf_counter()
    lats = measure_latencies(models, (3, 4, 4), batch_size=1, repeats=50, warmup=1, max_seconds=0.4, min_repeats=3)
    took = time.perf_counter() - t0
    # the warm-up (both models, both formats: 0.3 s) is over a quarter of 0.4 s: one format each; then 3 rounds of 0.15 s
    assert all(lat.runs == 3 and lat.stopped == "budget" for lat in lats)
    assert took < 1.4, took
    assert lats[0].seconds == pytest.approx(took, abs=0.1)
    assert "1 warm-up" in lats[0].conditions() and "stopped: budget" in lats[0].conditions()


def test_latency_rounds_stop_once_every_models_runs_are_steady():
    from prunecli.metrics.latency import _stable

    steady = {(0, "contiguous"): [10.0, 10.1, 10.0, 9.9, 10.0], (1, "contiguous"): [5.0, 5.1, 5.0, 5.0, 4.9]}
    tried = {0: ("contiguous",), 1: ("contiguous",)}
    assert _stable(steady, tried)
    noisy = {**steady, (1, "contiguous"): [5.0, 7.0, 4.0, 6.0, 5.5]}
    assert not _stable(noisy, tried)
