"""Learned masks with edge-popup scores (seed 000): every rule on hand-set scores, and the
three-step workflow on tiny models.

Ramanujan et al. 2020 keep the top scores per layer and pass gradients straight through
to the scores; seed 000 adds channel ranks (absolute, relevant abs/noabs), one global
threshold per epoch, a warm-up without pruning, and stores nothing it should have: here
the initial scores are stored and read back, and the weights stay frozen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from conftest import one_line_error
from prunecli.algorithms.edgepopup import RECORD_KEY, SCORES_KEY, EdgePopupCallback
from prunecli.checkpoint import load_checkpoint, save_checkpoint
from prunecli.config import Selection
from prunecli.criteria import get_criterion
from prunecli.criteria.edgepopup import channel_rank
from prunecli.models import ModelSpec, build_model, example_input

SPEC = ModelSpec(name="conv2", in_channels=3, num_classes=10, image_size=8)
SYNTH = ["--dataset", "synthetic", "--image-size", "8", "--model", "conv2", "--device", "cpu", "--batch-size", "64"]
RUN = ["--device", "cpu", "--batch-size", "64", "--steps-per-epoch", "3"]


def _callback(granularity="channel", scope="layerwise", rate=0.5, warmup=0, rank="absolute", rank_abs=True, **sel):
    torch.manual_seed(0)
    model = build_model(SPEC)
    criterion = get_criterion("edgepopup", rank=rank, rank_abs=rank_abs)
    selection = Selection(rate=rate, scope=scope, count_rule=criterion.count_rule, **sel)
    cb = EdgePopupCallback(
        model, criterion, selection, granularity=granularity, example=example_input(SPEC), name="conv2",
        score_init="kaiming-uniform", warmup_epochs=warmup, seed=0, store={}, base={},
    )
    return model, cb


def _state(epoch=0):
    return SimpleNamespace(epoch=epoch, dist=SimpleNamespace(enabled=False), masks_changed=lambda: None)


# ---------------------------------------------------------------- the rules, on hand-set scores


def test_rank_formulas_match_hand_computation():
    # one unit of 2 channels fed by two producers; producer b maps its rows in reverse order
    s_a = torch.tensor([[1.0, -3.0], [2.0, 2.0]])
    s_b = torch.tensor([[-1.0, 1.0, 1.0], [4.0, 0.0, -2.0]])
    i_a = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    i_b = torch.tensor([[2.0, 2.0, 2.0], [1.0, 1.0, 0.0]])
    unit = SimpleNamespace(
        channels=2,
        producers=[
            SimpleNamespace(name="a", local_idxs=torch.tensor([0, 1]), root_idxs=torch.tensor([0, 1])),
            SimpleNamespace(name="b", local_idxs=torch.tensor([0, 1]), root_idxs=torch.tensor([1, 0])),
        ],
    )
    scores, initial = {"a": s_a, "b": s_b}, {"a": i_a, "b": i_b}
    # channel 0: a row 0 (1, -3) and b row 1 (4, 0, -2); channel 1: a row 1 (2, 2) and b row 0 (-1, 1, 1)
    absolute = channel_rank(unit, scores, initial, rank="absolute")
    assert torch.allclose(absolute, torch.tensor([(1 + 3 + 4 + 0 + 2) / 5, (2 + 2 + 1 + 1 + 1) / 5], dtype=torch.float64))
    rel_abs = channel_rank(unit, scores, initial, rank="relevant", rank_abs=True)
    assert torch.allclose(rel_abs, torch.tensor([(1 + 3 + 4 + 0 + 2) / (1 + 1 + 1 + 1 + 0), (2 + 2 + 1 + 1 + 1) / (1 + 1 + 2 + 2 + 2)], dtype=torch.float64))
    rel_noabs = channel_rank(unit, scores, initial, rank="relevant", rank_abs=False)
    assert torch.allclose(rel_noabs, torch.tensor([(1 - 3 + 4 + 0 - 2) / 4, (2 + 2 - 1 + 1 + 1) / 8], dtype=torch.float64))


def test_layerwise_keeps_the_top_scores_of_each_layer():
    _, cb = _callback(granularity="weight", rate=0.25)
    with torch.no_grad():
        for name, s in cb.scores.items():
            s.copy_(torch.arange(s.numel(), dtype=torch.float32).view(s.shape) - s.numel() / 2)  # |s| lowest in the middle
    keep = cb.keep()
    for name, k in keep.items():
        a = cb.scores[name].detach().abs().flatten()
        n = int(0.25 * a.numel())  # hidden-networks: int((1 - k) * numel) removed
        assert int((~k).sum()) == n
        assert a[~k.flatten()].max() <= a[k.flatten()].min()  # the removed are the smallest |s|
    # channel mode: each unit keeps its top channels by mean |s|
    _, cb = _callback(granularity="channel", rate=0.5)
    with torch.no_grad():
        for s in cb.scores.values():
            s.copy_(torch.arange(s.shape[0], dtype=torch.float32).view(-1, *([1] * (s.dim() - 1))).expand_as(s))
    for u in cb.units:
        k = cb.keep()[f"unit:{u.unit.root}"]
        assert int(k.sum()) == u.unit.channels - int(0.5 * u.unit.channels)
        assert k[-1] and not k[0]  # row index = score: the last rows are the best


def test_global_threshold_is_recomputed_once_per_epoch():
    _, cb = _callback(granularity="channel", scope="global", rate=0.5)
    cb.on_fit_start(_state(0))
    t0 = cb.threshold
    ranks = torch.cat([r for r in cb._channel_ranks().values()])
    assert t0 == float(torch.kthvalue(ranks, int(round(0.5 * ranks.numel()))).values)
    with torch.no_grad():  # a training step moves the scores: the threshold stays, the mask follows the scores
        for s in cb.scores.values():
            s.mul_(3.0)
    cb.after_step(_state(0))
    assert cb.threshold == t0
    ranks_now = cb._channel_ranks()
    for u in cb.units:
        k = cb.keep()[f"unit:{u.unit.root}"]
        expected = ranks_now[id(u)] > t0
        if expected.any():
            assert torch.equal(k, expected)
    cb.before_eval(_state(1))  # the epoch ended: a new threshold from the scores now
    assert cb.threshold != t0


def test_warmup_prunes_nothing_before_its_last_epoch():
    _, cb = _callback(granularity="channel", scope="global", rate=0.5, warmup=2)
    cb.on_fit_start(_state(0))
    assert all(bool(k.all()) for k in cb.keep().values()) and cb.checkpoint_masks() == {}
    cb.before_eval(_state(1))
    assert all(bool(k.all()) for k in cb.keep().values())
    cb.before_eval(_state(2))  # epoch 2 done: pruning from here on
    assert not all(bool(k.all()) for k in cb.keep().values())
    assert cb.checkpoint_masks()


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_straight_through_gradient_reaches_the_scores(granularity):
    model, cb = _callback(granularity=granularity, rate=0.5)
    cb.on_fit_start(_state(0))
    x = torch.randn(4, 3, 8, 8)
    model(x).square().sum().backward()
    layer = cb.layers[1]  # the second conv: its input is not the data
    w = layer.module.weight
    # the reference: the same forward with w_eff = w * m as a leaf, d loss / d w_eff
    hard = cb._hard()[layer.name]
    cb.remove_hooks()
    eff = (w.detach() * hard).requires_grad_(True)
    saved = layer.module._parameters["weight"]
    others = {s.name: s.module for s in cb.layers if s is not layer}
    with torch.no_grad():
        for s in cb.layers:
            if s is not layer:
                s.module.weight.mul_(cb._hard()[s.name])
    layer.module._parameters["weight"] = eff
    try:
        model(x).square().sum().backward()
    finally:
        layer.module._parameters["weight"] = saved
    assert others
    s = cb.scores[layer.name]
    sign = torch.sign(s.detach())  # a = |s| for these ranks
    assert torch.allclose(s.grad, eff.grad * w.detach() * sign, rtol=1e-4, atol=1e-7)
    assert w.grad is None  # the weights are frozen


# ---------------------------------------------------------------- the workflow, on tiny models


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from prunecli.cli.app import main

    path = tmp_path_factory.mktemp("edgepopup") / "pre.pt"
    code = _run(main, ["train", *SYNTH, "--epochs", "2", "--lr", "0.05", "--init", "xavier-normal", "-o", str(path)])
    assert code == 0
    return path


def _run(main, args):
    try:
        return main([str(a) for a in args]) or 0
    except SystemExit as e:
        return e.code or 0


def test_weights_stay_frozen_and_the_result_is_a_masked_checkpoint(cli, tmp_path, base):
    out = tmp_path / "scores.pt"
    r = cli("prune", base, "--method", "edgepopup", "--granularity", "channel", "--scope", "global", "--rate", "0.5",
            "--rank", "relevant", "--no-rank-abs", "--epochs", "2", *RUN, "-o", out)
    assert r.code == 0, r.stderr
    parent, ck = load_checkpoint(base), load_checkpoint(out)
    assert ck.masks, "the learned selection is the checkpoint's mask"
    frozen = ck.resume["callbacks"]["edgepopup"]["frozen"]
    for name, t in parent.state_dict.items():
        if name in frozen:
            assert torch.equal(frozen[name], t), name  # bit-identical: only the scores trained
        if name in ck.masks:
            assert torch.equal(ck.state_dict[name], t * ck.masks[name]), name
    stored = ck.extra[SCORES_KEY]
    assert set(stored["scores"]) == set(stored["initial"]) and stored["scores"]
    assert any(not torch.equal(stored["scores"][k], stored["initial"][k]) for k in stored["scores"])
    assert ck.extra[RECORD_KEY]["rank"] == "relevant" and ck.extra[RECORD_KEY]["layers"]
    # step 3: the weights train under the fixed mask; the scores are not carried on
    f = cli("finetune", out, "--epochs", "1", *RUN, "-o", tmp_path / "final.pt")
    assert f.code == 0, f.stderr
    final = load_checkpoint(tmp_path / "final.pt")
    assert SCORES_KEY not in final.extra and RECORD_KEY in final.extra
    assert all(torch.equal(final.masks[k], ck.masks[k]) for k in ck.masks)
    # channel mode compresses
    c = cli("compress", tmp_path / "final.pt", "--no-latency", "--json", "-o", tmp_path / "small.pt")
    assert c.code == 0, c.stderr
    import json

    rep = json.loads(c.stdout)
    assert rep["params_after"] < rep["params_before"] and rep["max_abs_diff"] < 1e-4
    info = cli("info", out)
    assert "edge-popup mask" in info.stdout


def test_weight_mode_compress_keeps_the_shapes_and_says_so(cli, tmp_path, base):
    out = tmp_path / "w.pt"
    assert cli("prune", base, "--method", "edgepopup", "--granularity", "weight", "--rate", "0.5", "--epochs", "1", *RUN, "-o", out).code == 0
    c = cli("compress", out, "--no-latency", "-o", tmp_path / "c.pt")
    assert c.code == 0, c.stderr
    assert "keep every layer's shape" in c.stderr


def test_initial_scores_are_read_back_on_resume_not_drawn_again(cli, tmp_path, base):
    out = tmp_path / "cut.pt"
    args = ["prune", base, "--method", "edgepopup", "--rate", "0.5", "--epochs", "2", *RUN, "-o", out]
    env = {**os.environ, "PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"}
    proc = subprocess.run([sys.executable, "-m", "prunecli", *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    ck = load_checkpoint(out)
    edited = {k: v * 2.0 + 1.0 for k, v in ck.extra[SCORES_KEY]["initial"].items()}  # not what the seed would draw
    ck.extra[SCORES_KEY]["initial"] = edited
    save_checkpoint(ck, out)
    assert cli("prune", "--resume", out).code == 0
    after = load_checkpoint(out).extra[SCORES_KEY]["initial"]
    assert all(torch.equal(after[k], edited[k]) for k in edited)


def test_killed_score_stage_resumes_bit_identically(cli, tmp_path, base):
    args = ["--method", "edgepopup", "--granularity", "channel", "--scope", "global", "--rate", "0.4", "--warmup-epochs", "1",
            "--epochs", "3", *RUN]
    assert cli("prune", base, *args, "-o", tmp_path / "whole.pt").code == 0
    cut = tmp_path / "cut.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "prunecli", "prune", str(base), *args, "-o", str(cut)],
        env={**os.environ, "PRUNECLI_KILL_DURING_EPOCH": "3"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(cut).resume["epoch"] == 2
    assert cli("prune", "--resume", cut).code == 0
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(cut)
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    for k, s in a.extra[SCORES_KEY]["scores"].items():
        assert torch.equal(s, b.extra[SCORES_KEY]["scores"][k]), k


def test_supermask_in_random_weights_beats_chance(cli, tmp_path):
    """hidden-networks: train --epochs 0 (signed-constant weights), then learn only the mask."""
    rnd = tmp_path / "random.pt"
    assert cli("train", "--model", "conv2", "--dataset", "digits", "--epochs", "0", "--init", "signed-constant", "--device", "cpu", "-o", rnd).code == 0
    out = tmp_path / "supermask.pt"
    r = cli("prune", rnd, "--method", "edgepopup", "--granularity", "weight", "--rate", "0.5", "--epochs", "2", "--device", "cpu", "-o", out)
    assert r.code == 0, r.stderr
    top1 = load_checkpoint(out).metrics["top1"]
    assert top1 > 50.0, top1  # 10 classes: chance is 10%; 2 epochs reach ~85%


def test_random_channel_baseline_with_layer_rates(cli, tmp_path, base):
    """The seed's "random drop then FT": a fixed seeded random mask, per-layer rates padded with --rate."""
    out = tmp_path / "random.pt"
    r = cli("prune", base, "--method", "random", "--granularity", "channel", "--layer-rates", "0.25", "--rate", "0.5", "-o", out)
    assert r.code == 0, r.stderr
    ck = load_checkpoint(out)
    rows = {row["root"] if "root" in row else row.get("layer"): row for row in ck.extra["prune"]["layers"]}
    again = tmp_path / "again.pt"
    assert cli("prune", base, "--method", "random", "--granularity", "channel", "--layer-rates", "0.25", "--rate", "0.5", "-o", again).code == 0
    assert all(torch.equal(ck.masks[k], load_checkpoint(again).masks[k]) for k in ck.masks)  # seeded
    assert rows


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "edgepopup", "--rate", "0.5"], "learns its mask while training"),
        (["--method", "edgepopup", "--rate", "0.5", "--epochs", "2", "--warmup-epochs", "2"], "fewer than --epochs"),
        (["--method", "edgepopup", "--rate", "0.5", "--epochs", "1", "--granularity", "weight", "--rank", "relevant"], "needs --granularity channel"),
        (["--method", "edgepopup", "--rate", "0.5", "--epochs", "1", "--no-rank-abs"], "needs --rank relevant"),
        (["--method", "l1", "--rate", "0.5", "--epochs", "1", "--warmup-epochs", "1"], "needs --method edgepopup"),
        (["--method", "edgepopup", "--rate", "0.5", "--epochs", "1", "--soft"], "drop --soft"),
        (["--method", "edgepopup", "--epochs", "1"], "give --rate"),
    ],
)
def test_bad_edgepopup_options_are_one_line(cli, base, tmp_path, args, message):
    r = cli("prune", base, *args, "-o", tmp_path / "x.pt")
    assert message in one_line_error(r, 2)
    assert not (tmp_path / "x.pt").exists()


def test_the_three_steps_on_a_cifar_folder(cli, tmp_path):
    """The README's seed-000 workflow on data in CIFAR-10's on-disk format (tiny, written here)."""
    from fakedata import write_cifar10

    root = write_cifar10(tmp_path / "cifar", n_train=50, n_test=20)
    run = ["--device", "cpu", "--batch-size", "25", "--steps-per-epoch", "1"]
    pre, scores, final, small = (tmp_path / f"{n}.pt" for n in ("pre", "scores", "final", "small"))
    assert cli("train", "--model", "conv4", "--dataset", "cifar10", "--data", root, "--epochs", "1", "--lr", "0.1", "--init", "xavier-normal", *run, "-o", pre).code == 0
    r = cli("prune", pre, "--method", "edgepopup", "--granularity", "channel", "--scope", "global", "--rate", "0.5", "--rank", "relevant",
            "--no-rank-abs", "--warmup-epochs", "1", "--epochs", "2", *run, "-o", scores)
    assert r.code == 0, r.stderr
    assert cli("finetune", scores, "--epochs", "1", "--lr", "0.01", *run, "-o", final).code == 0
    assert cli("compress", final, "--no-latency", "-o", small).code == 0
    e = cli("evaluate", pre, final, small, "--no-latency", "--json")
    assert e.code == 0, e.stderr
    reports = __import__("json").loads(e.stdout)
    reports = reports if isinstance(reports, list) else reports["reports"]
    assert reports[2]["macs"] < reports[0]["macs"] and reports[2]["top1"] == reports[1]["top1"]


def test_shuffled_labels_through_the_three_steps_and_train_accuracy(cli, tmp_path):
    """One permutation for the whole lineage (the seed never shuffled at all), and evaluate --split train reads it."""
    pre, scores, final = (tmp_path / f"{n}.pt" for n in ("pre", "scores", "final"))
    assert cli("train", *SYNTH, "--epochs", "1", "--shuffle-labels", "--seed", "5", "--steps-per-epoch", "2", "-o", pre).code == 0
    assert cli("prune", pre, "--method", "edgepopup", "--rate", "0.5", "--epochs", "1", "--shuffle-labels", *RUN, "-o", scores).code == 0
    assert cli("finetune", scores, "--epochs", "1", "--shuffle-labels", "--seed", "9", *RUN, "-o", final).code == 0
    assert [load_checkpoint(p).extra["shuffled_labels"]["seed"] for p in (pre, scores, final)] == [5, 5, 5]
    e = cli("evaluate", final, "--split", "train", "--no-latency", "--json")
    assert e.code == 0, e.stderr
    assert "shuffled labels" in e.stdout
    # training on the true labels drops the record: train accuracy is then on the true labels
    true = tmp_path / "true.pt"
    assert cli("finetune", final, "--epochs", "1", *RUN, "-o", true).code == 0
    assert "shuffled_labels" not in load_checkpoint(true).extra


def test_the_old_lr_warmup_key_names_its_new_spelling(tmp_path):
    from prunecli.config import TrainConfig
    from prunecli.errors import OptionError

    with pytest.raises(OptionError, match="now 'lr-warmup-epochs'"):
        TrainConfig.from_options({"warmup-epochs": 2})


def test_channel_mode_on_a_residual_batchnorm_net_compresses(cli, tmp_path):
    """Residual adds couple layers: their channels are ranked and masked as one group, BatchNorm included."""
    base = tmp_path / "r20.pt"
    run = ["--device", "cpu", "--batch-size", "32", "--steps-per-epoch", "2"]
    assert cli("train", "--model", "resnet20", "--dataset", "synthetic", "--image-size", "8", "--epochs", "1", *run, "-o", base).code == 0
    scores = tmp_path / "scores.pt"
    r = cli("prune", base, "--method", "edgepopup", "--scope", "global", "--rank", "relevant", "--rate", "0.5", "--epochs", "1", *run, "-o", scores)
    assert r.code == 0, r.stderr
    ck = load_checkpoint(scores)
    assert any(k.endswith("bn1.weight") for k in ck.masks)  # the BatchNorm scale of masked channels is masked with them
    c = cli("compress", scores, "--no-latency", "--json", "-o", tmp_path / "small.pt")
    assert c.code == 0, c.stderr
    import json

    rep = json.loads(c.stdout)
    assert rep["macs_after"] < rep["macs_before"] and rep["max_abs_diff"] < 1e-4
