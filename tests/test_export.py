"""Inference form: BatchNorm folding on every zoo model, folded checkpoints that rebuild
(also after compression), `prunecli export` round trips (TorchScript; ONNX when onnx and
onnxruntime are installed, skipped otherwise), runtime latency, and bad input in one line."""

from __future__ import annotations

import copy
import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import prunecli.api as pc
from prunecli.checkpoint import load_checkpoint, save_checkpoint
from prunecli.errors import PruneCliError
from prunecli.models import ModelSpec, build_model, example_input, list_models
from prunecli.models.folding import CONVERTER, FoldedBatchNorm, fold_batchnorm, foldable_pairs, inference_only_reason
from prunecli.stages.checkpoints import load_model
from prunecli.stages.fold import fold_checkpoint
from prunecli.surgery.equivalence import difference, outputs, probe_batch

from conftest import final_error_line, one_line_error

# torch 2.14 marks torch.jit deprecated (in favour of torch.export); the tests use it on purpose
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning:torch.jit.*")

SMALL = {"resnext29": dict(cardinality=2, base_width=4), "mobilenetv2": dict(width_mult=0.5)}  # as tests/test_core.py
# pre-activation families: a BatchNorm that reads the residual stream or a concatenation
# (BN -> ReLU -> conv) has no conv right before it and stays
PRE_ACTIVATION = ("densenet40", "preresnet164")
_BN = torch.nn.modules.batchnorm._BatchNorm


def _spec(model: str) -> ModelSpec:
    return ModelSpec(model, 3, 10, 28 if model == "lenet300_100" else 16, SMALL.get(model, {}))


def _trained_like(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """BatchNorm statistics and affine terms away from their initial 0/1, as after training
    (a fold that mixed up mean, variance, scale or shift would pass on the initial values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


# ---------------------------------------------------------------------------- folding


@pytest.mark.parametrize("model", list_models())
def test_folding_equals_the_unfolded_model_on_every_zoo_model(model):
    spec = _spec(model)
    torch.manual_seed(0)
    net = _trained_like(build_model(spec).eval())
    probe = probe_batch(spec, 4)
    expected = outputs(net, probe)
    norms = sum(isinstance(m, _BN) for m in net.modules())
    folded_net = copy.deepcopy(net)
    folded = fold_batchnorm(folded_net, example_input(spec), name=model)
    diff, same = difference(expected, outputs(folded_net, probe))
    assert same, (model, diff)
    left = sum(isinstance(m, _BN) for m in folded_net.modules())
    assert folded + left == norms
    assert sum(isinstance(m, FoldedBatchNorm) for m in folded_net.modules()) == folded
    if model in PRE_ACTIVATION:
        assert left > 0  # the stream BatchNorms stay
        assert (folded > 0) == (model == "preresnet164"), folded  # its bottlenecks have conv -> BN inside
    else:
        assert left == 0, model  # post-activation: every BatchNorm follows its conv
    assert (inference_only_reason(folded_net) is not None) == (folded > 0)


def test_folding_reads_the_computation_not_the_module_order():
    """A BatchNorm registered after a conv but fed by something else, and a conv whose output
    is also read elsewhere, do not fold; the true conv -> BN pair does."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_a = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn_after_relu = torch.nn.BatchNorm2d(4)  # follows conv_a in module order, not in the computation
            self.conv_b = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
            self.bn_b = torch.nn.BatchNorm2d(4)
            self.conv_c = torch.nn.Conv2d(4, 4, 1, bias=False)
            self.bn_c = torch.nn.BatchNorm2d(4)  # conv_c's output is also added to the result

        def forward(self, x):
            x = self.bn_after_relu(torch.relu(self.conv_a(x)))
            x = self.bn_b(self.conv_b(x))
            c = self.conv_c(x)
            return self.bn_c(c) + c

    net = _trained_like(Net().eval())
    x = torch.randn(2, 3, 8, 8)
    assert foldable_pairs(net, x) == [("conv_b", "bn_b")]
    expected = outputs(net, x)
    assert fold_batchnorm(net, x) == 1 and isinstance(net.bn_b, FoldedBatchNorm) and isinstance(net.bn_c, _BN)
    assert difference(expected, outputs(net, x))[1]


def test_a_folded_model_refuses_training_in_one_line():
    from prunecli.config import TrainingOptions
    from prunecli.data import get_dataset
    from prunecli.engine.trainer import Trainer

    spec = ModelSpec("resnet20", 3, 10, 8)
    net = build_model(spec)
    fold_batchnorm(net, example_input(spec))
    data = get_dataset("synthetic", image_size=8)
    with pytest.raises(PruneCliError, match="inference only.*fine-tune the checkpoint from before folding"):
        Trainer(TrainingOptions(epochs=1, device="cpu")).fit(net, data)


# ---------------------------------------------------------------------------- checkpoints


def _pipeline(tmp: Path, model: str, **kwargs) -> tuple[Path, Path]:
    """(masked, compressed) checkpoints of ``model`` at 8x8, BatchNorms as if trained."""
    net = pc.build(model, image_size=8, **kwargs)
    _trained_like(net.module)
    pc.prune(net, "l1", rate=0.5)
    masked = pc.save(net, tmp / f"{model}.masked.pt")
    pc.compress(net)
    return masked, pc.save(net, tmp / f"{model}.compressed.pt")


@pytest.fixture(scope="module")
def resnet20_files(tmp_path_factory) -> tuple[Path, Path]:
    return _pipeline(tmp_path_factory.mktemp("export"), "resnet20")


@pytest.mark.parametrize("model", ["resnet20", "mobilenetv2"])
def test_a_compressed_then_folded_checkpoint_rebuilds_and_matches(model, tmp_path, resnet20_files):
    compressed = resnet20_files[1] if model == "resnet20" else _pipeline(tmp_path, model, **SMALL[model])[1]
    ckpt, net = load_model(compressed)
    probe = probe_batch(ckpt.model)
    expected = outputs(net, probe)
    folded, folded_net, count = fold_checkpoint(ckpt, net)
    assert count == sum(isinstance(m, FoldedBatchNorm) for m in folded_net.modules()) > 0
    assert folded.converters[-1]["name"] == CONVERTER and len(folded.converters[-1]["args"]["pairs"]) == count
    assert folded.structure == ckpt.structure  # the history replays after the fold converter
    path = save_checkpoint(folded, tmp_path / "folded.pt")
    again, rebuilt = load_model(path)  # spec -> converters (fold) -> compressed structure -> weights
    assert not any(isinstance(m, _BN) for m in rebuilt.modules())
    assert difference(expected, outputs(rebuilt, probe))[1]
    assert again.extra["fold_bn"]["folded"] == count


def test_fold_checkpoint_after_channel_selection_and_with_nothing_to_fold(tmp_path):
    """Converters in order (channel selection, then the fold) rebuild; a model without BatchNorm comes back as it was."""
    from prunecli.models.channel_selection import insert_channel_selection, stream_norms

    net = pc.build("preresnet164", image_size=8)
    norms = stream_norms(net.module)
    insert_channel_selection(net.module, norms=norms)
    _trained_like(net.module)
    from dataclasses import replace

    net.checkpoint = replace(net.checkpoint, converters=[{"name": "channel-selection", "args": {"norms": norms}}])
    ckpt, model = load_model(pc.save(net, tmp_path / "selected.pt"))
    probe = probe_batch(ckpt.model, 4)
    expected = outputs(model, probe)
    folded, _, count = fold_checkpoint(ckpt, model)
    assert count > 0 and [c["name"] for c in folded.converters] == ["channel-selection", CONVERTER]
    assert difference(expected, outputs(load_model(save_checkpoint(folded, tmp_path / "f.pt"))[1], probe))[1]

    plain = pc.build("conv4", image_size=8)
    ckpt, model = load_model(pc.save(plain, tmp_path / "conv4.pt"))
    same, _, count = fold_checkpoint(ckpt, model)
    assert count == 0 and same is ckpt


# ---------------------------------------------------------------------------- export


def test_export_torchscript_round_trips(cli, tmp_path, resnet20_files):
    compressed = resnet20_files[1]
    out = tmp_path / "r20.ts.pt"
    r = cli("export", compressed, "--format", "torchscript", "-o", out)
    assert r.code == 0, r.stderr
    assert r.path == out and "max |exported - checkpoint|" in r.stderr and "19 BatchNorm layers folded" in r.stderr
    ckpt, net = load_model(compressed)
    probe = probe_batch(ckpt.model, 5)  # another batch size than the trace's
    extra = {"prunecli.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    with torch.no_grad():
        assert difference(outputs(net, probe), loaded(probe))[1]
    meta = json.loads(extra["prunecli.json"])
    assert meta["input_shape"] == [3, 8, 8] and meta["batchnorm_folded"] == 19 and meta["source"] == str(compressed)

    r = cli("export", compressed, "-o", tmp_path / "r20b.pt", "--json", "--no-fold-bn")
    report = json.loads(r.stdout)
    assert r.code == 0 and report["batchnorm_folded"] == 0 and report["checked_with"] == "torchscript" and report["max_abs_diff"] < 1e-4


def test_export_onnx_round_trips_when_onnxruntime_is_installed(cli, tmp_path, resnet20_files):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    compressed = resnet20_files[1]
    out = tmp_path / "r20.onnx"
    r = cli("export", compressed, "-o", out, "--latency", "--threads", "1", "--repeats", "3", "-b", "2")  # format from the suffix
    assert r.code == 0, r.stderr
    assert r.path == out and "(onnxruntime)" in r.stderr and "latency, interleaved" in r.stderr
    ckpt, net = load_model(compressed)
    probe = probe_batch(ckpt.model, 3)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"input": probe.numpy()})[0])
    assert difference(outputs(net, probe), got)[1]
    assert json.loads(session.get_modelmeta().custom_metadata_map["prunecli"])["batchnorm_folded"] == 19


def test_export_onnx_without_onnxruntime_is_written_unchecked_with_a_note(cli, tmp_path, resnet20_files, monkeypatch):
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    r = cli("export", resnet20_files[1], "--format", "onnx", "-o", tmp_path / "m.onnx", "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["checked_with"] is None and report["max_abs_diff"] is None
    assert [n for n in report["notes"] if "onnxruntime is not installed" in n and "prunecli[onnx]" in n]
    assert (tmp_path / "m.onnx").stat().st_size == report["size"]


def test_export_bad_input_is_one_line_and_writes_nothing(cli, tmp_path, resnet20_files, monkeypatch):
    masked, compressed = resnet20_files
    line = one_line_error(cli("export", compressed, "--format", "tflite", "-o", tmp_path / "x.pt"), 2)
    assert "tflite" in line and "torchscript" in line
    line = one_line_error(cli("export", masked, "-o", tmp_path / "x.pt"))
    assert "masked, not compressed" in line and f"prunecli compress {masked}" in line
    one_line_error(cli("export", compressed, "--format", "torchscript", "-o", tmp_path / "x.onnx"), 2)
    one_line_error(cli("export", compressed, "--opset", "17", "-o", tmp_path / "x.pt"), 2)
    existing = tmp_path / "exists.pt"
    existing.write_bytes(b"keep")
    line = one_line_error(cli("export", compressed, "-o", existing), 2)
    assert "already exists" in line and "--overwrite" in line and existing.read_bytes() == b"keep"
    monkeypatch.setitem(sys.modules, "onnx", None)
    line = one_line_error(cli("export", compressed, "-o", tmp_path / "y.onnx"))
    assert "onnx package" in line and "prunecli[onnx]" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.pt"]


def test_a_folded_checkpoint_refuses_finetuning_and_exports(cli, tmp_path, resnet20_files):
    ckpt, net = load_model(resnet20_files[1])
    folded = save_checkpoint(fold_checkpoint(ckpt, net)[0], tmp_path / "folded.pt")
    line = final_error_line(cli("finetune", folded, "--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "-o", tmp_path / "ft.pt"), 1)
    assert "inference only" in line and not (tmp_path / "ft.pt").exists()
    r = cli("export", folded, "-o", tmp_path / "f.pt", "--json")
    report = json.loads(r.stdout)
    assert r.code == 0 and report["batchnorm_folded"] == 19 and report["max_abs_diff"] < 1e-4  # folded already: counted

    from dataclasses import replace

    damaged = load_checkpoint(folded)
    damaged = replace(damaged, converters=[{"name": CONVERTER, "args": {"pairs": [["nope", "bn1"]]}}])
    line = one_line_error(cli("export", save_checkpoint(damaged, tmp_path / "damaged.pt"), "-o", tmp_path / "d.pt"))
    assert "'nope' is not a conv" in line


# ---------------------------------------------------------------------------- runtime latency


def test_runtimes_are_timed_interleaved_and_files_open_in_their_runtime(tmp_path, resnet20_files):
    from prunecli.metrics.runtimes import eager_runtime, measure_runtimes, open_exported, torchscript_runtime

    ckpt, net = load_model(resnet20_files[1])
    traced = torch.jit.trace(copy.deepcopy(net), example_input(ckpt.model))
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    path = tmp_path / "m.pt"
    path.write_bytes(buf.getvalue())
    assert zipfile.is_zipfile(path) and open_exported(path).name == "torchscript"
    lats = measure_runtimes([eager_runtime(net), torchscript_runtime(buf.getvalue())], (3, 8, 8), batch_size=2, repeats=3, warmup=1, threads=1)
    assert [lat.runs for lat in lats] == [3, 3] and all(lat.median_ms > 0 and lat.threads == 1 for lat in lats)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(PruneCliError):
        open_exported(tmp_path / "junk.onnx")


# ---------------------------------------------------------------------------- compress --fold-bn


def test_compress_fold_bn_writes_a_folded_compressed_file_that_matches(cli, tmp_path, resnet20_files):
    masked = resnet20_files[0]
    plain = cli("compress", masked, "--no-latency", "--json", "-o", tmp_path / "plain.pt")
    folded = cli("compress", masked, "--no-latency", "--fold-bn", "--json", "-o", tmp_path / "folded.pt")
    assert plain.code == 0 and folded.code == 0
    report = json.loads(folded.stdout)
    assert any("folded 19 BatchNorm" in n and "inference-only" in n for n in report["notes"])
    ckpt, net = load_model(tmp_path / "folded.pt")
    _, unfolded = load_model(tmp_path / "plain.pt")
    assert not any(isinstance(m, _BN) for m in net.modules())
    probe = probe_batch(ckpt.model)
    assert difference(outputs(unfolded, probe), outputs(net, probe))[1]
    assert ckpt.extra["fold_bn"]["folded"] == 19 and ckpt.metrics["params"] == report["params_after"]
    line = final_error_line(cli("finetune", tmp_path / "folded.pt", "--dataset", "synthetic", "--epochs", "1", "-o", tmp_path / "ft.pt"), 1)
    assert "inference only" in line and not (tmp_path / "ft.pt").exists()
    # folding a dense file is worth writing (no --force); block by block refuses the flag in one line
    assert cli("compress", tmp_path / "plain.pt", "--no-latency", "--fold-bn", "-o", tmp_path / "again.pt").code == 0
    line = one_line_error(cli("compress", masked, "--block-by-block", "--method", "l1", "--rate", "0.5", "--fold-bn", "-o", tmp_path / "b.pt"), 2)
    assert "--fold-bn" in line and not (tmp_path / "b.pt").exists()


# ---------------------------------------------------------------------------- evaluate --runtime


def test_evaluate_runtime_times_the_deployed_model_and_refuses_a_missing_runtime(cli, tmp_path, resnet20_files, monkeypatch):
    masked, compressed = resnet20_files
    for runtime in ("torchscript", "eager"):
        r = cli("evaluate", masked, compressed, "--dataset", "synthetic", "--runtime", runtime, "--repeats", "2", "--threads", "1", "-b", "2", "--json", "--no-layers")
        assert r.code == 0, r.stderr
        rows = json.loads(r.stdout)
        assert all(row["latency"]["runtime"] == runtime and row["latency_ms"] > 0 for row in rows)
        assert {row["memory_format"] for row in rows} <= ({"contiguous"} if runtime == "torchscript" else {"contiguous", "channels_last"})
    r = cli("evaluate", compressed, "--dataset", "synthetic", "--runtime", "torchscript", "--repeats", "2", "-b", "2", "--no-layers")
    assert "in torchscript (the exported model, BatchNorm folded)" in r.stdout + r.stderr
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    line = one_line_error(cli("evaluate", compressed, "--runtime", "onnxruntime"))
    assert "onnxruntime" in line and "prunecli[onnx]" in line
    assert cli("evaluate", compressed, "--dataset", "synthetic", "--runtime", "onnxruntime", "--no-latency", "--no-layers").code == 0  # nothing timed: not needed


def test_deployed_runtime_matches_the_module(resnet20_files):
    from prunecli.stages.export import deployed_runtime

    ckpt, net = load_model(resnet20_files[1])
    probe = probe_batch(ckpt.model)
    expected = outputs(net, probe)
    runtime, folded = deployed_runtime(net, ckpt.model, "torchscript", threads=1)
    assert folded == 19 and runtime.name == "torchscript"
    with torch.inference_mode():
        assert difference(expected, runtime(probe))[1]
    assert any(isinstance(m, _BN) for m in net.modules())  # the module itself is left unfolded


# ---------------------------------------------------------------------------- review follow-ups


class _ConvBN(torch.nn.Module):
    """conv -> BatchNorm -> pool -> linear, with a BatchNorm eps and variances chosen so a fold that
    drops or doubles eps is off by far more than float rounding."""

    def __init__(self, eps: float = 0.5, gate: bool = False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=True)
        self.bn = torch.nn.BatchNorm2d(4, eps=eps)
        self.fc = torch.nn.Linear(4, 2)
        self.gate = gate

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y)
        if self.gate:  # read without a gradient: invisible to the trace that finds foldable pairs
            z = z * (y.detach() > 0).float()
        return self.fc(torch.relu(z).mean((2, 3)))


def _conv_bn(eps: float, gate: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    net = _ConvBN(eps, gate).eval()
    with torch.no_grad():
        net.bn.running_var.copy_(torch.tensor([1e-4, 0.01, 0.3, 2.0]))  # at, below and above eps
        net.bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        net.bn.weight.copy_(torch.tensor([1.5, 0.5, -1.0, 2.0]))
        net.bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 0.2]))
    return net


@pytest.mark.parametrize("eps", [0.5, 1e-3])
def test_folding_honours_the_batchnorm_eps(eps):
    net = _conv_bn(eps)
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = net(x)
        assert fold_batchnorm(net, x[:1], name="conv-bn") == 1
        assert torch.allclose(net(x), expected, atol=1e-5, rtol=1e-4)


def test_a_fold_that_changes_outputs_is_left_unfolded_with_a_note():
    from prunecli.stages.export import folded_copy

    spec = ModelSpec("gate", 3, 2, 8, {})
    for gate, folded, note in ((False, 1, None), (True, 0, "folding changed the outputs")):
        net = _conv_bn(0.5, gate)
        copy_, count, why = folded_copy(net, spec)
        assert count == folded and (why is None if note is None else note in why)
        assert isinstance(net.bn, _BN)  # the model given is never changed
        probe = probe_batch(spec)
        assert difference(outputs(net, probe), outputs(copy_, probe))[1]


def test_export_refusals_keep_stdout_clean(cli, tmp_path, resnet20_files):
    compressed = resnet20_files[1]
    line = one_line_error(cli("export", compressed, "--format", "onnx", "-o", tmp_path / "o.pt"), 2)
    assert ".pt name for an ONNX file" in line
    assert one_line_error(cli("export", compressed, "-o", tmp_path / "o.onnx", "--opset", "30"), 2)
    pytest.importorskip("onnx")
    # opset 9 cannot express the option-A shortcut's strided slice: torch prints its graph from C++ on the way out
    r = cli("export", compressed, "-o", tmp_path / "o9.onnx", "--opset", "9", "--json")
    assert r.code == 1 and r.stdout == "" and not (tmp_path / "o9.onnx").exists()


def test_compress_fold_bn_with_nothing_to_do_writes_nothing(cli, tmp_path):
    plain = pc.save(pc.build("conv4", image_size=8), tmp_path / "conv4.pt")
    line = one_line_error(cli("compress", plain, "--fold-bn", "--no-latency", "-o", tmp_path / "c.pt"))
    assert "nothing to do" in line and "nothing to fold" in line and not (tmp_path / "c.pt").exists()
