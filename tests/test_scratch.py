"""train --arch-from: Rethinking's Scratch-E / Scratch-B baselines (Liu et al., arXiv:1810.05270)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import final_error_line, one_line_error

from prunecli.checkpoint import load_checkpoint, sha256_file
from prunecli.cli.app import main
from prunecli.config.train import Budget
from prunecli.metrics.complexity import count_complexity
from prunecli.models import build_model
from prunecli.stages.checkpoints import load_model
from prunecli.stages.scratch import budget_line, scratch_epochs

# 8x8 synthetic images, CPU, one or two batches per epoch: every run here takes well under a second
DATA = ["--dataset", "synthetic", "--image-size", "8", "--device", "cpu", "--batch-size", "64"]
RUN = ["--device", "cpu", "--batch-size", "64", "--steps-per-epoch", "2"]


def _cli(*args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), f"prunecli {' '.join(map(str, args[:1]))} failed ({e.code})"


def _small(folder, model: str, rate: float):
    """An initialised ``model`` (epochs 0: its weights do not matter here), pruned at ``rate``, compressed."""
    base, masked, small = folder / "base.pt", folder / "masked.pt", folder / "small.pt"
    _cli("train", *DATA, "--model", model, "--epochs", "0", "-o", base)
    _cli("prune", base, "--method", "l1", "--rate", rate, "-o", masked)
    _cli("compress", masked, "--no-latency", "-o", small)
    return small


@pytest.fixture(scope="module")
def r20_small(tmp_path_factory):
    """ResNet-20 with half its channels removed: MACs cut by more than 2x (Scratch-B is capped)."""
    return _small(tmp_path_factory.mktemp("r20"), "resnet20", 0.5)


@pytest.fixture(scope="module")
def conv2_light(tmp_path_factory):
    """Conv-2 with 10% of its channels removed: MACs cut by less than 2x."""
    return _small(tmp_path_factory.mktemp("conv2"), "conv2", 0.1)


def _macs_ratio(small) -> float:
    ck, pruned = load_model(small)
    shape = (ck.model.in_channels, ck.model.image_size, ck.model.image_size)
    return count_complexity(build_model(ck.model), shape).macs / count_complexity(pruned, shape).macs


def test_scratch_b_formula_and_cap():
    assert scratch_epochs(Budget.epochs, 15, 2.31) == 15
    assert scratch_epochs(Budget.compute, 15, 1.5) == 23  # 22.5 rounds half up
    assert scratch_epochs(Budget.compute, 15, 1.3) == 20  # 19.5
    assert scratch_epochs(Budget.compute, 15, 2.31) == 30  # 35, capped at 2x
    assert scratch_epochs(Budget.compute, 0, 3.0) == 0
    assert budget_line(Budget.compute, 15, 2.31) == "Scratch-B: 15 epochs x 2.31 MACs ratio = 35 epochs (capped at 2x: 30)"
    assert budget_line(Budget.compute, 15, 1.5) == "Scratch-B: 15 epochs x 1.50 MACs ratio = 23 epochs"


def _reinitialised(spec_name: str, pruned: torch.nn.Module, **spec_args) -> torch.nn.Module:
    from prunecli.checkpoint import Checkpoint
    from prunecli.models import ModelSpec
    from prunecli.stages.scratch import _fresh_dense, reinitialise

    spec = ModelSpec(spec_name, in_channels=3, num_classes=10, **spec_args)
    torch.manual_seed(0)
    dense, inits = _fresh_dense(Checkpoint(model=spec, state_dict={}), "test")
    with torch.no_grad():
        for p in pruned.parameters():
            p.fill_(7.0)  # "trained" values that must all go
    reinitialise(pruned, dense, inits)
    assert not any(bool((p == 7.0).any()) for p in pruned.parameters())
    return pruned


def test_reinit_draws_with_the_pruned_fans():
    from prunecli.models.convnets import ConvNet
    from prunecli.models.vgg import VGG

    # conv4 (He-normal on fan-in, replayed): half the widths, so half the fan-in of the last conv
    net = _reinitialised("conv4", ConvNet((32, 64), in_channels=3, num_classes=10, image_size=8), image_size=8)
    assert net.features[7].weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    assert net.classifier[0].weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    # VGG's slimming_init computes n = k*k*out itself: run again on the pruned widths; its head's N(0, 0.01) replayed
    cfg = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256]
    vgg = _reinitialised("vgg11", VGG(cfg, in_channels=3, num_classes=10, image_size=16, head="li"), image_size=16, kwargs={"head": "li"})
    assert vgg.features[-3].weight.std().item() == pytest.approx((2 / (9 * 256)) ** 0.5, rel=0.05)
    assert vgg.features[-2].weight.eq(0.5).all() and vgg.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_reinit_slices_a_parameter_no_init_reaches():
    from prunecli.stages.scratch import reinitialise

    class Scaled(torch.nn.Module):  # as ConvNeXt's layer scale: a constant made in the constructor
        def __init__(self, width):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, width, 3)
            self.scale = torch.nn.Parameter(torch.full((width, 1, 1), 1e-6))

    pruned = Scaled(4)
    with torch.no_grad():
        pruned.scale.fill_(3.0)
    reinitialise(pruned, Scaled(8), [])
    assert torch.equal(pruned.scale, torch.full((4, 1, 1), 1e-6))


@pytest.mark.parametrize("which, asked", [("below", 4), ("above", 2)])
def test_scratch_b_epochs_follow_the_macs_ratio(cli, tmp_path, conv2_light, r20_small, which, asked):
    small = conv2_light if which == "below" else r20_small
    ratio = _macs_ratio(small)
    assert (1.25 <= ratio < 2) if which == "below" else ratio > 2, ratio  # below: 4 epochs become 5 to 7
    r = cli("train", "--arch-from", small, "--budget", "compute", "--epochs", asked, *RUN, "--steps-per-epoch", "1", "-o", tmp_path / "b.pt")
    assert r.code == 0, r.stderr
    expected = min(int(asked * ratio + 0.5), 2 * asked)
    assert (asked < expected < 2 * asked) if which == "below" else expected == 2 * asked
    ck = load_checkpoint(r.path)
    assert ck.metrics["epoch"] == ck.metrics["epochs"] == ck.resume["config"]["epochs"] == expected
    rec = ck.extra["scratch"]
    assert rec["budget"] == "compute" and rec["epochs_asked"] == asked and rec["epochs"] == expected
    assert rec["macs_ratio"] == pytest.approx(ratio)
    assert f"Scratch-B: {asked} epochs x {ratio:.2f} MACs ratio" in r.stderr
    assert ("capped at 2x" in r.stderr) == (which == "above")
    # the lineage and the written config record what was asked: reusing it asks again
    opts = ck.lineage[0]["options"]
    assert opts["epochs"] == asked and opts["budget"] == "compute" and opts["arch-from"] == str(small)


def test_fresh_init_of_the_compressed_architecture(cli, tmp_path, r20_small):
    # the seed small.pt's own dense model was initialised with: the weights still differ
    r = cli("train", "--arch-from", r20_small, "--epochs", "0", "--seed", "0", *RUN, "-o", tmp_path / "e.pt")
    assert r.code == 0, r.stderr
    assert "Scratch-E: 0 epochs" in r.stderr
    small, fresh = load_checkpoint(r20_small), load_checkpoint(r.path)
    assert {k: v.shape for k, v in fresh.state_dict.items()} == {k: v.shape for k, v in small.state_dict.items()}
    weights = [k for k, v in small.state_dict.items() if v.dim() >= 2]  # conv and linear weights (BatchNorm's are constants)
    assert len(weights) == 20 and not any(torch.equal(small.state_dict[k], fresh.state_dict[k]) for k in weights)
    for k, v in fresh.state_dict.items():  # BatchNorm starts as the identity, its statistics anew
        if k.endswith("running_mean") or (k.startswith("bn") or ".bn" in k) and k.endswith(".bias"):
            assert torch.equal(v, torch.zeros_like(v)), k
        if k.endswith("running_var") or (k.startswith("bn") or ".bn" in k) and k.endswith(".weight"):
            assert torch.equal(v, torch.ones_like(v)), k
        if k.endswith("num_batches_tracked"):
            assert int(v) == 0, k
    # the family's init (He-normal on fan-out) with the pruned layer's own fan-out
    w = fresh.state_dict["layer3.1.conv1.weight"]
    dense_out = build_model(small.model).layer3[1].conv1.out_channels
    assert w.shape[0] < dense_out
    assert w.std().item() == pytest.approx((2.0 / (w.shape[0] * 9)) ** 0.5, rel=0.1)
    # seeded: the same seed gives the same weights
    again = cli("train", "--arch-from", r20_small, "--epochs", "0", "--seed", "0", *RUN, "-o", tmp_path / "again.pt")
    assert again.code == 0, again.stderr
    a = load_checkpoint(again.path).state_dict
    assert all(torch.equal(a[k], v) for k, v in fresh.state_dict.items())
    # --bn-init applies on top
    s = cli("train", "--arch-from", r20_small, "--epochs", "0", "--bn-init", "0.5", *RUN, "-o", tmp_path / "s.pt")
    assert s.code == 0, s.stderr
    assert torch.equal(load_checkpoint(s.path).state_dict["bn1.weight"], torch.full_like(fresh.state_dict["bn1.weight"], 0.5))


def test_lineage_names_the_parent_and_the_file_rebuilds_itself(cli, tmp_path, r20_small):
    r = cli("train", "--arch-from", r20_small, "--epochs", "1", *RUN, "-o", tmp_path / "e.pt")
    assert r.code == 0, r.stderr
    ck, small = load_checkpoint(r.path), load_checkpoint(r20_small)
    assert [e["command"] for e in ck.lineage] == ["train"]  # a new training run
    assert ck.lineage[0]["parent"] == str(r20_small) and ck.lineage[0]["parent_sha256"] == sha256_file(r20_small)
    assert "model" not in ck.lineage[0]["options"]  # the architecture is the parent's, not an option
    rec = ck.extra["scratch"]
    assert rec["arch_from"] == str(r20_small) and rec["sha256"] == sha256_file(r20_small)
    assert rec["budget"] == "epochs" and rec["epochs_asked"] == rec["epochs"] == 1 and rec["macs_ratio"] > 2
    assert ck.structure == small.structure and ck.converters == small.converters and ck.model == small.model
    assert ck.dataset.name == "synthetic" and ck.dataset.image_size == 8  # the parent's data by default
    _, model = load_model(r.path)
    assert [p.shape for p in model.parameters()] == [v.shape for k, v in small.state_dict.items() if k in dict(model.named_parameters())]
    ev = cli("evaluate", r.path, "--json", "--no-latency")
    assert ev.code == 0, ev.stderr
    assert json.loads(ev.stdout)["params"] == sum(v.numel() for k, v in small.state_dict.items() if k in dict(model.named_parameters()))


def test_bad_inputs_one_line_and_nothing_written(cli, tmp_path, r20_small):
    from fakedata import write_mnist

    mnist = write_mnist(tmp_path / "mnist", n_train=20, n_test=10)
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "x.pt"
    base = r20_small.with_name("base.pt")
    folded = tmp_path / "folded.pt"
    _cli("compress", r20_small, "--fold-bn", "--no-latency", "-o", folded)
    cases = [
        (("--arch-from", folded), 1, "before folding"),  # no BatchNorm left: the advice is the unfolded file, not fine-tuning
        (("--arch-from", base), 1, "not a compressed checkpoint"),
        (("--arch-from", tmp_path / "missing.pt"), 1, "no such file"),
        (("--arch-from", r20_small, "--dataset", "mnist", "--data", mnist), 1, "--arch-from"),  # 1-channel images, a 3-channel model
        (("--budget", "compute"), 2, "--arch-from"),
        (("--arch-from", r20_small, "--model", "conv2"), 2, "--model"),
        (("--arch-from", r20_small, "--model-arg", "width=2"), 2, "--model-arg"),
        (("--arch-from", r20_small, "--image-size", "16"), 2, "--image-size"),
        (("--arch-from", r20_small, "--num-classes", "5"), 2, "--num-classes"),
    ]
    for args, code, needle in cases:
        line = one_line_error(cli("train", *args, "--epochs", "1", *RUN, "-o", out), code=code)
        assert needle in line, line
        assert list(folder.iterdir()) == [], (args, list(folder.iterdir()))
    # the input is never the output, even with --overwrite
    before = r20_small.read_bytes()
    line = one_line_error(cli("train", "--arch-from", r20_small, "--epochs", "1", *RUN, "-o", r20_small, "--overwrite"))
    assert ("--arch-from" in line or "is the input checkpoint" in line) and r20_small.read_bytes() == before


def test_resume_of_a_scratch_run_is_bit_identical(cli, tmp_path, r20_small):
    # Scratch-B of 1 epoch: 2 epochs (the cap), so the resumed run must know the resolved count
    args = ["--arch-from", r20_small, "--budget", "compute", "--epochs", "1", "--lr", "0.05", *RUN]
    straight = cli("train", *args, "-o", tmp_path / "straight.pt")
    assert straight.code == 0, straight.stderr
    cut = cli("train", *args, "-o", tmp_path / "cut.pt", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"})
    line = final_error_line(cut, code=130)
    assert "epoch 1/2" in line and "--resume" in line
    resumed = cli("train", "--resume", tmp_path / "cut.pt")
    assert resumed.code == 0, resumed.stderr
    a, b = load_checkpoint(straight.path), load_checkpoint(resumed.path)
    assert a.metrics["epoch"] == b.metrics["epoch"] == 2
    assert a.state_dict.keys() == b.state_dict.keys()
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), "resumed weights differ"
    assert b.lineage[0]["resumed"][0]["at_epoch"] == 1 and b.extra["scratch"] == a.extra["scratch"]
