"""Checkpoints: weights_only-loadable, atomic, and every bad file is one line, nothing executed."""

from __future__ import annotations

import errno
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import one_line_error

from prunecli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from prunecli.errors import CheckpointError, OutputError
from prunecli.models import ModelSpec
from prunecli.stages.checkpoints import rebuild_model


class _RunsCode:
    """Unpickling this object calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_holds_what_design_md_lists(tiny_base):
    payload = torch.load(tiny_base, map_location="cpu", weights_only=True)  # the safe loader reads it as is
    assert payload["format"] == "prunecli" and payload["version"] == 2
    assert payload["model"]["name"] == "conv2" and payload["model"]["image_size"] == 8
    assert payload["dataset"]["name"] == "synthetic" and len(payload["dataset"]["mean"]) == 3
    assert payload["structure"] is None and payload["masks"] == {}
    assert set(payload["state_dict"]) == {"features.0.weight", "features.2.weight", "classifier.0.weight", "classifier.2.weight", "classifier.4.weight"}
    (entry,) = payload["lineage"]
    assert entry["command"] == "train" and entry["parent"] is None and entry["options"]["epochs"] == 2
    assert {"prunecli_version", "time", "parent_sha256", "options"} <= set(entry)
    assert payload["resume"]["epoch"] == 2 and payload["resume"]["optimizer"]["state"]  # momentum buffers kept
    assert 0 <= payload["metrics"]["top1"] <= 100


def test_crafted_pickle_is_refused_without_running_code(cli, tmp_path):
    marker = tmp_path / "PWNED"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"format": "prunecli", "x": _RunsCode(marker)}))
    zipped = tmp_path / "zipped.pt"
    torch.save({"format": "prunecli", "version": 1, "x": _RunsCode(marker)}, zipped)  # torch's zip format
    for path in (raw, zipped):
        line = one_line_error(cli("info", path))
        assert str(path) in line
        assert not marker.exists(), "loading a checkpoint executed code"
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
        assert not marker.exists()


def test_truncated_checkpoint(cli, tmp_path, tiny_base):
    cut = tmp_path / "cut.pt"
    data = tiny_base.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    line = one_line_error(cli("evaluate", cut))
    assert "truncated or corrupt" in line


@pytest.mark.parametrize(
    "content",
    [b"hello, this is a text file\n", b'{"format": "prunecli"}', b"\x00" * 64, b"PK\x03\x04garbage"],
    ids=["text", "json", "zeros", "fake-zip"],
)
def test_other_formats(cli, tmp_path, content):
    p = tmp_path / "other.pt"
    p.write_bytes(content)
    line = one_line_error(cli("info", p))
    assert str(p) in line


def test_foreign_torch_file_and_newer_version(cli, tmp_path, tiny_base):
    p = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, p)
    assert "not a prunecli checkpoint" in one_line_error(cli("info", p))
    payload = torch.load(tiny_base, weights_only=True)
    payload["version"] = 99
    q = tmp_path / "future.pt"
    torch.save(payload, q)
    assert "upgrade prunecli" in one_line_error(cli("info", q))


def test_missing_empty_and_folder(cli, tmp_path):
    assert "no such file" in one_line_error(cli("info", tmp_path / "nope.pt"))
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in one_line_error(cli("info", tmp_path / "empty.pt"))
    assert "folder" in one_line_error(cli("info", tmp_path))


def test_architecture_mismatch(cli, tmp_path, tiny_base):
    payload = torch.load(tiny_base, weights_only=True)
    payload["model"]["name"] = "conv4"  # conv2 weights claimed to be conv4
    p = tmp_path / "wrong.pt"
    torch.save(payload, p)
    line = one_line_error(cli("evaluate", p))
    assert "do not fit architecture 'conv4'" in line and "missing" in line
    payload = torch.load(tiny_base, weights_only=True)
    payload["state_dict"]["classifier.4.weight"] = torch.zeros(3, 256)
    torch.save(payload, p)
    assert "shape mismatch" in one_line_error(cli("info", p))


def test_atomic_write_keeps_the_old_file_when_saving_fails(tmp_path, tiny_base, monkeypatch):
    ckpt = load_checkpoint(tiny_base)
    target = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, target)
    before = target.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OutputError, match="no space left on device; nothing was replaced"):
        save_checkpoint(ckpt, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"], "a temporary file was left behind"
    assert zipfile.is_zipfile(target)


def test_user_code_model_needs_trust(cli, tmp_path, monkeypatch):
    code = tmp_path / "mynet.py"
    marker = tmp_path / "IMPORTED"
    code.write_text(
        "import torch.nn as nn, pathlib\n"
        f"pathlib.Path({str(marker)!r}).touch()\n"
        "def build(in_channels=3, num_classes=10, image_size=32):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes))\n"
    )
    r = cli("train", "--model", f"{code}:build", "--dataset", "synthetic", "--image-size", "8", "--epochs", "1", "--device", "cpu", "-o", tmp_path / "u.pt")
    assert r.code == 0, r.stderr
    marker.unlink()
    import sys

    for name in [m for m in sys.modules if m.startswith("prunecli_user_model_")]:
        del sys.modules[name]
    monkeypatch.delenv("PRUNECLI_TRUST_CODE", raising=False)
    line = one_line_error(cli("evaluate", r.path))
    assert "PRUNECLI_TRUST_CODE=1" in line and "mynet.py:build" in line
    assert not marker.exists(), "the model file was imported without trust"
    r2 = cli("evaluate", r.path, "--json", "--no-latency", env={"PRUNECLI_TRUST_CODE": "1"})
    assert r2.code == 0, r2.stderr
    assert marker.exists()


def test_rebuild_round_trip(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec("resnet20", in_channels=3, num_classes=10, image_size=32)
    from prunecli.models import build_model

    model = build_model(spec).eval()
    ckpt = Checkpoint(model=spec, state_dict=model.state_dict())
    path = save_checkpoint(ckpt, tmp_path / "r.pt")
    again = rebuild_model(load_checkpoint(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), again(x))


# -- format version 1 (before the in-memory core) ---------------------------------------

V1 = Path(__file__).resolve().parent / "data" / "v1"


def _weights_sha256(state_dict) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].numpy().tobytes())
    return h.hexdigest()


def test_version_1_checkpoints_rebuild_to_the_same_outputs():
    from prunecli.surgery.equivalence import outputs, probe_batch

    expected = torch.load(V1 / "expected.pt", weights_only=True)
    assert torch.load(V1 / "resnet20-compressed.pt", weights_only=True)["version"] == 1
    ck = load_checkpoint(V1 / "resnet20-compressed.pt")
    assert ck.converters == [] and ck.structure and [e["command"] for e in ck.lineage] == ["prune", "compress"]
    assert torch.equal(outputs(rebuild_model(ck), probe_batch(ck.model, 4)), expected["r20_compressed_probe4"])


def test_version_1_run_resumes_bit_identically(cli, tmp_path):
    expected = torch.load(V1 / "expected.pt", weights_only=True)
    run = tmp_path / "run.pt"
    run.write_bytes((V1 / "lenet300_100-train.pt").read_bytes())
    assert load_checkpoint(run).resume["callbacks"]["best"]["epoch"] == 2  # the v1 best record, upgraded
    # the expected bits were produced with 2 intra-op threads (float sums split differently
    # with another count): pin it, whatever the suite runs with (one per xdist worker)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = cli("train", "--resume", run, "--epochs", "3")
    finally:
        torch.set_num_threads(threads)
    assert r.code == 0, r.stderr
    ck = load_checkpoint(run)
    assert _weights_sha256(ck.state_dict) == expected["lenet_resumed_epoch3_sha256"]
    assert ck.metrics["top1"] == expected["lenet_resumed_epoch3_top1"] and ck.metrics["epoch"] == 3
    assert torch.load(run, weights_only=True)["version"] == 2  # rewritten in the current format


# -- the model-building pipeline --------------------------------------------------------


def test_converters_run_between_the_spec_and_the_weights(tmp_path):
    """spec -> converters -> structure -> state dict: a converter recorded by name rebuilds."""
    from prunecli.models import build_model, register_converter
    from prunecli.models.build import _CONVERTERS

    @register_converter("test-double-head")
    def double_head(model, *, factor: int):
        model.fc = torch.nn.Linear(model.fc.in_features, model.fc.out_features * factor)
        return model

    try:
        spec = ModelSpec("resnet20", 3, 10, 8)
        model = double_head(build_model(spec), factor=2)
        ckpt = Checkpoint(model=spec, state_dict=model.state_dict(), converters=[{"name": "test-double-head", "args": {"factor": 2}}])
        again = rebuild_model(load_checkpoint(save_checkpoint(ckpt, tmp_path / "c.pt")))
        assert again.fc.out_features == 20
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
        unknown = Checkpoint(model=spec, state_dict={}, converters=[{"name": "no-such-converter", "args": {}}])
        with pytest.raises(CheckpointError, match="no-such-converter"):
            rebuild_model(load_checkpoint(save_checkpoint(unknown, tmp_path / "u.pt")))
    finally:
        _CONVERTERS._entries.pop("test-double-head", None)


def test_derive_writes_one_lineage_entry_and_carries_the_rest(tmp_path, tiny_base):
    from prunecli.checkpoint import derive

    parent = load_checkpoint(tiny_base)
    child = derive(parent, "prune", {"rate": 0.5}, state_dict=parent.state_dict, metrics={"x": 1})
    assert [e["command"] for e in child.lineage] == ["train", "prune"]
    assert child.lineage[-1]["parent"] == str(tiny_base) and child.lineage[-1]["options"] == {"rate": 0.5}
    assert child.model == parent.model and child.dataset == parent.dataset and child.resume is None and child.metrics == {"x": 1}


def test_enum_options_are_stored_as_their_values():
    """A str-valued enum (the options' choices) must be stored as "channel", not "Granularity.channel"."""
    from prunecli.checkpoint import to_plain
    from prunecli.config.prune import Granularity, Scope

    assert to_plain({"granularity": Granularity.channel, "scope": [Scope.global_]}) == {"granularity": "channel", "scope": ["global"]}


def test_sha256_file_follows_rewrites_of_the_same_size(tmp_path):
    import hashlib
    import os
    import time

    from prunecli.checkpoint import sha256_file

    f = tmp_path / "x.bin"
    for content in (b"a" * 64, b"b" * 64, b"c" * 64):  # same size, rewritten within the file clock's tick
        f.write_bytes(content)
        assert sha256_file(f) == hashlib.sha256(content).hexdigest()
    old = time.time() - 60
    os.utime(f, (old, old))  # an old file: its hash is remembered
    assert sha256_file(f) == hashlib.sha256(b"c" * 64).hexdigest()
    f.write_bytes(b"d" * 64)  # a rewrite changes mtime and ctime: hashed again
    assert sha256_file(f) == hashlib.sha256(b"d" * 64).hexdigest()
