"""Latency tables, --target-latency's allocation, --round-to auto and --round-mode.

Timing is replaced by a deterministic fake timer (`fake_timer`: a cost from the layers'
MACs and the BatchNorm activations) wherever noise would make a test flaky; real timing
is scripts/bench_latency_table.py's.
"""

from __future__ import annotations

import itertools
import json
import sys

import pytest
import torch
import torch.nn as nn

from prunecli.metrics import latency_table as lt
from prunecli.metrics.latency import Latency
from prunecli.surgery.latency import allocate, make_offer, snap_width
from prunecli.surgery.plan import round_kept
from conftest import one_line_error


# -- a deterministic timer


def fake_cost(module: nn.Module, x: torch.Tensor) -> float:
    """'Milliseconds': 1e-4 per conv/linear MAC, 1e-3 per BatchNorm output element, 0.05 per layer call."""
    total = [0.0]

    def conv(m, inp, out):
        w = m.weight
        total[0] += 1e-4 * out.numel() * w[0].numel() + 0.05

    def bn(m, inp, out):
        total[0] += 1e-3 * out.numel()

    hooks = []
    mods = list(module.modules())
    for m in mods:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(conv))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(bn))
    try:
        with torch.no_grad():
            module.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def fake_timer(runnables, **kwargs):
    out = []
    for r in runnables:
        ms = fake_cost(r.module, r.input)
        out.append(Latency(ms, "contiguous", int(r.input.shape[0]), 5, ms, ms, ms, ms, kwargs.get("threads") or 1, "cpu", None))
    return out


@pytest.fixture
def fake_timing(monkeypatch, tmp_path):
    monkeypatch.setattr(lt, "time_runnables", fake_timer)
    # the fake cost is linear in the widths, without SIMD blocks: no staircase to read
    monkeypatch.setattr(lt, "simd_block", lambda device: 1)
    monkeypatch.setenv("PRUNECLI_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- hand-made tables


def hand_table(ms_a, ms_ab, ms_b, width=8) -> lt.LatencyTable:
    """Units A and B of ``width`` channels: L1 (3 -> A), L2 (A -> B), L3 (B -> 10); ms_* are functions of the widths."""
    grid = list(range(1, width + 1))
    c1 = lt.Config("conv", {"n": 1, "groups": 1}, 3, width, [3], grid, [[ms_a(o) for o in grid]])
    c2 = lt.Config("conv", {"n": 2, "groups": 1}, width, width, grid, grid, [[ms_ab(i, o) for o in grid] for i in grid])
    c3 = lt.Config("linear", {"n": 3}, width, 10, grid, [10], [[ms_b(i)] for i in grid])
    layers = [
        lt.Layer("l1", "c1", None, "A", 3, width),
        lt.Layer("l2", "c2", "A", "B", width, width),
        lt.Layer("l3", "c3", "B", None, width, 10),
    ]
    table = lt.LatencyTable(
        key={"model": "hand"}, layers=layers, configs={"c1": c1, "c2": c2, "c3": c3}, units={"A": width, "B": width},
        unit_grids={"A": grid, "B": grid}, dense_ms=0.0, rest_ms=0.0,
    )
    table.dense_ms = table.predict({})
    return table


SCORES_A = torch.tensor([0.9, 0.1, 0.5, 0.3, 0.8, 0.05, 0.6, 0.7], dtype=torch.float64)
SCORES_B = torch.tensor([0.2, 0.4, 0.45, 0.15, 0.95, 0.35, 0.25, 0.5], dtype=torch.float64)


def brute_force(table, scores, target_ms):
    """The least importance removed (lowest scores first) over every pair of widths meeting the target."""
    best = None
    sa, sb = torch.sort(scores["A"]).values, torch.sort(scores["B"]).values
    for ka, kb in itertools.product(range(1, 9), repeat=2):
        if table.predict({"A": ka, "B": kb}) <= target_ms + 1e-12:
            cost = float(sa[: 8 - ka].sum() + sb[: 8 - kb].sum())
            if best is None or cost < best[0]:
                best = (cost, ka, kb)
    return best


@pytest.mark.parametrize("coupled", [False, True])
@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.6])
def test_allocation_matches_brute_force_within_the_greedy_bound(coupled, fraction):
    """Bound (prunecli.surgery.latency): removed importance <= optimum + one removal step's largest score."""
    ms_ab = (lambda i, o: 0.02 * i * o) if coupled else (lambda i, o: 0.0)
    table = hand_table(lambda o: 0.3 * o, ms_ab, lambda i: 0.1 * i)
    scores = {"A": SCORES_A, "B": SCORES_B}
    offers = [make_offer(r, s, 1, 1, 0.99) for r, s in scores.items()]
    target = (1 - fraction) * table.predict({})
    alloc = allocate(table, offers, target)
    assert alloc.predicted_ms <= target + 1e-9
    opt, ka, kb = brute_force(table, scores, target)
    bound = float(max(SCORES_A.max(), SCORES_B.max()))
    assert alloc.removed_importance <= opt + bound + 1e-9, (alloc.widths, (ka, kb), alloc.removed_importance, opt)


def test_allocation_respects_caps_and_steps():
    table = hand_table(lambda o: 0.3 * o, lambda i, o: 0.02 * i * o, lambda i: 0.1 * i)
    offers = [make_offer("A", SCORES_A, 1, 4, 0.99), make_offer("B", SCORES_B, 1, 1, 0.25)]
    alloc = allocate(table, offers, 0.3 * table.predict({}))
    assert alloc.widths["A"] % 4 == 0
    assert alloc.widths["B"] >= 8 - int(8 * 0.25)


def test_round_to_auto_picks_the_step_widths():
    # a staircase: latency rises at 5 channels (a new block of 4): the steps are 4 and 8
    table = hand_table(lambda o: float((o + 3) // 4), lambda i, o: 0.0, lambda i: 0.0)
    assert table.step_widths("A") == [4, 8]
    assert snap_width(5, [4, 8]) == 4 and snap_width(7, [4, 8]) == 8 and snap_width(6, [4, 8]) == 8
    assert snap_width(7, [4, 8], "down") == 4 and snap_width(3, [4, 8], "down") == 4
    # a linear curve has no steps: every grid width is allowed
    flat = hand_table(lambda o: 0.1 * o, lambda i, o: 0.0, lambda i: 0.0)
    assert flat.step_widths("A") == list(range(1, 9))


def test_round_mode_down_matches_torch_pruning():
    from torch_pruning.pruner.algorithms.base_pruner import BasePruner

    assert round_kept(38, 64, 8, "nearest") == 40
    assert round_kept(38, 64, 8, "down") == 32
    for channels in (16, 38, 64):
        for keep in range(8, channels + 1):
            n_pruned = BasePruner._round_to(None, channels - keep, channels, 8)
            assert channels - round_kept(keep, channels, 8, "down") == n_pruned, (channels, keep)


def test_block_grid_has_the_first_width_of_every_block():
    assert lt.grid_widths(64, 8, 1, 16) == [1, 16, 17, 32, 33, 48, 49, 64]
    assert lt.grid_widths(256, 8, 1, 16)[:5] == [1, 32, 33, 64, 65]  # 16 blocks > 8 points: quantum 32
    assert lt.grid_widths(64, 8, 4, 16) == [8, 16, 24, 32, 40, 48, 56, 64]  # grouped: multiples of the groups, no block
    assert len(lt.grid_widths(2048, 8, 1, 16)) <= 16


def test_staircase_is_read_at_its_block_not_blended():
    # a hand-made staircase, blocks of 16 channels: 17..32 cost 2, 33..48 cost 3, ... (what oneDNN's padding
    # does), and inside the first block the cost grows with the width (its kernels work on the channels there are)
    def cost(w):
        return w / 16 if w <= 16 else float((w + 15) // 16)

    g = lt.grid_widths(64, 8, 1, 16)
    c = lt.Config("conv", {"groups": 1}, 64, 64, g, g, [[cost(i) * cost(o) for o in g] for i in g], block=16)
    for cin in (1, 5, 16, 17, 30, 33, 45, 49, 51, 63, 64):
        for cout in (3, 16, 20, 40, 51, 64):
            assert c.at(cin, cout) == pytest.approx(cost(cin) * cost(cout)), (cin, cout)
    # the old blend (block 1) reads 51 between 49 and 64 as more than its block's first width, and 40 below 33's
    old = lt.Config("conv", {"groups": 1}, 64, 64, [16, 32, 48, 64], [16, 32, 48, 64], [[cost(i) * cost(o) for o in [16, 32, 48, 64]] for i in [16, 32, 48, 64]])
    assert old.at(64, 40) < cost(40) * 4
    # a grid coarser than the block: blended between the first widths of the measured blocks, exact on them
    g = lt.grid_widths(256, 8, 1, 16)
    wide = lt.Config("linear", {}, 256, 256, [256], g, [[cost(o) for o in g]], block=16)
    assert wide.at(256, 33) == cost(33) and wide.at(256, 40) == cost(33)  # 40 is in 33's block
    assert cost(33) < wide.at(256, 50) < cost(65)


def test_rest_is_timed_without_the_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(2, 3, 8, 8)
    stand = lt.without_layers(model, x)
    out = stand(x)
    assert out.shape == (2, 4) and not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in stand.modules())
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())  # the model itself is left alone


@pytest.mark.parametrize("runtime", ["torchscript", "onnxruntime"])
def test_rest_stand_ins_trace_and_export(runtime):
    # a traced graph must depend on its input, and ONNX Runtime would fold a constant's BatchNorm and
    # ReLU away: the stand-ins of traced runtimes are tied to the input (in-place ReLU included)
    if runtime == "onnxruntime":
        pytest.importorskip("onnxruntime")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.randn(2, 3, 8, 8)
    (lat,) = lt.time_runnables([lt.Runnable(lt.without_layers(model, x, tie=True), x)], runtime=runtime, threads=1, warmup=1, repeats=1)
    assert lat.median_ms > 0


def test_calibration_passes_through_its_points_and_is_bounded():
    table = hand_table(lambda o: 0.3 * o, lambda i, o: 0.0, lambda i: 0.1 * i)
    raw_d, raw_h = table.raw({}), table.raw({"A": 4, "B": 4})
    lt.calibrate(table, [({}, 2 * raw_d - 1.0), ({"A": 4, "B": 4}, 2 * raw_h - 1.0)])
    assert table.scale == pytest.approx(2.0) and table.offset_ms == pytest.approx(-1.0)
    assert table.predict({"A": 2, "B": 2}) == pytest.approx(2 * table.raw({"A": 2, "B": 2}) - 1.0)
    lt.calibrate(table, [({}, 100 * raw_d), ({"A": 4, "B": 4}, raw_h)])  # a wild fit: only a bounded scale
    assert table.scale == 2.0 and table.offset_ms == 0.0


def test_table_version_is_in_the_key():
    assert _key()["version"] == lt.VERSION == 3
    assert _key()["block"] == lt.simd_block("cpu")


# -- keys and the cache


def _key(**changes):
    base = dict(fingerprint="f" * 64, model="conv2", device="cpu", runtime="eager", batch_size=8, threads=1)
    return lt.table_key(**{**base, **changes})


def test_cache_is_reused_only_for_the_same_key(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNECLI_CACHE_DIR", str(tmp_path))
    table = hand_table(lambda o: 0.3 * o, lambda i, o: 0.0, lambda i: 0.1 * i)
    table.key = _key()
    lt.save_table(table, lt.cache_path(table.key))
    assert lt.cached_table(_key()) is not None
    assert lt.cached_table(_key(device="cuda:0")) is None
    assert lt.cached_table(_key(batch_size=16)) is None
    assert lt.cached_table(_key(fingerprint="e" * 64)) is None
    assert lt.cached_table(_key(runtime="torchscript")) is None
    assert lt.cached_table(_key(threads=2)) is None
    assert lt.cache_path(_key()).parent == tmp_path


def test_fingerprint_is_widths_not_weights():
    a = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    b = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    c = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    assert lt.fingerprint(a, (3, 8, 8)) == lt.fingerprint(b, (3, 8, 8))
    assert lt.fingerprint(a, (3, 8, 8)) != lt.fingerprint(c, (3, 8, 8))
    assert lt.fingerprint(a, (3, 8, 8)) != lt.fingerprint(a, (3, 16, 16))


# -- the commands


@pytest.fixture(scope="module")
def bn_base(tmp_path_factory):
    """A resnet20 on synthetic 8x8 (BatchNorm, residual streams), trained one epoch."""
    from prunecli.cli.app import main

    out = tmp_path_factory.mktemp("lat") / "r20.pt"
    try:
        main(["train", "--dataset", "synthetic", "--image-size", "8", "--model", "resnet20", "--device", "cpu", "--batch-size", "64", "--epochs", "1", "-o", str(out)])
    except SystemExit as e:
        assert e.code in (0, None)
    return out


def test_profile_predicts_pruned_models(cli, bn_base, fake_timing, tmp_path):
    out = tmp_path / "t.json"
    r = cli("profile", bn_base, "--threads", "1", "--grid", "4", "-o", out)
    assert r.code == 0, r.stderr
    assert r.path == out
    data = json.loads(out.read_text())
    assert data["key"]["batch_size"] == 8 and data["key"]["runtime"] == "eager"
    for check in data["check"]:
        # the fake cost is bilinear in the widths per layer and linear in the activations for the rest: 5% covers the grid's interpolation
        assert abs(check["error"]) < 0.05, check
    assert "predicted vs measured" in r.stderr
    # a second profile reuses the cached table
    again = cli("profile", bn_base, "--threads", "1", "--grid", "4", "--no-check")
    assert again.code == 0 and "reused" in again.stderr
    # another batch size is measured anew
    other = cli("profile", bn_base, "--threads", "1", "--grid", "4", "--no-check", "--batch-size", "4")
    assert other.code == 0 and "reused" not in other.stderr and other.path != again.path


def test_prune_target_latency(cli, bn_base, fake_timing, tmp_path):
    for scope in ("layerwise", "global"):
        out = tmp_path / f"p-{scope}.pt"
        r = cli("prune", bn_base, "--target-latency", "0.3", "--threads", "1", "--scope", scope, "--method", "l2", "-o", out)
        assert r.code == 0, r.stderr
        assert "speed-up" in r.stderr
        from prunecli.checkpoint import load_checkpoint

        lat = load_checkpoint(out).extra["prune"]["latency"]
        assert lat["measured_saving"] >= 0.3 - 0.011, lat  # the fake timer is the table's truth: the target is met
        assert lat["achieved_of_requested"] >= 0.9


def test_prune_round_to_auto_and_skip(cli, bn_base, fake_timing, tmp_path):
    r = cli("prune", bn_base, "--rate", "0.3", "--round-to", "auto", "--threads", "1", "-o", tmp_path / "a.pt")
    assert r.code == 0, r.stderr
    assert "round-to auto" in r.stderr
    r = cli("prune", bn_base, "--target-latency", "0.2", "--skip", "layer1.*", "--max-layer-rate", "0.5", "--threads", "1", "-o", tmp_path / "s.pt")
    assert r.code == 0, r.stderr
    from prunecli.checkpoint import load_checkpoint

    rows = load_checkpoint(tmp_path / "s.pt").extra["prune"]["layers"]
    for row in rows:
        if row["name"].startswith("layer1.") and row["status"] != "prune":
            assert row["after"] == row["before"]
        if row["status"] == "prune":
            assert row["after"] >= row["before"] - int(row["before"] * 0.5)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_target_latency_outside_0_1(cli, tiny_base, value):
    line = one_line_error(cli("prune", tiny_base, "--target-latency", value), 2)
    assert "--target-latency" in line and "(0, 1)" in line


def test_target_latency_exclusive(cli, tiny_base):
    line = one_line_error(cli("prune", tiny_base, "--target-latency", "0.3", "--rate", "0.2"), 2)
    assert "--rate" in line
    line = one_line_error(cli("prune", tiny_base, "--target-latency", "0.3", "--target-macs", "0.2"), 2)
    assert "--target-macs" in line


def test_table_of_another_model_is_refused(cli, tiny_base, bn_base, fake_timing, tmp_path):
    table = tmp_path / "conv2.json"
    assert cli("profile", tiny_base, "--threads", "1", "--grid", "4", "--no-check", "-o", table).code == 0
    line = one_line_error(cli("prune", bn_base, "--target-latency", "0.3", "--latency-table", table, "-o", tmp_path / "x.pt"))
    assert "another model" in line
    assert not (tmp_path / "x.pt").exists()


def test_onnxruntime_missing(cli, tiny_base, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    line = one_line_error(cli("profile", tiny_base, "--runtime", "onnxruntime"))
    assert "ONNX Runtime is not installed" in line
    line = one_line_error(cli("prune", tiny_base, "--target-latency", "0.3", "--runtime", "onnxruntime", "-o", tmp_path / "o.pt"))
    assert "ONNX Runtime is not installed" in line


def test_bad_round_to(cli, tiny_base):
    line = one_line_error(cli("prune", tiny_base, "--rate", "0.3", "--round-to", "eight"), 2)
    assert "--round-to" in line


def test_target_latency_warns_about_a_nearly_emptied_layer():
    """No layer is asked for a rate under --target-latency, so a layer the allocation leaves under 10% is reported, with the cap to use."""
    from types import SimpleNamespace as NS

    from prunecli.stages.prune import surprises

    def unit(root, size, kept):
        return NS(status="prune", size=size, kept=kept, rate=None, unit=NS(root=root))

    plan = NS(rate=None, granularity="channel", units=[unit("conv1", 64, 4), unit("layer1.0.conv1", 16, 8)])
    cfg = NS(scope=NS(value="layerwise"), rate=None, layer_rate=[], layer_rates=None, from_sensitivity=None, target_latency=0.5)
    (line,) = surprises(plan, cfg, 1000, 500)
    assert "1 layer(s) keep less than 10%" in line and "conv1 64->4" in line and "--max-layer-rate" in line
    assert surprises(plan, NS(**{**vars(cfg), "target_latency": None}), 1000, 500) == []  # a rate nobody asked: no warning


def test_round_to_auto_with_target_macs_still_meets_the_target(cli, bn_base, fake_timing, tmp_path):
    """Snapping inside the MACs search: snapped after it, widths moved up and the target was missed."""
    from prunecli.checkpoint import load_checkpoint

    r = cli("prune", bn_base, "--target-macs", "0.5", "--round-to", "auto", "--threads", "1", "--method", "l1", "-o", tmp_path / "m.pt")
    assert r.code == 0, r.stderr
    result = load_checkpoint(tmp_path / "m.pt").lineage[-1]["result"]
    removed = 1 - result["macs_after"] / result["macs_before"]
    assert 0.5 <= removed <= 0.75, removed


def test_a_coarse_grid_without_steps_snaps_nothing():
    grid = [1, 16]
    c = lt.Config("conv", {"n": 1, "groups": 1}, 3, 16, [3], grid, [[0.1 * o for o in grid]])
    table = lt.LatencyTable(
        key={"model": "hand"}, layers=[lt.Layer("l1", "c1", None, "A", 3, 16)], configs={"c1": c}, units={"A": 16},
        unit_grids={"A": grid}, dense_ms=0.0, rest_ms=0.0,
    )
    assert table.step_widths("A") == []
    assert snap_width(9, table.step_widths("A")) == 9  # not 16, not 1


def test_target_latency_loosens_after_an_overshoot(cli, bn_base, fake_timing, tmp_path, monkeypatch):
    """A pruned model measured faster than the table predicts: the next rounds remove less, not the first round's too much."""
    from prunecli.checkpoint import load_checkpoint

    calls = {"n": 0}

    def optimistic(runnables, **kwargs):
        out = fake_timer(runnables, **kwargs)
        if len(runnables) == 2 and kwargs.get("repeats") == 15:  # the prune's dense-vs-pruned check
            calls["n"] += 1
            small = out[1]
            out[1] = Latency(small.median_ms * 0.7, "contiguous", small.batch_size, 5, 0, 0, 0, 0, 1, "cpu", None)
        return out

    monkeypatch.setattr(lt, "time_runnables", optimistic)
    r = cli("prune", bn_base, "--target-latency", "0.3", "--threads", "1", "--method", "l1", "-o", tmp_path / "p.pt")
    assert r.code == 0, r.stderr
    lat = load_checkpoint(tmp_path / "p.pt").extra["prune"]["latency"]
    rounds = lat["rounds"]
    assert len(rounds) > 1 and rounds[1]["target_predicted"] < rounds[0]["target_predicted"], rounds
    assert rounds[0]["measured_saving"] > 0.3 + 0.05
    assert 0.3 - 0.011 <= lat["measured_saving"] < rounds[0]["measured_saving"], lat


def test_a_coupled_unit_is_worth_its_producers(fake_timing):
    # HALP sums a channel's importance over its group's layers: a residual unit's channel is a filter in
    # each conv producing it, so --scope layerwise scores (each layer's average channel worth 1) are scaled
    # by the number of producers; priced as one conv's channel, ResNet-56's residual streams went to 1 channel
    from prunecli.criteria import get_criterion
    from prunecli.config.prune import Selection
    from prunecli.models import ModelSpec, build_model, example_input
    from prunecli.stages.profile import obtain_table
    from prunecli.surgery.latency import latency_offers
    from prunecli.surgery.pruner import Pruner

    spec = ModelSpec(name="resnet20", num_classes=10, image_size=8)
    torch.manual_seed(0)
    model = build_model(spec).eval()
    table, _ = obtain_table(model, spec, device=torch.device("cpu"), runtime="eager", batch_size=2, threads=1, repeats=1)
    pruner = Pruner(model, get_criterion("l1"), Selection(rate=0.5), example_input=example_input(spec), name=spec.name)
    offers, _ = latency_offers(pruner, table)
    producers = {u.root: len(u.producers) for u in pruner.units}
    assert max(producers[o.root] for o in offers) == 4  # stage 1's residual stream: conv1 and its 3 blocks' second convs
    for o in offers:
        assert o.prefix[-1] / o.slots == pytest.approx(producers[o.root], rel=1e-6), o.root
