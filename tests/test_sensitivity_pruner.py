"""The Sensitivity Pruner (seed 004): SNIP targets, where the learned masks act, the lambda and
vote rules, and compress --block-by-block --method sensitivity end to end, killed and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import one_line_error
from prunecli.algorithms.sensitivity_pruner import Gates, Snip, _vote, block_layers, next_lambda, primary_producer
from prunecli.checkpoint import load_checkpoint
from prunecli.models import get_model
from prunecli.stages.checkpoints import load_model
from prunecli.surgery.plan import Plan, UnitPlan
from prunecli.surgery.pruner import Pruner

SMALL = ["--dataset", "synthetic", "--image-size", "8", "--device", "cpu", "--batch-size", "32"]


def _resnet():
    torch.manual_seed(0)
    model = get_model("resnet20", image_size=8).eval()
    pruner = Pruner(model, example_input=torch.zeros(1, 3, 8, 8), name="resnet20")
    return model, pruner


def test_snip_targets_keep_the_top_filters():
    model, pruner = _resnet()
    eligible = [u for u in pruner.units if primary_producer(u, pruner.output_layer) is not None]
    # internal convs only: the residual streams (several producers) and the classifier are not eligible
    assert [u.root for u in eligible] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    roots = [u.root for u in eligible]
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    torch.manual_seed(1)
    maps, targets = Snip(model, pruner.units, pruner.output_layer, roots, keep=0.4, layersort=True, reinit=False)(x, y)
    assert [int(t.sum()) for t in targets] == [int(u.channels * 0.4) for u in eligible]  # --layersort: each layer its share
    assert [tuple(m.shape) for m in maps] == [(u.channels, 3, 3) for u in eligible]  # C x kh x kw sensitivity maps
    total = sum(float(m.sum()) for m in maps)
    assert total == pytest.approx(1.0, rel=1e-5)  # normalised by the total over every eligible filter
    torch.manual_seed(1)
    _, targets = Snip(model, pruner.units, pruner.output_layer, roots, keep=0.4, layersort=False, reinit=False)(x, y)
    n = sum(u.channels for u in eligible)
    rescued = [t for t, u in zip(targets, eligible) if int(t.sum()) == max(1, int(u.channels * 0.4 * 0.2))]
    assert sum(int(t.sum()) for t in targets) >= int(n * 0.4)  # one global threshold (plus any layer's rescue)
    assert all(int(t.sum()) >= 1 for t in targets) and len(rescued) <= len(targets)


def test_a_zero_gate_computes_what_removal_computes():
    model, pruner = _resnet()
    layers = block_layers(pruner.units, lambda u: u.root.startswith("layer2."), pruner.output_layer)
    assert [l.root for l in layers] == ["layer2.0.conv1", "layer2.1.conv1", "layer2.2.conv1"]
    keep = [torch.rand(l.unit.channels) > 0.5 for l in layers]
    gates = Gates(layers)
    gates.set([k.float() for k in keep])
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        gated = model(x)
    gates.remove()
    plan = Plan("channel", [UnitPlan(l.unit, "prune", prune=torch.nonzero(~k).flatten()) for l, k in zip(layers, keep)])
    masked = pruner.mask(plan)
    with torch.no_grad():
        assert torch.allclose(gated, masked.compressed.eval()(x), atol=1e-5)


def test_lambda_and_vote_rules():
    assert next_lambda(pruned=0.3, target_keep=0.5) == pytest.approx(1.0)  # keeps 70% > 50%: push, 5 x the gap
    assert next_lambda(pruned=0.6, target_keep=0.5) == 0.0  # keeps 40% < 50%: stop pushing
    window = [[torch.tensor([0.9, 0.1, 0.9, 0.4])], [torch.tensor([0.9, 0.1, 0.2, 0.6])]]
    index, votes = _vote(window, [torch.ones(4, dtype=torch.bool)])
    assert index[0].tolist() == [True, False, True, True] and votes[0].tolist() == [1.0, 0.0, 0.5, 0.5]  # a tie keeps


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from prunecli.cli.app import main

    path = tmp_path_factory.mktemp("sp") / "r20.pt"
    try:
        main(["train", "--model", "resnet20", *SMALL, "--epochs", "1", "--steps-per-epoch", "4", "-o", str(path)])
    except SystemExit as e:
        assert not e.code
    return path


SP = ["--block-by-block", "--method", "sensitivity", "--rate", "0.5", "--unit-epochs", "2", "--steps-per-epoch", "3", "--batch-size", "32",
      "--no-latency", "--units", "layer1,layer2"]


def test_sensitivity_pruner_compresses_block_by_block(cli, tmp_path, base):
    out = tmp_path / "sp.pt"
    r = cli("compress", base, *SP, "-o", out)
    assert r.code == 0, r.stderr
    ckpt = load_checkpoint(out)
    rows = ckpt.extra["block_by_block"]["rows"]
    assert [row["block"] for row in rows] == ["layer1", "layer2"]
    assert all(row["strategy_top1"] is not None and row["max_abs_diff"] < 1e-4 for row in rows)
    _, before = load_model(base)
    _, after = load_model(out)
    convs = [f"layer{s}.{b}.conv1" for s in (1, 2) for b in range(3)]
    widths = [dict(after.named_modules())[n].out_channels for n in convs]
    assert all(w >= 1 for w in widths) and sum(widths) < sum(dict(before.named_modules())[n].out_channels for n in convs)
    assert after.layer3[0].conv1.out_channels == before.layer3[0].conv1.out_channels  # not a block of this run
    r = cli("compress", base, *SP[:-2], "--units", "layer1", "--snip-on", "current", "-o", tmp_path / "cur.pt")
    assert r.code == 0, r.stderr


def test_killed_strategy_training_resumes_to_the_same_network(cli, tmp_path, base):
    args = [*SP[:-2], "--units", "layer1"]
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    assert cli("compress", base, *args, "-o", whole).code == 0
    proc = subprocess.run([sys.executable, "-m", "prunecli", "compress", str(base), *args, "-o", str(cut)],
                          env={**os.environ, "PRUNECLI_KILL_DURING_EPOCH": "2"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(cut).resume["phase"] == "strategy"
    r = cli("compress", "--resume", cut)
    assert r.code == 0, r.stderr
    a, b = load_checkpoint(whole), load_checkpoint(cut)
    assert a.structure == b.structure and a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k


def test_bad_sensitivity_options_are_one_line(cli, tmp_path, base):
    out = tmp_path / "x.pt"
    assert "--unit-epochs" in one_line_error(cli("compress", base, "--block-by-block", "--method", "sensitivity", "--rate", "0.5", "-o", out), code=2)
    assert "--unit-epochs" in one_line_error(cli("compress", base, "--block-by-block", "--method", "l1", "--rate", "0.5", "--unit-epochs", "1", "-o", out), code=2)
    assert "--snip-on" in one_line_error(cli("compress", base, *SP, "--snip-on", "nope", "-o", out), code=2)
    assert not out.exists()
