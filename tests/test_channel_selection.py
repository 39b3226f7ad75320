"""Network Slimming on pre-activation nets: channel selection in front of stream BatchNorms.

Liu et al. (ICCV 2017, arXiv:1708.06519) prune a BatchNorm that reads the residual or
concatenated stream through a channel-selection step, so that only the next conv's inputs
go and the stream keeps its width (prunecli.models.channel_selection). These tests check
that structure on a PreResNet (depth 11: one bottleneck per stage) and a DenseNet (depth
7: one layer per block): the pruned BatchNorm channels leave the next conv's inputs, the
block outputs keep their width, compressed == masked, and the file rebuilds by itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunecli.checkpoint import load_checkpoint
from prunecli.models import get_model
from prunecli.models.channel_selection import ChannelSelection, SelectedNorm, insert_channel_selection, renamed
from prunecli.stages.checkpoints import load_model
from prunecli.surgery.equivalence import outputs, probe_batch

SMALL = ["--dataset", "synthetic", "--image-size", "8", "--device", "cpu", "--batch-size", "32", "--epochs", "1", "--sparsity-bn", "1e-4"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """Sparsity-trained PreResNet (depth 11) and DenseNet (depth 7) on synthetic 3x8x8."""
    from prunecli.cli.app import main

    d = tmp_path_factory.mktemp("slimming")
    out = {}
    for name, model, arg in (("pre", "preresnet164", "depth=11"), ("dense", "densenet40", "depth=7")):
        path = d / f"{name}.pt"
        try:
            main(["train", "--model", model, "--model-arg", arg, *SMALL, "-o", str(path)])
        except SystemExit as e:
            assert not e.code
        out[name] = path
    return out


def _selection_layer() -> ChannelSelection:
    sel = ChannelSelection(4)
    x = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).view(2, 4, 2, 2)
    assert torch.equal(sel(x), x)  # as built: the identity
    return sel


def test_selection_layer_routes_channels():
    sel = _selection_layer()
    x = torch.randn(2, 4, 3, 3)
    sel.prune_out_channels([1])  # outputs 0, 2, 3
    assert sel.out_channels == 3 and torch.equal(sel(x), x[:, [0, 2, 3]])
    sel.prune_in_channels([2])  # input 2 gone upstream: output 1 (it read input 2) becomes a zero channel
    x3 = x[:, [0, 1, 3]]
    y = sel(x3)
    assert sel.in_channels == 3 and y.shape[1] == 3
    assert torch.equal(y[:, 0], x3[:, 0]) and torch.equal(y[:, 1], torch.zeros_like(y[:, 1])) and torch.equal(y[:, 2], x3[:, 2])
    assert sel.channel_alive(torch.arange(3)).tolist() == [True, False, True]


def test_converter_keeps_the_function_and_renames_the_state():
    torch.manual_seed(0)
    model = get_model("preresnet164", depth=11, image_size=8).eval()
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    state = model.state_dict()
    norms = model.stream_norms()
    assert norms == ["layer1.0.bn1", "layer2.0.bn1", "layer3.0.bn1", "bn"]
    converted = insert_channel_selection(model, norms=norms)
    assert isinstance(converted.layer1[0].bn1, SelectedNorm)
    assert torch.equal(converted(x), before)
    assert set(renamed(state, norms)) == set(converted.state_dict()) - {f"{n}.select.{b}" for n in norms for b in ("source", "gate")}
    dense = get_model("densenet40", depth=7, image_size=8)
    assert dense.stream_norms() == ["dense1.0.bn", "trans1.bn", "dense2.0.bn", "trans2.bn", "dense3.0.bn", "bn"]


def test_preresnet_prunes_conv_inputs_and_keeps_the_residual_width(cli, tmp_path, bases):
    base = bases["pre"]
    masked, small = tmp_path / "p.pt", tmp_path / "c.pt"
    r = cli("prune", base, "--method", "slimming", "--scope", "global", "--rate", "0.5", "-o", masked)
    assert r.code == 0, r.stderr
    ckpt = load_checkpoint(masked)
    assert ckpt.converters == [{"name": "channel-selection", "args": {"norms": ["layer1.0.bn1", "layer2.0.bn1", "layer3.0.bn1", "bn"]}}]
    assert ckpt.extra["prune"]["stream_bn"] == "select"
    assert any(k.startswith("layer2.0.bn1.norm.") for k in ckpt.masks)  # a stream BatchNorm lost channels
    assert cli("compress", masked, "--no-latency", "-o", small).code == 0

    _, dense = load_model(base)
    _, m = load_model(masked)
    _, c = load_model(small)  # rebuilt from the file alone: spec -> converter -> history -> weights
    probe = probe_batch(ckpt.model)
    assert torch.allclose(outputs(m, probe), outputs(c, probe), atol=1e-5)
    for stage in ("layer1", "layer2", "layer3"):
        d, s = getattr(dense, stage)[0], getattr(c, stage)[0]
        # the block output (residual) width is untouched ...
        assert s.conv3.out_channels == d.conv3.out_channels
        assert s.shortcut.out_channels == d.shortcut.out_channels and s.shortcut.in_channels == d.shortcut.in_channels
        # ... while the selected BatchNorm and the conv it feeds read only the kept channels
        assert s.bn1.select.in_channels == d.bn1.num_features
        assert s.bn1.norm.num_features == s.conv1.in_channels == s.bn1.select.out_channels
    assert sum(getattr(c, st)[0].conv1.in_channels < getattr(dense, st)[0].conv1.in_channels for st in ("layer1", "layer2", "layer3")) >= 2
    assert c.bn.norm.num_features == c.fc.in_features < dense.fc.in_features
    # the pruned channels are the smallest |gamma| of that BatchNorm, kept in order
    gamma = dense.layer2[0].bn1.weight.detach().abs()
    kept = c.layer2[0].bn1.select.source
    assert torch.equal(kept, kept.sort().values)
    assert gamma[kept].min() >= gamma[[i for i in range(len(gamma)) if i not in set(kept.tolist())]].max()
    # the checkpoint keeps fine-tuning and can be pruned again
    assert cli("finetune", small, "--epochs", "1", "--device", "cpu", "-o", tmp_path / "f.pt").code == 0
    assert cli("prune", tmp_path / "f.pt", "--method", "slimming", "--scope", "global", "--rate", "0.3", "-o", tmp_path / "again.pt").code == 0


def test_densenet_prunes_only_through_selection(cli, tmp_path, bases):
    masked, small = tmp_path / "p.pt", tmp_path / "c.pt"
    assert cli("prune", bases["dense"], "--method", "slimming", "--scope", "global", "--rate", "0.4", "-o", masked).code == 0
    r = cli("compress", masked, "--no-latency", "-o", small)
    assert r.code == 0, r.stderr
    _, dense = load_model(bases["dense"])
    _, m = load_model(masked)
    _, c = load_model(small)
    probe = probe_batch(load_checkpoint(small).model)
    assert torch.allclose(outputs(m, probe), outputs(c, probe), atol=1e-5)
    # no conv loses an output channel: the concatenated widths stay, only inputs go
    for name, module in dense.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            assert dict(c.named_modules())[name].out_channels == module.out_channels, name
    assert c.fc.in_features < dense.fc.in_features
    assert sum(isinstance(x, ChannelSelection) and x.out_channels < x.in_channels for x in c.modules()) >= 3


def test_couple_prunes_the_whole_stream(cli, tmp_path, bases):
    out = tmp_path / "c.pt"
    r = cli("prune", bases["pre"], "--method", "slimming", "--scope", "global", "--rate", "0.5", "--stream-bn", "couple", "--compress", "-o", out)
    assert r.code == 0, r.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.converters == [] and ckpt.extra["prune"]["stream_bn"] == "couple"
    _, dense = load_model(bases["pre"])
    _, c = load_model(out)
    # the residual stream of some stage is narrower: every layer on it lost the same channels
    assert any(getattr(c, st)[0].conv3.out_channels < getattr(dense, st)[0].conv3.out_channels for st in ("layer1", "layer2", "layer3"))


def test_no_layer_is_emptied(cli, tmp_path, bases):
    out = tmp_path / "c.pt"
    r = cli("prune", bases["pre"], "--method", "slimming", "--scope", "global", "--rate", "0.97", "--compress", "-o", out)
    assert r.code == 0, r.stderr
    _, c = load_model(out)
    for name, m in c.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.num_features >= 1, name
        if isinstance(m, torch.nn.Conv2d):
            assert m.in_channels >= 1 and m.out_channels >= 1, name


def _one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_bad_stream_bn_is_one_line_and_writes_nothing(cli, tmp_path, bases):
    out = tmp_path / "x.pt"
    r = cli("prune", bases["pre"], "--method", "l1", "--rate", "0.3", "--stream-bn", "select", "-o", out)
    assert r.code == 2 and "--stream-bn select" in _one_line(r) and "slimming" in _one_line(r)
    assert not out.exists()
    # a compressed file without selection layers cannot get them afterwards (its history names the BatchNorms)
    small = tmp_path / "small.pt"
    assert cli("prune", bases["pre"], "--method", "l1", "--rate", "0.3", "--compress", "-o", small).code == 0
    r = cli("prune", small, "--method", "slimming", "--scope", "global", "--rate", "0.3", "-o", out)
    assert r.code == 2 and "--stream-bn couple" in _one_line(r)
    assert not out.exists()
    assert cli("prune", small, "--method", "slimming", "--scope", "global", "--rate", "0.3", "--stream-bn", "couple", "-o", out).code == 0
    # a model without stream BatchNorms: asked explicitly, one line
    r = cli("train", "--model", "resnet20", "--dataset", "synthetic", "--image-size", "8", "--epochs", "0", "-o", tmp_path / "r.pt")
    assert r.code == 0
    r = cli("prune", tmp_path / "r.pt", "--method", "slimming", "--rate", "0.3", "--stream-bn", "select", "-o", tmp_path / "y.pt")
    assert r.code == 2 and "stream" in _one_line(r)
    assert not Path(tmp_path / "y.pt").exists()


def test_slimming_while_training_resumes_with_the_selection(cli, tmp_path, bases):
    """prune --epochs with slimming converts once; a run killed inside epoch 2 resumes from the
    file (the selection rebuilt from its converter) to the same weights as an uninterrupted one."""
    import os
    import signal
    import subprocess
    import sys

    args = ["--method", "slimming", "--scope", "global", "--rate", "0.4", "--epochs", "2", "--device", "cpu",
            "--batch-size", "32", "--sparsity-bn", "1e-4", "--seed", "3"]
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    r = cli("prune", bases["pre"], *args, "-o", whole)
    assert r.code == 0, r.stderr
    ckpt = load_checkpoint(whole)
    assert [c["name"] for c in ckpt.converters] == ["channel-selection"]
    proc = subprocess.run(
        [sys.executable, "-m", "prunecli", "prune", str(bases["pre"]), *args, "-o", str(cut)],
        env={**os.environ, "PRUNECLI_KILL_DURING_EPOCH": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert cli("prune", "--resume", cut).code == 0
    a, b = load_checkpoint(whole), load_checkpoint(cut)
    assert a.state_dict.keys() == b.state_dict.keys() and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    _, m = load_model(cut)
    assert isinstance(m.layer1[0].bn1, SelectedNorm)
    assert cli("compress", cut, "--no-latency", "-o", tmp_path / "c.pt").code == 0
