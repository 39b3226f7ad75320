"""compress --block-by-block: blocks by model family, one block's removal before the next is
chosen, a valid checkpoint after every block, and a killed run resumes to the same network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import one_line_error
from prunecli.checkpoint import load_checkpoint
from prunecli.models import get_model
from prunecli.stages.checkpoints import load_model
from prunecli.surgery.blocks import find_blocks
from prunecli.surgery.units import build_graph, units

SMALL = ["--dataset", "synthetic", "--image-size", "8", "--device", "cpu", "--batch-size", "64"]


@pytest.fixture(scope="module")
def resnet_base(tmp_path_factory):
    from prunecli.cli.app import main

    path = tmp_path_factory.mktemp("bbb") / "r20.pt"
    try:
        main(["train", "--model", "resnet20", *SMALL, "--epochs", "0", "-o", str(path)])  # the structure is what matters
    except SystemExit as e:
        assert not e.code
    return path


def _blocks(name, how="auto", **kw):
    model = get_model(name, image_size=32, **kw)
    us = units(build_graph(model, torch.zeros(1, 3, 32, 32)))
    return [b.name for b in find_blocks(model, us, how)]


def test_blocks_follow_the_model_family():
    assert _blocks("resnet20") == ["layer1", "layer2", "layer3"]  # the seed's group_id 0..2 on a CIFAR ResNet
    assert _blocks("mobilenetv2") == [f"stages.{i}" for i in range(7)]  # the seed's blocks 1-7
    vgg = _blocks("vgg16")
    assert len(vgg) == 13 and vgg[0] == "features.0"  # every conv layer (the CIFAR classifier's FC is not a block)
    assert _blocks("resnet20", "blocks")[:3] == ["layer1.0", "layer1.1", "layer1.2"]
    assert len(_blocks("resnet20", "layers")) == 13
    assert _blocks("resnet20", "layer2.*,layer3.*") == ["layer2.*", "layer3.*"]


def test_l1_block_by_block_keeps_each_block_removed_before_the_next(cli, tmp_path, resnet_base):
    out = tmp_path / "bb.pt"
    r = cli("compress", resnet_base, "--block-by-block", "--method", "l1", "--rate", "0.5", "--no-latency", "--json", "-o", out)
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [b["block"] for b in doc["blocks"]] == ["layer1", "layer2", "layer3"]
    assert all(b["max_abs_diff"] < 1e-4 for b in doc["blocks"])
    # MACs fall block after block, measured on the network as it is after each block
    macs = [b["macs"] for b in doc["blocks"]]
    assert doc["macs_before"] > macs[0] > macs[1] > macs[2] == doc["macs_after"]
    for b in doc["blocks"]:
        assert b["channels_after"] <= b["channels_before"] // 2 + b["units"]
    ckpt = load_checkpoint(out)
    assert ckpt.extra["block_by_block"]["done"] == 3 and ckpt.extra["block_by_block"].get("complete")
    assert [e["command"] for e in ckpt.lineage][-1] == "compress" and ckpt.resume is None
    _, base = load_model(resnet_base)
    _, small = load_model(out)  # rebuilt from the file alone
    assert small.conv1.out_channels == base.conv1.out_channels  # the stem's stream spans blocks: left whole
    assert small.layer1[0].conv1.out_channels == base.layer1[0].conv1.out_channels // 2
    assert small.layer3[0].conv2.out_channels < base.layer3[0].conv2.out_channels  # stage 3's own stream
    assert small.fc.out_features == 10
    assert cli("finetune", out, "--epochs", "1", "--steps-per-epoch", "1", "--device", "cpu", "-o", tmp_path / "f.pt").code == 0


def _run(args, env=None):
    return subprocess.run([sys.executable, "-m", "prunecli", *map(str, args)], env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "kill, method",
    [({"PRUNECLI_KILL_AFTER_BLOCK": "1"}, "l1"), ({"PRUNECLI_KILL_DURING_EPOCH": "2"}, "l1"), ({"PRUNECLI_KILL_AFTER_BLOCK": "1"}, "thinet")],
    ids=["between-blocks", "inside-training", "thinet-between-blocks"],
)
def test_killed_run_resumes_to_the_same_network(cli, tmp_path, resnet_base, kill, method):
    # thinet: the resumed run takes its targets from the starting network's file (the lineage's parent)
    args = ["--block-by-block", "--method", method, "--rate", "0.4", "--unit-finetune-epochs", "2", "--steps-per-epoch", "2", "--lr", "0.01",
            "--no-latency", "--batch-size", "32", "--units", "layer1,layer2", "--calib-batches", "1"]
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    r = cli("compress", resnet_base, *args, "-o", whole)
    assert r.code == 0, r.stderr
    proc = _run(["compress", resnet_base, *args, "-o", cut], env=kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = load_checkpoint(cut).extra["block_by_block"]
    assert state["done"] == 1 if "PRUNECLI_KILL_AFTER_BLOCK" in kill else state["done"] == 0
    resumed = cli("compress", "--resume", cut)
    assert resumed.code == 0, resumed.stderr
    a, b = load_checkpoint(whole), load_checkpoint(cut)
    assert a.structure == b.structure
    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert [r["channels_after"] for r in a.extra["block_by_block"]["rows"]] == [r["channels_after"] for r in b.extra["block_by_block"]["rows"]]


def test_bad_input_is_one_line(cli, tmp_path, resnet_base):
    out = tmp_path / "x.pt"
    for args, words in (  # usage errors: exit 2
        (["--block-by-block", "--rate", "0.5"], "--method"),
        (["--block-by-block", "--method", "magnitude", "--rate", "0.5"], "single weights"),
        (["--block-by-block", "--method", "l1", "--rate", "1.5"], "--rate"),
        (["--method", "l1", "--rate", "0.5"], "--block-by-block"),
        (["--block-by-block", "--method", "l1", "--rate", "0.5", "--units", "nothing*"], "nothing*"),
    ):
        r = cli("compress", resnet_base, *args, "-o", out)
        assert words in one_line_error(r, code=2), args
        assert not out.exists()
    assert "block-by-block" in one_line_error(cli("compress", "--resume", resnet_base))


@pytest.mark.parametrize("method", ["thinet", "cp"])
def test_reconstruction_methods_run_block_by_block(cli, tmp_path, resnet_base, method):
    """ThiNet and CP per block: targets from the starting network, the next layer refitted, then removed."""
    out = tmp_path / f"{method}.pt"
    r = cli("compress", resnet_base, "--block-by-block", "--method", method, "--rate", "0.5", "--calib-batches", "1", "--units", "layer1,layer2",
            "--no-latency", "--json", "-o", out)
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [b["block"] for b in doc["blocks"]] == ["layer1", "layer2"] and all(b["max_abs_diff"] < 1e-4 for b in doc["blocks"])
    _, base = load_model(resnet_base)
    _, small = load_model(out)
    assert small.layer1[0].conv1.out_channels == base.layer1[0].conv1.out_channels // 2
    # the layer reading the pruned channels was refitted: none of its input-channel slices is one of the base's
    w_small, w_base = small.layer1[0].conv2.weight.detach(), base.layer1[0].conv2.weight.detach()
    assert not any(torch.equal(w_small[:, j], w_base[:, i]) for j in range(w_small.shape[1]) for i in range(w_base.shape[1]))


def test_max_blocks_stops_early_and_resume_finishes(cli, tmp_path, resnet_base):
    """--max-blocks N: a complete, resumable file after N blocks; --resume runs the rest."""
    out = tmp_path / "part.pt"
    args = ["--block-by-block", "--method", "l1", "--rate", "0.5", "--no-latency"]
    r = cli("compress", resnet_base, *args, "--max-blocks", "1", "-o", out)
    assert r.code == 0, r.stderr
    assert "1 of 3 blocks done" in r.stderr
    state = load_checkpoint(out).extra["block_by_block"]
    assert state["done"] == 1 and not state["complete"]
    assert load_checkpoint(out).lineage[-1]["blocks_done"] == ["layer1"] and load_checkpoint(out).lineage[-1]["blocks"] == 3
    load_model(out)  # a valid compressed checkpoint already
    assert cli("compress", "--resume", out).code == 0
    state = load_checkpoint(out).extra["block_by_block"]
    assert state["done"] == 3 and state["complete"]
    whole = tmp_path / "whole.pt"
    assert cli("compress", resnet_base, *args, "-o", whole).code == 0
    a, b = load_checkpoint(whole), load_checkpoint(out)
    assert a.structure == b.structure and all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
