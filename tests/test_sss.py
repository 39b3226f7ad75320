"""Sparse Structure Selection (Huang & Wang, ECCV 2018, arXiv:1707.01213): the paper's APG
on the gates, dead blocks dropped by compress (downsampling ones reported and kept), dead
channels removed, dead groups kept in shape, kill -9 and resume bit-identical, and bad
input in one line.

Gates are set by hand where a test needs an exact structure: with ``--lr 0`` the APG
step leaves every gate where it is (and the weights too), so what a file holds follows
from the gates alone.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import assert_same_weights_and_masks, kill_then_resume, one_line_error
from prunecli.algorithms.sss import SSSCallback, apg_step, soft_threshold
from prunecli.checkpoint import load_checkpoint
from prunecli.models import ModelSpec, build_model, example_input
from prunecli.models.residual import dead_blocks, drop_blocks, residual_blocks
from prunecli.stages.checkpoints import load_model, rebuild_model
from prunecli.surgery.equivalence import outputs, probe_batch

RUN = ["--steps-per-epoch", "2", "--batch-size", "16", "--device", "cpu"]
HAND = ["--epochs", "1", "--lr", "0", *RUN]  # lr 0: the hand-set gates stay as set


def _train(cli, out, *model) -> None:
    r = cli("train", *model, "--dataset", "synthetic", "--image-size", "8", "--epochs", "0", "--device", "cpu", "-o", out)
    assert r.code == 0, r.stderr


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    from prunecli.cli.app import main

    out = tmp_path_factory.mktemp("sss") / "r20.pt"
    try:
        main(["train", "--model", "resnet20", "--dataset", "synthetic", "--image-size", "8", "--epochs", "0", "--device", "cpu", "-o", str(out)])
    except SystemExit as e:
        assert e.code in (0, None)
    return out


def _set_gates(monkeypatch, gates: dict):
    """Every SSS run of this test starts with these gates (name -> value or {index: value})."""
    original = SSSCallback.on_fit_start

    def start(self, state):
        original(self, state)
        with torch.no_grad():
            for key, value in gates.items():
                if isinstance(value, dict):
                    for i, v in value.items():
                        self.gates[key][i] = v
                else:
                    self.gates[key].fill_(value)

    monkeypatch.setattr(SSSCallback, "on_fit_start", start)


def _same_outputs(a_path, b_path) -> float:
    (ca, a), (_, b) = load_model(a_path), load_model(b_path)
    x = probe_batch(ca.model)
    ya, yb = outputs(a, x), outputs(b, x)
    assert ya.shape == yb.shape
    return float((ya - yb).abs().max())


def test_soft_threshold_and_apg_step_by_hand():
    x = torch.tensor([0.5, -0.5, 0.05, -0.02], dtype=torch.float64)
    assert torch.allclose(soft_threshold(x, 0.1), torch.tensor([0.4, -0.4, 0.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-15)
    # lr 0.1, gamma 0.5 (threshold 0.05), momentum 0.9:
    #   z = g - 0.1 grad = [0.95, 0.01, 0.6]; s = [0.90, 0, 0.55]
    #   v = 0.9 v + s - g = [-0.1, -0.02, 0.18 + 0.05]; g = max(s + 0.9 v, 0) = [0.81, 0, 0.757]
    g = torch.tensor([1.0, 0.02, 0.5], dtype=torch.float64)
    v = torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    apg_step(g, torch.tensor([0.5, 0.1, -1.0], dtype=torch.float64), v, lr=0.1, gamma=0.5, momentum=0.9)
    assert torch.allclose(g, torch.tensor([0.81, 0.0, 0.757], dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(v, torch.tensor([-0.1, -0.02, 0.23], dtype=torch.float64), rtol=0, atol=1e-12)
    # no gradient: the zero gate stays at zero (the clamp holds it), the others follow the momentum
    apg_step(g, torch.zeros(3, dtype=torch.float64), v, lr=0.1, gamma=0.5, momentum=0.9)
    assert g[1] == 0 and torch.allclose(v[1], torch.tensor(-0.018, dtype=torch.float64))
    # momentum 0 is plain proximal gradient (ISTA): max(S(1 - 0.1 * 0.5, 0.05), 0)
    g0, v0 = torch.tensor([1.0], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    apg_step(g0, torch.tensor([0.5], dtype=torch.float64), v0, lr=0.1, gamma=0.5, momentum=0.0)
    assert float(g0) == pytest.approx(0.9, abs=1e-15)
    # a gate is never negative: the penalty's pull stops at zero
    g1, v1 = torch.tensor([0.01], dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    apg_step(g1, torch.tensor([1.0], dtype=torch.float64), v1, lr=0.1, gamma=0.0, momentum=0.0)
    assert float(g1) == 0.0


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with BatchNorms far from the identity (folding is then not trivial)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _tv_bottlenecks() -> torch.nn.Module:
    """torchvision's bottleneck ResNet with one block per stage (the zoo's resnet50 has 16: slow to trace)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)


# every registered block family; channel gates where the dependency groups allow them
@pytest.mark.parametrize(
    "name, kwargs, granularity",
    [
        ("resnet164", {}, "block"),  # CIFAR bottlenecks, projection shortcuts
        ("resnext29", dict(depth=11, cardinality=2, base_width=4), "group"),
        ("tv:resnet18", {}, "block"),
        ("resnet50", {}, "block"),  # torchvision's bottleneck with a CIFAR stem
        ("tv-bottlenecks", {}, "channel"),
    ],
)
def test_folded_gates_and_dropped_blocks_compute_what_the_gated_model_does(name, kwargs, granularity):
    from types import SimpleNamespace

    spec = ModelSpec("resnet50" if name == "tv-bottlenecks" else name, 3, 10, 16, kwargs)
    model = _randomised(_tv_bottlenecks() if name == "tv-bottlenecks" else build_model(spec))
    blocks = residual_blocks(model)
    plain = [b.name for b in blocks if not b.downsamples]
    down = [b.name for b in blocks if b.downsamples]
    cb = SSSCallback(model, granularity=granularity, gamma=0.01, momentum=0.9, example=example_input(spec), name=name, store={}, base={})
    with torch.no_grad():
        if granularity == "block":
            for key, value in ((plain[0], 0.0), (down[-1], 0.0), (plain[-1], 0.3)):
                cb.gates[key].fill_(value)
        else:
            for key, g in cb.gates.items():
                g.copy_(torch.rand(g.shape, generator=torch.Generator().manual_seed(len(key))))
                g[::3] = 0.0
    x = probe_batch(spec, 4)
    gated = outputs(model, x)
    state = SimpleNamespace(model=model, epoch=1, checkpoint_masks=None)
    cb.before_save(state)  # folds the gates into the BatchNorms and zeroes what is dead, as a checkpoint holds it
    cb.remove_hooks()
    tol = 1e-5 * max(1.0, float(gated.abs().max()))
    assert float((outputs(model, x) - gated).abs().max()) <= tol
    if granularity == "block":
        assert dead_blocks(model) == ([plain[0]], [down[-1]])
        drop_blocks(model, blocks=[plain[0]])
        assert float((outputs(model, x) - gated).abs().max()) <= tol
    else:
        from prunecli.surgery.pruner import Pruner

        pruner = Pruner(model, example_input=example_input(spec), name=name)
        plan = pruner.plan_zeroed()
        assert plan.pruned if granularity == "channel" else not plan.pruned  # dead groups keep their shape
        pruner.remove(plan)
        assert float((outputs(model, x) - gated).abs().max()) <= tol


def test_a_zero_gate_kills_its_block_and_compress_drops_it(cli, tmp_path, resnet20, monkeypatch):
    _set_gates(monkeypatch, {"layer1.1": 0.0, "layer2.0": 0.0, "layer1.2": 0.5})
    out = tmp_path / "sss.pt"
    r = cli("prune", resnet20, "--method", "sss", "--granularity", "block", *HAND, "-o", out)
    assert r.code == 0, r.stderr
    assert "2/9 blocks gated to zero" in r.stderr and "layer2.0 downsamples" in r.stderr
    ck, base = load_checkpoint(out), load_checkpoint(resnet20)
    record = ck.extra["sss"]
    assert record["dead"] == ["layer1.1", "layer2.0"] and record["kept_downsampling"] == ["layer2.0"]
    # the file is a plain model: the gates are folded into the BatchNorms, dead branches masked to zero
    assert ck.state_dict.keys() == base.state_dict.keys()
    for p in ("weight", "bias"):
        assert torch.equal(ck.state_dict[f"layer1.2.bn2.{p}"], base.state_dict[f"layer1.2.bn2.{p}"] * 0.5)
        assert torch.equal(ck.state_dict[f"layer1.0.bn2.{p}"], base.state_dict[f"layer1.0.bn2.{p}"])
        for block in ("layer1.1", "layer2.0"):
            assert not ck.masks[f"{block}.bn2.{p}"].any() and not ck.state_dict[f"{block}.bn2.{p}"].any()

    small = tmp_path / "small.pt"
    c = cli("compress", out, "--no-latency", "--json", "-o", small)
    assert c.code == 0, c.stderr
    report = json.loads(c.stdout)
    assert report["blocks_dropped"] == ["layer1.1"]
    assert any("layer2.0 downsample through the shortcut" in n for n in report["notes"])  # reported, kept, and nothing failed
    s = load_checkpoint(small)
    assert s.converters[-1] == {"name": "drop-blocks", "args": {"blocks": ["layer1.1"]}}
    assert s.extra["compress"]["dropped_blocks"] == ["layer1.1"]
    assert not any(k.startswith("layer1.1.") for k in s.state_dict)
    model = rebuild_model(s)  # the file alone rebuilds the shallower network
    assert isinstance(model.layer1[1], torch.nn.Identity) and not isinstance(model.layer2[0], torch.nn.Identity)
    assert s.metrics["macs"] < s.metrics["macs_before_compress"]
    block_macs = 2 * 16 * 16 * 9 * 8 * 8  # two 3x3 convs, 16 -> 16 channels, on 8x8
    assert s.metrics["macs_before_compress"] - s.metrics["macs"] == block_macs
    assert _same_outputs(out, small) <= 1e-5  # masked == compressed, the dropped block included
    shown = cli("info", small)
    text = " ".join((shown.stdout + shown.stderr).split())  # a narrow terminal wraps table rows
    assert "1 dead residual block(s) dropped: layer1.1" in text and "2/9 blocks at zero" in text
    summary = json.loads(cli("info", small, "--json").stdout)
    assert summary["sss"]["dead"] and "layer1.1" in str(summary["sss"]["dead"])
    # the Python API compresses the same way
    import prunecli.api as pc

    net = pc.load(out)
    assert pc.compress(net) <= 1e-5
    assert isinstance(net.module.layer1[1], torch.nn.Identity) and net.checkpoint.extra["compress"]["dropped_blocks"] == ["layer1.1"]
    assert rebuild_model(load_checkpoint(pc.save(net, tmp_path / "api.pt"))).layer1[1].__class__ is torch.nn.Identity
    # finetune keeps the kept dead block dead (its masks are enforced)
    f = cli("finetune", small, "--epochs", "1", "--lr", "0.1", *RUN, "-o", tmp_path / "ft.pt")
    assert f.code == 0, f.stderr
    ft = load_checkpoint(tmp_path / "ft.pt")
    assert not ft.state_dict["layer2.0.bn2.weight"].any() and not ft.state_dict["layer2.0.bn2.bias"].any()


def test_zero_channel_gates_are_removed_by_compress(cli, tmp_path, resnet20, monkeypatch):
    _set_gates(monkeypatch, {"layer1.0.bn1": {0: 0.0, 3: 0.0, 5: 0.0}, "layer3.2.bn1": {7: 0.0}})
    out = tmp_path / "ch.pt"
    r = cli("prune", resnet20, "--method", "sss", "--granularity", "channel", *HAND, "-o", out)
    assert r.code == 0, r.stderr
    assert "4/336 channels gated to zero" in r.stderr
    ck = load_checkpoint(out)
    assert ck.extra["sss"]["dead"] == ["layer1.0.bn1:channel 0", "layer1.0.bn1:channel 3", "layer1.0.bn1:channel 5", "layer3.2.bn1:channel 7"]
    # whole dependency groups: the filter, its BatchNorm and the next conv's inputs
    gone = ~ck.masks["layer1.0.conv1.weight"].flatten(1).all(1)
    assert torch.nonzero(gone).flatten().tolist() == [0, 3, 5]
    assert not ck.masks["layer1.0.conv2.weight"][:, [0, 3, 5]].any()
    small = tmp_path / "small.pt"
    c = cli("compress", out, "--no-latency", "-o", small)
    assert c.code == 0, c.stderr
    s = load_checkpoint(small)
    model = rebuild_model(s)
    assert model.layer1[0].conv1.out_channels == 13 and model.layer3[2].conv1.out_channels == 63
    assert s.metrics["macs"] < s.metrics["macs_before_compress"]
    assert _same_outputs(out, small) <= 1e-5


def test_group_gates_on_resnext_mask_whole_groups_and_compress_keeps_the_shape(cli, tmp_path, monkeypatch):
    base = tmp_path / "rx.pt"
    _train(cli, base, "--model", "resnext29", "--model-arg", "depth=11", "--model-arg", "cardinality=4", "--model-arg", "base_width=2",
           "--model-arg", "widen_factor=1")
    _set_gates(monkeypatch, {"layer1.0.bn_group": {1: 0.0}})
    out = tmp_path / "g.pt"
    r = cli("prune", base, "--method", "sss", "--granularity", "group", *HAND, "-o", out)
    assert r.code == 0, r.stderr
    assert "1/12 groups gated to zero" in r.stderr and "compress keeps" in r.stderr
    ck = load_checkpoint(out)
    keep = ck.masks["layer1.0.bn_group.weight"]
    assert keep.tolist() == [True] * 2 + [False] * 2 + [True] * 4  # group 1 of 4, 2 channels each
    c = cli("compress", out, "--no-latency", "-o", tmp_path / "s.pt")
    assert c.code == 0, c.stderr
    assert rebuild_model(load_checkpoint(tmp_path / "s.pt")).layer1[0].conv_group.out_channels == 8


def test_killed_sss_run_resumes_to_the_same_weights_gates_and_masks(cli, tmp_path, resnet20):
    args = ["--method", "sss", "--granularity", "block", "--epochs", "3", "--sss-gamma", "0.5", "--lr", "0.1", *RUN]
    whole = cli("prune", resnet20, *args, "-o", tmp_path / "whole.pt")
    assert whole.code == 0, whole.stderr
    cut = tmp_path / "cut.pt"
    kill_then_resume(cli, ["prune", resnet20, *args, "-o", cut], epoch=2)
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(cut)
    assert_same_weights_and_masks(a, b)
    ga, gb = a.extra["sss"]["gates"], b.extra["sss"]["gates"]
    assert all(torch.equal(ga[k], gb[k]) for k in ga)
    assert a.extra["sss"]["dead"], "the run must kill a block for the resume to be tested across a death"
    assert any(0 < float(g) < 1 for g in ga.values()), "and leave some gates between 0 and 1"


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["--granularity", "group"], "ResNeXt's cardinality", 2),
        (["--granularity", "weight"], "sss gates residual blocks, groups or channels", 2),
        (["--granularity", "block", "--rate", "0.5"], "drop --rate", 2),
        (["--granularity", "block", "--epochs", "0"], "give --epochs", 2),
        (["--granularity", "block", "--scope", "global"], "drop --scope", 2),
    ],
)
def test_bad_sss_input_is_one_line(cli, tmp_path, resnet20, args, message, code):
    out = tmp_path / "x.pt"
    line = one_line_error(cli("prune", resnet20, "--method", "sss", "--epochs", "1", *RUN, *args, "-o", out), code)
    assert message in line
    assert not out.exists()


def test_sss_on_a_model_without_residual_blocks_is_one_line(cli, tmp_path, tiny_base):
    out = tmp_path / "x.pt"
    line = one_line_error(cli("prune", tiny_base, "--method", "sss", "--granularity", "block", "--epochs", "1", *RUN, "-o", out), 2)
    assert "conv2 has none" in line
    assert not out.exists()


@pytest.mark.parametrize("args", [{"blocks": ["nope"]}, {"blocks": 5}, {"blockz": ["layer1.1"]}, {"blocks": ["layer2.0"]}])
def test_an_edited_drop_blocks_record_is_one_line(cli, tmp_path, resnet20, args):
    from dataclasses import replace

    from prunecli.checkpoint import save_checkpoint

    bad = save_checkpoint(replace(load_checkpoint(resnet20), converters=[{"name": "drop-blocks", "args": args}]), tmp_path / "bad.pt")
    line = one_line_error(cli("info", bad), 1)
    assert "bad.pt: cannot apply its 'drop-blocks' conversion" in line
