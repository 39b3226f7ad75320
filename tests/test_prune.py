"""prune and compress: paper settings, every model x criterion, options, errors, equivalence."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from conftest import one_line_error

from prunecli.checkpoint import load_checkpoint, save_checkpoint
from prunecli.stages.checkpoints import rebuild_model
from prunecli.errors import PruneCliError
from prunecli.criteria import criterion_class, list_criteria
from prunecli.metrics.complexity import count_complexity
from prunecli.models import list_models
from prunecli.surgery.equivalence import outputs, probe_batch
from pruning_helpers import compress, make_checkpoint, prune


def conv_linear_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters(recurse=False))


def to_printed(value: float, printed: float) -> float:
    """Round ``value`` to the significant digits the paper printed ``printed`` with."""
    mantissa = f"{printed:.6e}".split("e")[0].rstrip("0").rstrip(".")
    digits = len(mantissa.replace(".", "").replace("-", ""))
    return float(f"{value:.{digits - 1}e}")


# -- Li et al., "Pruning Filters for Efficient ConvNets", Table 1/2 ---------------------------
# MACs are conv + linear; params are conv + linear weights (the paper leaves BatchNorm out:
# with it, ResNet-110's 1,727,962 would print as 1.73e6, not 1.72e6). All ten absolute
# numbers reproduce to the printed digits. The reduction percentages mix rounding and
# truncation (9.36% -> "9.4", but 38.66% -> "38.6", 13.77% -> "13.7"), so they are
# asserted within one unit of the last printed digit.
SKIP_B56 = ["16", "18", "20", "34", "38", "54"]
LI_ET_AL = {
    "vgg16-A": ("vgg16", dict(layer_rate=[("1", 0.5), ("8-13", 0.5)]), 2.06e8, 34.2, 5.4e6, 64.0),
    "resnet56-A": ("resnet56", dict(rate=0.1, skip=["layer*.conv2", "16", "20", "38", "54"]), 1.12e8, 10.4, 7.7e5, 9.4),
    "resnet56-B": (
        "resnet56",
        dict(layer_rate=[("layer1.*", 0.6), ("layer2.*", 0.3), ("layer3.*", 0.1)], skip=["layer*.conv2", *SKIP_B56]),
        9.09e7, 27.6, 7.3e5, 13.7,
    ),
    "resnet110-A": ("resnet110", dict(layer_rate=[("layer1.*", 0.5)], skip=["layer*.conv2", "36"]), 2.13e8, 15.9, 1.68e6, 2.3),
    "resnet110-B": (
        "resnet110",
        dict(layer_rate=[("layer1.*", 0.5), ("layer2.*", 0.4), ("layer3.*", 0.3)], skip=["layer*.conv2", "36", "38", "74"]),
        1.55e8, 38.6, 1.16e6, 32.4,
    ),
}


@pytest.mark.parametrize("setting", list(LI_ET_AL))
def test_li_et_al_macs_and_params(tmp_path, setting):
    model, sel, macs, macs_red, params, params_red = LI_ET_AL[setting]
    src = make_checkpoint(tmp_path / "base.pt", model)
    prune(src, tmp_path / "m.pt", **sel)
    report = compress(tmp_path / "m.pt", tmp_path / "c.pt")
    base, small = rebuild_model(load_checkpoint(src)), rebuild_model(load_checkpoint(tmp_path / "c.pt"))
    p0, p1 = conv_linear_params(base), conv_linear_params(small)
    assert to_printed(report.macs_after, macs) == pytest.approx(macs)
    assert to_printed(p1, params) == pytest.approx(params)
    assert abs(100 * (1 - report.macs_after / report.macs_before) - macs_red) <= 0.1 + 1e-9
    assert abs(100 * (1 - p1 / p0) - params_red) <= 0.1 + 1e-9


def test_li_et_al_prunes_only_first_convs_with_int_kept_counts(tmp_path):
    src = make_checkpoint(tmp_path / "base.pt", "resnet56")
    r = prune(src, tmp_path / "m.pt", rate=0.1, skip=["layer*.conv2", "16", "20", "38", "54"])
    rows = {row.name: row for row in r.rows}
    assert rows["layer1.0.conv1"].after == int(16 * 0.9) == 14
    assert rows["layer2.1.conv1"].after == int(32 * 0.9) == 28
    assert rows["layer3.1.conv1"].after == int(64 * 0.9) == 57
    # layer 16 is the first conv of layer1.7 (stem = 1, block b's first conv = 2b)
    assert rows["layer1.7.conv1"].status == "skipped" and rows["layer1.7.conv1"].after == 16
    assert rows["conv1"].status == "skipped"  # the stage-1 residual group (with layer1.*.conv2)
    assert rows["fc"].status == "protected"


# -- every model x every channel criterion: masked == compressed --------------------------

SMALL = {  # small variants keep the matrix fast; the architecture families are what matter
    "resnext29": dict(cardinality=2, base_width=4),
    "mobilenetv2": dict(width_mult=0.5),
}
CHANNEL_METHODS = [m for m in list_criteria() if m != "magnitude" and not getattr(criterion_class(m), "reconstructs", False) and not criterion_class(m).learned]  # thinet, cp: tests/test_reconstruction.py


def _size(model: str) -> int:
    return 28 if model == "lenet300_100" else 16


# resnet50 is torchvision's ResNet-50 (its families run in tests/test_torchvision.py) at 23M
# params: every criterion on it costs half a minute; tests/test_core.py runs them all on it once
MATRIX_MODELS = [m for m in list_models() if m != "resnet50"]


@pytest.mark.parametrize("method", CHANNEL_METHODS)
@pytest.mark.parametrize("model", MATRIX_MODELS)
def test_every_model_and_criterion(tmp_path, model, method):
    size = _size(model)
    src = make_checkpoint(tmp_path / "base.pt", model, image_size=size, **SMALL.get(model, {}))
    try:
        r = prune(src, tmp_path / "m.pt", method=method, rate=0.3, calib_batches=1, batch_size=4, seed=1)
    except PruneCliError as e:
        if method == "slimming" and model in ("conv2", "conv4", "conv6", "conv8", "lenet300_100"):
            assert "cannot score" in str(e)  # no BatchNorm: said in one line
            return
        raise
    assert r.macs_after < r.macs_before and r.params_after < r.params_before
    c = compress(tmp_path / "m.pt", tmp_path / "c.pt")
    assert c.macs_after == r.macs_after and c.params_after == r.params_after  # prune predicted compress exactly
    masked, small = load_checkpoint(tmp_path / "m.pt"), load_checkpoint(tmp_path / "c.pt")
    spec = masked.model
    probe = probe_batch(spec, 4)
    a, b = outputs(rebuild_model(masked), probe), outputs(rebuild_model(small), probe)  # both from files alone
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)
    assert sum(p.numel() for p in rebuild_model(small).parameters()) == c.params_after


# -- options ------------------------------------------------------------------------------


def test_layer_rates_list_is_padded_with_rate_and_skip_takes_numbers(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "conv4")
    r = prune(src, tmp_path / "m.pt", rate=0.25, layer_rates=[0.5, 0.75], skip=["4"])
    after = {row.name: row.after for row in r.rows}
    assert after["features.0"] == 32 and after["features.2"] == 16  # the list, in layer order
    assert after["features.5"] == 96  # padded with --rate 0.25: int(128 * 0.75)
    assert after["features.7"] == 128  # layer 4 skipped
    assert after["classifier.0"] == 192 and after["classifier.4"] == 10  # output protected


def test_protect_head_and_none(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "conv4")
    head = {row.name: row for row in prune(src, tmp_path / "h.pt", rate=0.5, protect="head").rows}
    assert head["classifier.0"].status == head["classifier.2"].status == "protected"
    assert head["features.0"].after == 32
    none = {row.name: row for row in prune(src, tmp_path / "n.pt", rate=0.5, protect="none").rows}
    assert none["classifier.4"].after == 5  # pruning class outputs only when asked to


def test_round_to(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20")
    r = prune(src, tmp_path / "m.pt", rate=0.3, round_to=8)
    assert all(row.after % 8 == 0 for row in r.rows if row.status == "prune")
    g = prune(src, tmp_path / "g.pt", rate=0.3, round_to=8, scope="global")
    assert all(row.after % 8 == 0 for row in g.rows if row.status == "prune")


def test_global_scope_never_empties_a_layer(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20")
    ck = load_checkpoint(src)
    ck.state_dict["layer1.0.bn1.weight"] = torch.full((16,), 1e-6)  # this layer scores lowest everywhere
    save_checkpoint(ck, src)
    r = prune(src, tmp_path / "m.pt", method="slimming", rate=0.5, scope="global")
    rows = {row.name: row for row in r.rows}
    assert rows["layer1.0.conv1"].after == 1  # emptied but for one channel, never zero
    eligible = [row for row in r.rows if row.status == "prune"]
    removed = sum(row.before - row.after for row in eligible) / sum(row.before for row in eligible)
    assert removed == pytest.approx(0.5, abs=0.01)
    assert len({row.after / row.before for row in eligible}) > 2  # global: rates differ per layer
    capped = prune(src, tmp_path / "c.pt", method="slimming", rate=0.5, scope="global", max_layer_rate=0.6)
    assert all(row.after >= math.ceil(row.before * 0.4) for row in capped.rows if row.status == "prune")


def test_target_macs_finds_the_rate(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20", image_size=16)
    r = prune(src, tmp_path / "m.pt", target_macs=0.5)
    achieved = 1 - r.macs_after / r.macs_before
    assert 0.5 <= achieved <= 0.56, achieved
    c = compress(tmp_path / "m.pt", tmp_path / "c.pt")
    assert c.macs_after == r.macs_after


def test_fpgm_mix_selects_by_norm_then_distance(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "conv2", image_size=16)
    only_rows = prune(src, tmp_path / "a.pt", method="geomedian", rate=0.4).rows
    mix = prune(src, tmp_path / "b2.pt", method="geomedian", rate=0.4, mix_norm=0.25)
    # the reference's counts: int(C * r) by distance; FPGM-mix rounds its shares down separately
    for row, mixed in zip(only_rows, mix.rows):
        if row.status == "prune":
            assert row.after == row.before - int(row.before * 0.4 + 1e-9), row.name
            assert mixed.after == row.before - int(row.before * 0.1 + 1e-9) - int(row.before * 0.3 + 1e-9), row.name
    a, b = load_checkpoint(tmp_path / "a.pt").masks, load_checkpoint(tmp_path / "b2.pt").masks
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the norm share picks other filters somewhere


def test_weight_level_magnitude_keeps_shapes_and_compress_says_so(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20", image_size=16)
    r = prune(src, tmp_path / "m.pt", method="magnitude", granularity="weight", rate=0.5)
    ck = load_checkpoint(tmp_path / "m.pt")
    w = ck.state_dict["layer2.0.conv1.weight"]
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert "fc.weight" not in ck.masks  # output layer protected
    c = compress(tmp_path / "m.pt", tmp_path / "c.pt")
    assert c.macs_after == c.macs_before and c.masked_weights_left == r.weights_masked
    assert any("nothing removed" in n for n in c.notes)


def test_weight_level_removes_channels_that_became_entirely_zero(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "conv2", image_size=8)
    ck = load_checkpoint(src)
    ck.state_dict["features.0.weight"][3] *= 1e-6  # filter 3 of the first conv: all tiny
    save_checkpoint(ck, src)
    prune(src, tmp_path / "m.pt", method="magnitude", granularity="weight", layer_rate=[("features.0", 0.2)], rate=0.0)
    c = compress(tmp_path / "m.pt", tmp_path / "c.pt")
    assert ("features.0", 64, 63) in c.removed  # the dead filter went, with the next conv's inputs
    small = load_checkpoint(tmp_path / "c.pt")
    left = small.masks["features.0.weight"]
    assert left.shape[0] == 63 and (~left).sum() > 0  # the other masked weights stay masked, re-indexed
    probe = probe_batch(small.model, 4)
    assert torch.allclose(outputs(rebuild_model(load_checkpoint(tmp_path / "m.pt")), probe), outputs(rebuild_model(small), probe), atol=1e-5)


def test_iterative_prune_and_compress_twice(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20", image_size=16)
    prune(src, tmp_path / "m1.pt", rate=0.25)
    compress(tmp_path / "m1.pt", tmp_path / "c1.pt")
    prune(tmp_path / "c1.pt", tmp_path / "m2.pt", rate=0.25)
    c2 = compress(tmp_path / "m2.pt", tmp_path / "c2.pt")
    final = load_checkpoint(tmp_path / "c2.pt")
    assert [e["command"] for e in final.lineage] == ["prune", "compress", "prune", "compress"]
    model = rebuild_model(final)  # both structures replayed in order
    assert model.layer1[0].conv1.out_channels == int(int(16 * 0.75) * 0.75)
    assert count_complexity(model, (3, 16, 16)).macs == c2.macs_after


def test_prune_compress_flag_writes_the_compressed_model(tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20", image_size=16)
    r = prune(src, tmp_path / "m.pt", rate=0.4)
    d = prune(src, tmp_path / "d.pt", rate=0.4, compress=True)
    assert d.compressed and d.max_abs_diff is not None and d.max_abs_diff < 1e-4
    direct = load_checkpoint(tmp_path / "d.pt")
    assert direct.structure and not direct.masks
    assert count_complexity(rebuild_model(direct), (3, 16, 16)).macs == r.macs_after


LN_NET = (
    "import torch.nn as nn\n"
    "class LN2d(nn.LayerNorm):  # ConvNeXt-style LayerNorm over channels\n"
    "    def forward(self, x):\n"
    "        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)\n"
    "def build(in_channels=3, num_classes=10):\n"
    "    return nn.Sequential(nn.Conv2d(in_channels, 16, 3), LN2d(16), nn.GELU(), nn.Conv2d(16, 8, 3),\n"
    "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
)


@pytest.fixture
def ln_net(tmp_path, monkeypatch):
    code = tmp_path / "lnnet.py"
    code.write_text(LN_NET)
    monkeypatch.setenv("PRUNECLI_TRUST_CODE", "1")
    return make_checkpoint(tmp_path / "ln.pt", f"{code}:build", image_size=8)


def test_layernorm_channels_need_compress_flag(tmp_path, ln_net):
    with pytest.raises(PruneCliError, match="--compress"):
        prune(ln_net, tmp_path / "m.pt", rate=0.5)
    assert not (tmp_path / "m.pt").exists()
    d = prune(ln_net, tmp_path / "d.pt", rate=0.5, compress=True)
    assert any("LayerNorm" in n for n in d.notes)
    assert rebuild_model(load_checkpoint(tmp_path / "d.pt"))[0].out_channels == 8


def test_compress_refuses_when_masked_and_compressed_differ(cli, tmp_path, ln_net):
    # hand-made masks that zero channel 3 everywhere: removing it still changes the
    # LayerNorm's statistics, so the compressed model would not compute the masked one
    ck = load_checkpoint(ln_net)
    masks = {}
    for name, shape_dim in (("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0), ("3.weight", 1)):
        m = torch.ones_like(ck.state_dict[name], dtype=torch.bool)
        m.select(shape_dim, 3).fill_(False)
        masks[name] = m
        ck.state_dict[name] = ck.state_dict[name] * m
    ck.masks = masks
    save_checkpoint(ck, tmp_path / "m.pt")
    line = one_line_error(cli("compress", tmp_path / "m.pt", "--no-latency", "-o", tmp_path / "c.pt"))
    assert "differs from the masked one" in line and "group at 0" in line and "nothing written" in line
    assert not (tmp_path / "c.pt").exists()


def test_finetune_keeps_prune_masks_and_the_result_still_compresses(cli, tmp_path):
    src = make_checkpoint(tmp_path / "b.pt", "resnet20", image_size=16)
    prune(src, tmp_path / "m.pt", method="geomedian", rate=0.4)
    r = cli("finetune", tmp_path / "m.pt", "--epochs", "1", "--lr", "0.05", "--device", "cpu", "-o", tmp_path / "ft.pt")
    assert r.code == 0, r.stderr
    ft = load_checkpoint(tmp_path / "ft.pt")
    for name, mask in ft.masks.items():
        tensor = ft.state_dict[name]
        assert torch.count_nonzero(tensor[~mask]) == 0, name  # includes the option-A shortcut gates
    assert any(n.endswith("shortcut.gate") for n in ft.masks)
    c = compress(tmp_path / "ft.pt", tmp_path / "c.pt")
    assert c.max_abs_diff < 1e-4


# -- the command line: errors and chaining --------------------------------------------------


@pytest.fixture
def base(tmp_path):
    return make_checkpoint(tmp_path / "base.pt", "resnet20", image_size=16)


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--rate", "1.0"], 2, "[0, 1)"),
        (["--rate", "-0.1"], 2, "[0, 1)"),
        (["--method", "l3", "--rate", "0.5"], 2, "geomedian"),
        (["--rate", "0.5", "--skip", "layer9.*"], 2, "matches no prunable layer"),
        (["--layer-rate", "conv9=0.5"], 2, "matches no prunable layer"),
        (["--layer-rate", "layer1.0.conv1=0.99"], 2, "would leave no channels"),
        (["--method", "geomedian", "--granularity", "weight", "--rate", "0.5"], 2, "granularity"),
        (["--rate", "0.5", "--target-macs", "0.5"], 2, "--target-macs"),
        (["--scope", "global", "--layer-rate", "layer1.*=0.5", "--rate", "0.3"], 2, "global"),
        ([], 2, "--rate"),
        (["--layer-rate", "layer1.*"], 2, "PATTERN=RATE"),
        (["--target-macs", "0.999"], 2, "at most"),
    ],
)
def test_prune_errors_are_one_line_and_write_nothing(cli, tmp_path, base, args, code, words):
    out = tmp_path / "out.pt"
    line = one_line_error(cli("prune", base, *args, "-o", out), code=code)
    assert words in line, line
    assert not out.exists()


def test_data_driven_criterion_without_data(cli, tmp_path):
    src = make_checkpoint(tmp_path / "nodata.pt", "resnet20", image_size=16, dataset=False)
    line = one_line_error(cli("prune", src, "--method", "taylor", "--rate", "0.3", "-o", tmp_path / "o.pt"), 2)
    assert "calibration data" in line and "--dataset" in line
    r = cli("prune", src, "--method", "taylor", "--rate", "0.3", "--dataset", "synthetic", "--calib-batches", "1", "-o", tmp_path / "o.pt")
    assert r.code == 0, r.stderr


def test_slimming_without_batchnorm(cli, tmp_path):
    src = make_checkpoint(tmp_path / "c.pt", "conv4")
    line = one_line_error(cli("prune", src, "--method", "slimming", "--rate", "0.3", "-o", tmp_path / "o.pt"))
    assert "slimming" in line


def test_compress_json_and_table(cli, tmp_path, base):
    prune(base, tmp_path / "m.pt", rate=0.5)
    r = cli("compress", tmp_path / "m.pt", "--json", "--repeats", "2", "-o", tmp_path / "c.pt")
    assert r.code == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("macs_before", "macs_after", "params_before", "params_after", "latency_ms_before", "latency_ms_after", "max_abs_diff", "output"):
        assert key in d
    assert d["output"] == str(tmp_path / "c.pt") and d["macs_after"] < d["macs_before"] and d["max_abs_diff"] < 1e-4
    t = cli("compress", tmp_path / "m.pt", "--repeats", "2", "-o", tmp_path / "c2.pt")
    assert t.stdout == f"{tmp_path / 'c2.pt'}\n" and "MACs" in t.stderr and "max |masked - compressed|" in t.stderr
    p = cli("prune", base, "--method", "l1", "--rate", "0.5", "-o", tmp_path / "x.pt")
    assert p.stdout == f"{tmp_path / 'x.pt'}\n" and "layer1.0.conv1" in p.stderr and "after compress" in p.stderr


def test_real_pipe_prune_compress_finetune(tmp_path):
    src = make_checkpoint(tmp_path / "base.pt", "resnet20", image_size=16)
    py = sys.executable
    cmd = (
        f"{py} -m prunecli prune {src} --method l1 --rate 0.5 "
        f"| {py} -m prunecli compress - --no-latency "
        f"| {py} -m prunecli finetune - --epochs 1 --device cpu "
        f"| {py} -m prunecli evaluate - --json --no-latency --no-layers"
    )
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["stage"] == "finetune" and result["checkpoint"].endswith("base.pruned.compressed.ft.pt")
    base_macs = count_complexity(rebuild_model(load_checkpoint(src)), (3, 16, 16)).macs
    assert result["macs"] < 0.5 * base_macs


def test_compressed_checkpoint_reloads_in_a_fresh_process(tmp_path, base):
    prune(base, tmp_path / "m.pt", rate=0.5)
    compress(tmp_path / "m.pt", tmp_path / "c.pt")
    code = (
        "import torch, sys\n"
        "from prunecli.checkpoint import load_checkpoint\n"
        "from prunecli.stages.checkpoints import rebuild_model\n"
        "from prunecli.surgery.equivalence import outputs, probe_batch\n"
        f"ck = load_checkpoint({str(tmp_path / 'c.pt')!r})\n"
        "torch.save(outputs(rebuild_model(ck), probe_batch(ck.model, 4)), sys.argv[1])\n"
    )
    out = tmp_path / "out.t"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fresh = torch.load(out, weights_only=True)
    masked = load_checkpoint(tmp_path / "m.pt")
    assert torch.allclose(fresh, outputs(rebuild_model(masked), probe_batch(masked.model, 4)), atol=1e-5)


def test_list_methods(cli):
    r = cli("list", "methods", "--json")
    names = {d["name"] for d in json.loads(r.stdout)}
    scoring = {"l1", "l2", "geomedian", "slimming", "taylor", "lamp", "hessian", "random", "magnitude"}
    learned = {"edgepopup", "sss"}  # learn their own mask while training, each with its own algorithm
    assert names == scoring | {"thinet", "cp"} | learned
    takes = {d["name"]: d["algorithms"] for d in json.loads(r.stdout)}  # which algorithms take each
    assert takes["magnitude"] == ["gradual", "iterative", "one-shot"]  # soft re-selects filters: not single weights
    assert takes["thinet"] == takes["cp"] == ["reconstruction"]  # they refit the next layer while choosing
    assert all(takes[n] == [n] for n in learned)
    assert all(a == ["gradual", "iterative", "one-shot", "soft"] for n, a in takes.items() if n in scoring - {"magnitude"})
    algorithms = json.loads(cli("list", "algorithms", "--json").stdout)
    assert [a["name"] for a in algorithms] == sorted(["gradual", "iterative", "one-shot", "reconstruction", "soft", *learned])
    by_name = {a["name"]: a for a in algorithms}
    assert set(by_name["one-shot"]["criteria"]) == scoring and "magnitude" not in by_name["soft"]["criteria"]
    assert [a["name"] for a in algorithms if a["while_training"]] == sorted(["gradual", "iterative", "soft", *learned])
    table = cli("list", "methods").stdout
    assert "criteria" in table and "algorithms" in table and "one-shot" in table


def test_li_et_al_setting_as_a_config_file(cli, tmp_path):
    src = make_checkpoint(tmp_path / "base.pt", "resnet56")
    cfg = tmp_path / "resnet56-B.yaml"
    cfg.write_text(
        "# Li et al. 2017, ResNet-56-pruned-B: 60/30/10% of each block's first conv per stage\n"
        "method: l1\n"
        "layer-rate: ['layer1.*=0.6', 'layer2.*=0.3', 'layer3.*=0.1']\n"
        "skip: ['layer*.conv2', 16, 18, 20, 34, 38, 54]\n"
    )
    r = cli("prune", src, "--config", cfg, "-o", tmp_path / "m.pt")  # YAML integers are layer numbers
    assert r.code == 0, r.stderr
    c = cli("compress", r.path, "--json", "--no-latency", "-o", tmp_path / "c.pt")
    assert json.loads(c.stdout)["macs_after"] == 90907274  # 9.09e7, Li et al. Table 2


def test_compress_of_a_never_pruned_checkpoint_writes_nothing_unless_forced(cli, tmp_path):
    """The only saving would be the dropped optimizer state: say so rather than write a "compressed" copy."""
    src = make_checkpoint(tmp_path / "dense.pt", "conv2", image_size=8)
    out = tmp_path / "small.pt"
    r = cli("compress", src, "--no-latency", "-o", out)
    assert "nothing to remove" in one_line_error(r, 1) and not out.exists()
    forced = cli("compress", src, "--no-latency", "--force", "-o", out)
    assert forced.code == 0 and out.exists() and "nothing removed" in forced.stderr
