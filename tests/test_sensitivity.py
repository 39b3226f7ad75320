"""`prunecli sensitivity` and `prune --from-sensitivity`: what the sweep measures, writes and refuses.

Tiny models on synthetic 8x8 data, mostly a randomly initialised ResNet-20 (residual
streams, option-A shortcuts): the loss, a continuous number, tells two evaluations apart
where a top-1 near chance could not.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import one_line_error
from prunecli.checkpoint import load_checkpoint
from prunecli.cli.app import main

SWEEP = ["--device", "cpu", "--rates", "0.25,0.5,0.75"]
LAYERS = ["--layers", "conv1", "--layers", "layer1.1.conv1", "--layers", "layer2.0.conv2", "--layers", "layer3.[01].conv1"]


@pytest.fixture(scope="module")
def r20(tmp_path_factory) -> Path:
    """A randomly initialised ResNet-20 for synthetic 3x8x8 (shared, read-only)."""
    from pruning_helpers import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("r20") / "base.pt", "resnet20", image_size=8)


@pytest.fixture(scope="module")
def sweep(r20, tmp_path_factory) -> Path:
    """A sweep of five ResNet-20 units (two residual-stream units among them) at three rates."""
    out = tmp_path_factory.mktemp("sweep") / "sens"
    with pytest.MonkeyPatch.context():
        try:
            main(["sensitivity", str(r20), *SWEEP, *LAYERS, "-o", str(out)])
        except SystemExit as e:
            assert e.code in (0, None), f"the sweep failed ({e.code})"
    return out


def _rows(folder: Path) -> list[dict]:
    with open(folder / "sensitivity.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_writes_csv_json_and_plot(sweep, r20):
    rows = _rows(sweep)
    assert list(rows[0]) == ["layer", "unit", "channels", "removed", "rate", "top1", "top5", "loss", "macs"]
    base, rest = rows[0], rows[1:]
    assert base["layer"] == "" and float(base["rate"]) == 0.0 and base["removed"] == "0"
    layers = ["conv1", "layer1.1.conv1", "layer2.0.conv2", "layer3.0.conv1", "layer3.1.conv1"]
    assert [r["layer"] for r in rest] == [name for name in layers for _ in range(3)]
    assert [float(r["rate"]) for r in rest] == [0.25, 0.5, 0.75] * len(layers)
    for r in rest:
        assert 0 < int(r["removed"]) < int(r["channels"])
        assert int(r["macs"]) < int(base["macs"])  # every unit feeds a conv: its removal saves MACs
        assert 0.0 <= float(r["top1"]) <= float(r["top5"]) <= 100.0
    # keep-floor (l1's reference rule) on 16 channels: 12, 8 and 4 kept
    assert [int(r["removed"]) for r in rest[:3]] == [4, 8, 12]

    doc = json.loads((sweep / "sensitivity.json").read_text())
    assert doc["format"] == "prunecli-sensitivity" and doc["method"] == "l1" and doc["count_rule"] == "keep-floor"
    assert doc["fingerprint"]["model"]["name"] == "resnet20" and doc["rates"] == [0.25, 0.5, 0.75]
    assert ["conv1", 16] in doc["fingerprint"]["units"] and len(doc["fingerprint"]["sha256"]) == 64
    assert doc["baseline"]["top1"] == pytest.approx(float(base["top1"])) and len(doc["rows"]) == len(rest)
    assert doc["dataset"] == "synthetic" and doc["samples"] == 128
    assert (sweep / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in sweep.iterdir()) == ["sensitivity.csv", "sensitivity.json", "sensitivity.png"]  # no lock or temporaries left


@pytest.mark.parametrize("layer, rate", [("layer2.0.conv2", 0.5), ("layer3.1.conv1", 0.75)])
def test_a_sweep_row_is_prune_layer_rate_then_evaluate(cli, sweep, r20, tmp_path, layer, rate):
    """Pruning unit U at rate r in the sweep measures `prune --layer-rate U=r` + `evaluate`."""
    row = next(r for r in _rows(sweep) if r["layer"] == layer and float(r["rate"]) == rate)
    pruned = cli("prune", r20, "--method", "l1", "--rate", "0", "--layer-rate", f"{layer}={rate}", "-o", tmp_path / "p.pt").path
    ev = cli("evaluate", pruned, "--json", "--no-latency", "--device", "cpu")
    assert ev.code == 0, ev.stderr
    measured = json.loads(ev.stdout)
    assert float(row["top1"]) == pytest.approx(measured["top1"], abs=1e-4)
    assert float(row["top5"]) == pytest.approx(measured["top5"], abs=1e-4)
    assert float(row["loss"]) == pytest.approx(measured["loss"], rel=1e-4)
    assert int(row["macs"]) == load_checkpoint(pruned).metrics["macs_after_compress"]


def test_replaying_the_unpruned_prefix_changes_no_number(cli, sweep, r20, tmp_path):
    """--replay (the default) reuses activations before the swept layer; --no-replay recomputes them: same bits."""
    layers = ["--layers", "layer2.0.conv2", "--layers", "layer3.[01].conv1"]
    res = cli("sensitivity", r20, *SWEEP, *layers, "--no-replay", "-o", tmp_path / "full")
    assert res.code == 0, res.stderr
    replayed = json.loads((sweep / "sensitivity.json").read_text())
    full = json.loads((tmp_path / "full" / "sensitivity.json").read_text())
    assert not any(n.startswith("--replay") for n in replayed["notes"])  # the cache was on
    assert full["baseline"] == replayed["baseline"]
    mine = {(r["layer"], r["rate"]): r for r in replayed["rows"]}
    assert len(full["rows"]) == 9
    for r in full["rows"]:
        assert mine[(r["layer"], r["rate"])] == r  # every field, to the last bit


def _pruner(path: Path, method: str = "l1"):
    from prunecli.config import PruneConfig
    from prunecli.stages.checkpoints import load_model
    from prunecli.stages.prune import criterion_for, pruner_for, with_channel_selection

    cfg = PruneConfig(method=method, rate=0.0, device="cpu")
    criterion = criterion_for(cfg)
    ckpt, model = load_model(path)
    ckpt, model = with_channel_selection(ckpt, model, cfg, criterion)
    return pruner_for(cfg, criterion, model, ckpt.model, torch.device("cpu")), model


def test_the_model_is_restored_bit_identically_after_the_sweep(r20):
    from prunecli.metrics.complexity import count_complexity
    from prunecli.stages.sensitivity import masks_applied, swept_units, unit_plan
    from prunecli.surgery.group_masks import GroupMasker

    pruner, model = _pruner(r20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        out_before = model(x)
    units, _ = swept_units(pruner.plan(0.0), [])
    masker = GroupMasker(pruner, count_complexity(model, (3, 8, 8)).macs)
    changed = 0
    for u in units:
        (p,) = unit_plan(pruner, pruner.selection, u, 0.5).pruned
        removal = masker.remove(u, p.prune)
        with masks_applied(model, removal.masks):
            with torch.no_grad():
                changed += not torch.equal(model(x), out_before)
    assert changed == len(units)  # every mask did something
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    with torch.no_grad():
        assert torch.equal(model(x), out_before)


@pytest.mark.parametrize(
    "model, kwargs, method",
    [
        ("resnet20", {}, "l1"),  # option-A shortcuts: a routing layer with a maskable gate
        ("mobilenetv2", {}, "l2"),  # depthwise convs: in and out channels in one group
        ("densenet40", {"depth": 7}, "l1"),  # concatenations
        ("preresnet164", {"depth": 11}, "slimming"),  # channel-selection layers (--stream-bn select)
    ],
)
def test_group_masks_and_macs_equal_the_pruners_full_copy(tmp_path, model, kwargs, method):
    """GroupMasker (one traced graph, copies of single layers) finds what Pruner.mask finds on a fresh trace."""
    from pruning_helpers import make_checkpoint

    from prunecli.metrics.complexity import count_complexity
    from prunecli.stages.sensitivity import swept_units, unit_plan
    from prunecli.surgery.group_masks import GroupMasker

    src = make_checkpoint(tmp_path / "m.pt", model, image_size=8, **kwargs)
    pruner, net = _pruner(src, method)
    base = count_complexity(net, (3, 8, 8)).macs
    masker = GroupMasker(pruner, base)
    units, _ = swept_units(pruner.plan(0.0), [])
    # the stem's unit and a middle one: a full copy per unit is slow on deep models
    for u in {id(u): u for u in (units[0], units[len(units) // 2])}.values():
        assert masker.exact(u) is None, u.root
        plan = unit_plan(pruner, pruner.selection, u, 0.5)
        (p,) = plan.pruned
        fast = masker.remove(u, p.prune)
        full = pruner.mask(plan, apply=False)
        assert fast.masks.keys() == full.masks.keys(), u.root
        for name, m in full.masks.items():
            assert torch.equal(fast.masks[name], m), (u.root, name)
        assert fast.macs == count_complexity(full.compressed, (3, 8, 8)).macs, u.root


def _hand_made(sweep: Path, tmp_path: Path, drops: dict[str, list[float]]) -> Path:
    """The sweep's file with its top-1 values replaced: baseline 80, 80 - drop at each rate."""
    doc = json.loads((sweep / "sensitivity.json").read_text())
    doc["baseline"]["top1"] = 80.0
    by_layer: dict[str, list[dict]] = {}
    for row in doc["rows"]:
        by_layer.setdefault(row["layer"], []).append(row)
    for layer, rows in by_layer.items():
        for row, drop in zip(rows, drops.get(layer, [50.0] * len(rows))):
            row["top1"] = 80.0 - drop
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(doc))
    return path


def test_from_sensitivity_takes_each_layers_largest_rate_within_the_drop(cli, sweep, r20, tmp_path):
    from prunecli.checkpoint import sha256_file

    drops = {
        "conv1": [0.2, 0.9, 3.0],  # 0.5
        "layer1.1.conv1": [2.0, 0.5, 4.0],  # 0.5: the largest rate within, even after a worse one
        "layer2.0.conv2": [0.0, 0.0, 1.0],  # 0.75: a drop of exactly D is within
        "layer3.0.conv1": [-1.0, 0.3, 0.7],  # 0.75: a gain counts as no drop
        "layer3.1.conv1": [1.5, 2.0, 9.0],  # nothing within: left whole
    }
    hand = _hand_made(sweep, tmp_path, drops)
    res = cli("prune", r20, "--method", "l1", "--from-sensitivity", hand, "--max-drop", "1.0", "-o", tmp_path / "p.pt")
    assert res.code == 0, res.stderr
    assert "1 of 5 swept layers lose more than 1 points at every rate" in res.stderr
    ckpt = load_checkpoint(res.path)
    used = ckpt.extra["prune"]["from_sensitivity"]
    assert used["path"] == str(hand) and used["sha256"] == sha256_file(hand) and used["max_drop"] == 1.0
    assert used["rates"] == {"conv1": 0.5, "layer1.1.conv1": 0.5, "layer2.0.conv2": 0.75, "layer3.0.conv1": 0.75}
    kept = {r["name"]: (r["before"], r["after"]) for r in ckpt.extra["prune"]["layers"]}
    assert kept["conv1"] == (16, 8) and kept["layer1.1.conv1"] == (16, 8)
    assert kept["layer2.0.conv2"] == (32, 8) and kept["layer3.0.conv1"] == (64, 16)
    assert kept["layer3.1.conv1"] == (64, 64) and kept["layer1.0.conv1"] == (16, 16)  # left whole; not swept
    assert ckpt.lineage[-1]["options"]["from-sensitivity"] == str(hand)


@pytest.fixture(scope="module")
def tiny_sweep(tiny_base, tmp_path_factory) -> Path:
    """conv2's four units (two convs, two hidden linear layers) at three rates."""
    out = tmp_path_factory.mktemp("tiny_sweep") / "sens"
    with pytest.MonkeyPatch.context():
        try:
            main(["sensitivity", str(tiny_base), *SWEEP, "-o", str(out)])
        except SystemExit as e:
            assert e.code in (0, None), f"the sweep failed ({e.code})"
    return out


def test_from_sensitivity_with_target_macs_scales_the_rates_until_the_target_is_met(cli, tiny_sweep, tiny_base, tmp_path):
    conv_a, conv_b, fc_a, _ = dict.fromkeys(r["layer"] for r in _rows(tiny_sweep)[1:])
    hand = _hand_made(tiny_sweep, tmp_path, {conv_a: [0.0, 0.5, 5.0], fc_a: [0.0, 0.0, 0.5]})  # 0.5 and 0.75; the others stay whole
    base = cli("prune", tiny_base, "--from-sensitivity", hand, "--max-drop", "1", "-o", tmp_path / "a.pt")
    assert base.code == 0, base.stderr
    m = load_checkpoint(base.path).metrics
    target = 0.7
    assert 1 - m["macs_after_compress"] / m["macs_before"] < target  # the rates within the drop remove too little: they scale up
    res = cli("prune", tiny_base, "--from-sensitivity", hand, "--max-drop", "1", "--target-macs", str(target), "-o", tmp_path / "b.pt")
    assert res.code == 0, res.stderr
    ckpt = load_checkpoint(res.path)
    assert 1 - ckpt.metrics["macs_after_compress"] / ckpt.metrics["macs_before"] >= target
    used = ckpt.extra["prune"]["from_sensitivity"]
    assert used["scale"] > 1 and set(used["rates"]) == {conv_a, fc_a}
    # one factor for all: each rate is its swept one times the scale, capped where a layer keeps one channel
    assert used["rates"][conv_a] == pytest.approx(min(0.5 * used["scale"], 63 / 64), abs=1e-6)
    assert used["rates"][fc_a] == pytest.approx(min(0.75 * used["scale"], 255 / 256), abs=1e-6)
    kept = {r["name"]: r["after"] for r in ckpt.extra["prune"]["layers"]}
    assert kept[conv_b] == 64 and kept[conv_a] < 64


def _nothing_written(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize(
    "args, words",
    [
        (["--rates", "0.5:1.2:0.1"], "--rates '0.5:1.2:0.1': STOP 1.2 is outside [0, 1)"),
        (["--rates", "0.9:0.1:0.1"], "START <= STOP"),
        (["--rates", "0.1:0.5"], "expected START:STOP:STEP"),
        (["--rates", "a,b"], "expected START:STOP:STEP"),
        (["--rates", "-0.1,0.5"], "outside [0, 1)"),
        (["--rates", "0"], "no rate above 0"),
        (["--layers", "nothing.here*"], "--layers pattern 'nothing.here*' matches no prunable layer"),
        (["--layers", "fc"], "--layers pattern 'fc' matches no prunable layer"),  # the protected output layer
    ],
)
def test_sweep_bad_input_is_one_line_and_writes_nothing(cli, r20, tmp_path, args, words):
    out = tmp_path / "sens"
    line = one_line_error(cli("sensitivity", r20, "--device", "cpu", *args, "-o", out), code=2)
    assert words in line
    assert not out.exists()


def test_sweep_refuses_a_non_empty_folder_unless_overwrite(cli, tmp_path, tiny_base):
    out = tmp_path / "sens"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    line = one_line_error(cli("sensitivity", tiny_base, "--device", "cpu", "--rates", "0.5", "-o", out), code=2)
    assert "is not empty; pass --overwrite" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in one_line_error(cli("sensitivity", tiny_base, "--device", "cpu", "-o", tmp_path / "file"), code=2)
    res = cli("sensitivity", tiny_base, "--device", "cpu", "--rates", "0.5", "-o", out, "--overwrite")
    assert res.code == 0, res.stderr
    assert res.path == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "sensitivity.csv", "sensitivity.json", "sensitivity.png"]
    assert len(_rows(out)) == 1 + 4  # the baseline; conv2's two convs and its head's two hidden linear layers


def test_from_sensitivity_bad_input_is_one_line_and_writes_nothing(cli, sweep, r20, tiny_base, tmp_path):
    out = tmp_path / "p.pt"
    good = sweep / "sensitivity.json"

    def refused(*args, code=1) -> str:
        line = one_line_error(cli("prune", *args, "-o", out), code=code)
        assert not out.exists()
        return line

    line = refused(tiny_base, "--from-sensitivity", good, "--max-drop", "1")
    assert "measured another architecture" in line and "'resnet20'" in line and "'conv2'" in line
    small = cli("prune", r20, "--rate", "0.5", "--compress", "-o", tmp_path / "small.pt").path
    assert "conv1 had 16 channels there, 8 here" in refused(small, "--from-sensitivity", good, "--max-drop", "1")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "prunecli-sensitivity", "rows": [')
    assert "malformed JSON (line 1" in refused(r20, "--from-sensitivity", bad, "--max-drop", "1")
    bad.write_text('{"rows": []}')
    assert "not a prunecli sensitivity file" in refused(r20, "--from-sensitivity", bad, "--max-drop", "1")
    doc = json.loads(good.read_text())
    doc["rows"][0]["rate"] = 1.5
    bad.write_text(json.dumps(doc))
    assert "rows[0].rate 1.5 outside [0, 1)" in refused(r20, "--from-sensitivity", bad, "--max-drop", "1")
    del doc["fingerprint"]
    bad.write_text(json.dumps(doc))
    assert "missing 'fingerprint'" in refused(r20, "--from-sensitivity", bad, "--max-drop", "1")
    assert "no such file" in refused(r20, "--from-sensitivity", tmp_path / "none.json", "--max-drop", "1")
    assert "needs --max-drop" in refused(r20, "--from-sensitivity", good, code=2)
    assert "drop --rate" in refused(r20, "--from-sensitivity", good, "--max-drop", "1", "--rate", "0.5", code=2)
    assert "needs --from-sensitivity" in refused(r20, "--max-drop", "1", "--rate", "0.5", code=2)
    hand = _hand_made(sweep, tmp_path, {})  # every layer loses 50 points
    assert "no swept layer stays within it" in refused(r20, "--from-sensitivity", hand, "--max-drop", "1", code=2)


@pytest.mark.slow
def test_torchrun_two_processes_measure_what_one_does(tmp_path, tiny_base):
    """Each rank evaluates its stride of the test split; the reduced numbers are one process's."""
    args = ["sensitivity", str(tiny_base), "--device", "cpu", "--rates", "0.3,0.6", "--batch-size", "32"]
    one = subprocess.run([sys.executable, "-m", "prunecli", *args, "-o", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "prunecli", *args, "-o", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.strip() == str(tmp_path / "two")  # only rank 0 prints (and writes)
    a, b = (json.loads((tmp_path / d / "sensitivity.json").read_text()) for d in ("one", "two"))
    assert b["processes"] == 2 and a["samples"] == b["samples"]
    assert len(a["rows"]) == len(b["rows"])
    for x, y in zip([a["baseline"], *a["rows"]], [b["baseline"], *b["rows"]]):
        assert (x["layer"], x["rate"], x["removed"], x["macs"]) == (y["layer"], y["rate"], y["removed"], y["macs"])
        assert x["top1"] == pytest.approx(y["top1"], abs=1e-9) and x["top5"] == pytest.approx(y["top5"], abs=1e-9)
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
