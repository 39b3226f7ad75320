"""Pruning while training (prune --epochs N): each algorithm does what its paper specifies,
every run resumes bit-identically after kill -9, and bad input is one line.

SFP (He et al. 2018): zeroed filters train on and come back. FPGM with --mask-grads: the
pruned entries stay exactly zero between selections. AGP (Zhu & Gupta 2017): the sparsity
follows s_f * (1 - (1 - t/T)^3). IMP (Frankle & Carbin 2019): rewound survivors equal the
initial weights; the density after R rounds is (1 - p)^R.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TINY, assert_same_weights_and_masks, kill_then_resume, one_line_error
from prunecli.algorithms.gradual import GradualCallback, agp_fraction
from prunecli.algorithms.iterative import IterativeCallback
from prunecli.algorithms.soft import SoftPruningCallback
from prunecli.checkpoint import load_checkpoint
from prunecli.config import FinetuneConfig, Selection
from prunecli.criteria import get_criterion
from prunecli.data import get_dataset
from prunecli.engine.trainer import Callback, Trainer
from prunecli.models import ModelSpec, build_model, example_input
from prunecli.surgery.plan import removed_count
from prunecli.surgery.pruner import Pruner

SPEC = ModelSpec(name="conv2", in_channels=3, num_classes=10, image_size=8)


RESNET = ModelSpec(name="resnet20", in_channels=3, num_classes=10, image_size=8)


def _setup(epochs: int, spec: ModelSpec = SPEC, **cfg):
    torch.manual_seed(0)
    model = build_model(spec)
    data = get_dataset("synthetic", image_size=8, seed=0)
    options = dict(epochs=epochs, device="cpu", batch_size=64, steps_per_epoch=2, lr=0.05, schedule="constant")
    return model, data, FinetuneConfig(**{**options, **cfg})


def _pruner_factory(method: str, granularity: str = "channel", spec: ModelSpec = SPEC, **sel):
    criterion = get_criterion(method)
    selection = Selection(count_rule=criterion.count_rule, **sel)

    def make(model):
        return Pruner(model, criterion, selection, example_input=example_input(spec), granularity=granularity, name=spec.name)

    return make


def _zero_filters(model, name: str = "features.0") -> set[int]:
    w = model.get_submodule(name).weight.detach()
    return set(torch.nonzero(w.flatten(1).abs().sum(1) == 0).flatten().tolist())


class Probe(Callback):
    """Records what a test needs at the events it names."""

    key = "probe"

    def __init__(self, **hooks):
        self.hooks = hooks

    def __getattribute__(self, name):
        hooks = object.__getattribute__(self, "hooks")
        if name in hooks:
            return lambda state: hooks[name](state)
        return object.__getattribute__(self, name)


def test_sfp_pruned_filters_train_on_and_come_back():
    # SFP's setting has BatchNorm after every conv: a zeroed filter still gets gradients
    # through it while its BatchNorm shift is positive, as in a trained network (at a
    # shift of 0, ReLU'(0) = 0 stops them; in a BN-free ReLU net a zero filter has none)
    layer = "layer1.0.conv1"
    model, data, cfg = _setup(2, RESNET)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.fill_(0.1)
    before_selection: list[set[int]] = []  # zero filters when epoch t's training ends (before its re-selection)
    after_selection: list[set[int]] = []
    probe_before = Probe(before_eval=lambda s: before_selection.append(_zero_filters(s.model, layer)))
    soft = SoftPruningCallback(_pruner_factory("l2", spec=RESNET, rate=0.5))
    probe_after = Probe(on_epoch_end=lambda s: after_selection.append(_zero_filters(s.model, layer)))
    probe_after.key = "probe_after"
    state = Trainer(cfg).fit(model, data, [probe_before, soft, probe_after])
    assert len(after_selection[0]) == removed_count(16, 0.5, "remove-floor") == 8
    # the filters zeroed at epoch 1's end have weights again after epoch 2's training
    assert after_selection[0] and not (after_selection[0] & before_selection[1])
    # the last selection is hard, on the whole dependency group: the checkpoint's masks hold it
    final = state.masks[f"{layer}.weight"]
    assert int((final.flatten(1).sum(1) == 0).sum()) == 8
    assert "layer1.0.bn1.weight" in state.masks and "layer1.0.conv2.weight" in state.masks
    assert len(soft.selections) == 3  # before training, then at each of the 2 epoch ends


def test_fpgm_mask_grads_keeps_pruned_entries_exactly_zero_between_selections():
    model, data, cfg = _setup(3, weight_decay=5e-4, momentum=0.9)
    leaks: list[float] = []
    grads: list[float] = []
    soft = SoftPruningCallback(_pruner_factory("geomedian", rate=0.4), mask_grads=True)

    def check_weights(state):
        pruned = ~state.masks["features.0.weight"]
        leaks.append(float(state.model.features[0].weight.detach()[pruned].abs().max()))

    def check_grads(state):
        pruned = ~state.masks["features.0.weight"]
        grads.append(float(state.model.features[0].weight.grad[pruned].abs().max()))

    probe = Probe(after_step=check_weights, after_backward=check_grads)
    Trainer(cfg).fit(model, data, [soft, probe])
    assert len(leaks) == 6 and max(leaks) == 0.0  # exactly zero after every step
    assert max(grads) == 0.0  # and their gradients are zeroed, as the FPGM reference does
    # geomedian's reference count: int(C * r) filters removed per layer
    assert soft.selections and int((~model.features[0].weight.detach().flatten(1).abs().sum(1).bool()).sum()) == int(64 * 0.4)


def test_hard_epochs_fix_the_selection_before_the_last_epochs():
    """--hard-epochs K: the selection at epoch N - K is final; the last K epochs train with it hard."""
    model, data, cfg = _setup(4, RESNET)
    soft = SoftPruningCallback(_pruner_factory("l2", spec=RESNET, rate=0.5), hard_epochs=2)
    masks_at: list[dict] = []
    probe = Probe(on_epoch_end=lambda s: masks_at.append({k: v.clone() for k, v in s.masks.items()}))
    state = Trainer(cfg).fit(model, data, [soft, probe])
    assert len(soft.selections) == 3  # before training, then at the ends of epochs 1 and 2 (the final one)
    # from epoch 2 on the masks are the hard ones (whole groups: the BatchNorm too) and do not change
    assert "layer1.0.bn1.weight" in masks_at[1]
    assert masks_at[1].keys() == masks_at[3].keys() and all(torch.equal(masks_at[1][k], masks_at[3][k]) for k in masks_at[1])
    from prunecli.surgery.masks import maskable_tensors

    tensors = maskable_tensors(state.model)
    for name, mask in state.masks.items():
        gone = tensors[name].detach()[~mask]
        assert gone.numel() == 0 or float(gone.abs().max()) == 0.0, name


def test_agp_sparsity_follows_the_cubic_schedule():
    model, data, cfg = _setup(5)
    rate, ramp = 0.6, 4
    seen: list[tuple[int, float]] = []

    def density(state):
        w = state.model.features[2].weight.detach()
        seen.append((state.epoch, float((w == 0).sum()) / w.numel()))

    agp = GradualCallback(_pruner_factory("magnitude", granularity="weight", rate=rate), ramp_epochs=ramp)
    Trainer(cfg).fit(model, data, [agp, Probe(on_epoch_end=density)])
    size = model.features[2].weight.numel()
    for epoch, sparsity in seen:
        expected = removed_count(size, rate * agp_fraction(epoch, ramp), "remove-ceil") / size
        assert sparsity == pytest.approx(expected, abs=1e-12), epoch
    assert [round(s, 3) for _, s in seen] == [round(rate * (1 - (1 - min(t, ramp) / ramp) ** 3), 3) for t in range(1, 6)]


def test_imp_rewinds_survivors_to_init_and_density_is_geometric():
    model, data, cfg = _setup(1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    p, rounds = 0.2, 3
    rewound: list[bool] = []

    def survivors_equal_init(state):
        if state.epoch % 1 == 0:
            for name in ("features.0.weight", "features.2.weight", "classifier.0.weight"):
                w, m = state.model.state_dict()[name], state.masks.get(name)
                keep = m if m is not None else torch.ones_like(w, dtype=torch.bool)
                rewound.append(torch.equal(w[keep], init[name][keep]) and bool((w[~keep] == 0).all()))

    imp = IterativeCallback(_pruner_factory("magnitude", granularity="weight", rate=p), round_epochs=1, rewind=init)
    probe = Probe(on_epoch_start=survivors_equal_init)
    state = Trainer(cfg, epochs=rounds, cycle_epochs=1).fit(model, data, [imp, probe])
    assert rewound and all(rewound)
    for name in ("features.0.weight", "features.2.weight", "classifier.0.weight"):
        size = state.model.state_dict()[name].numel()
        alive = size
        for _ in range(rounds):
            alive -= removed_count(alive, p, "remove-ceil")
        kept = int(state.masks[name].sum())
        assert kept == alive
        assert kept / size == pytest.approx((1 - p) ** rounds, abs=rounds / size + 1e-9)


# ------------------------------------------------------------ the command line, kill -9


BASE_ARGS = ["--steps-per-epoch", "3", "--batch-size", "32", "--device", "cpu", "--lr", "0.05"]
METHODS = {
    "sfp": ["--method", "l2", "--soft", "--rate", "0.4", "--epochs", "3"],
    "fpgm": ["--method", "geomedian", "--soft", "--mask-grads", "--mix-norm", "0.25", "--rate", "0.4", "--epochs", "3"],
    "agp": ["--method", "l1", "--prune-schedule", "agp", "--rate", "0.5", "--epochs", "3", "--prune-epochs", "2"],
    "imp": ["--method", "magnitude", "--granularity", "weight", "--rounds", "3", "--rewind", "init", "--rate", "0.2", "--epochs", "1"],
    "oneshot": ["--method", "taylor", "--rate", "0.3", "--epochs", "3"],
}


@pytest.fixture(scope="module")
def rewind_base(tmp_path_factory):
    from prunecli.cli.app import main

    out = tmp_path_factory.mktemp("wt") / "base.pt"
    try:
        main(["train", *TINY, "--epochs", "2", "--lr", "0.02", "--save-rewind", "0", "-o", str(out)])
    except SystemExit as e:
        assert e.code in (0, None)
    return out


# three methods in the default run (soft, gradual, iterative with rewinding); the other two
# exercise the same resume path and run with -m slow, to keep the default suite in budget
@pytest.mark.parametrize(
    "method", [m if m in ("sfp", "agp", "imp") else pytest.param(m, marks=pytest.mark.slow) for m in METHODS]
)
def test_killed_run_resumes_to_the_same_weights(cli, tmp_path, rewind_base, method):
    args = [*METHODS[method], *BASE_ARGS]
    whole = cli("prune", rewind_base, *args, "-o", tmp_path / "whole.pt")
    assert whole.code == 0, whole.stderr
    cut = tmp_path / "cut.pt"
    # epoch 1's re-selection and checkpoint are written; die inside epoch 2
    kill_then_resume(cli, ["prune", rewind_base, *args, "-o", cut], epoch=2)
    a, b = load_checkpoint(tmp_path / "whole.pt"), load_checkpoint(cut)
    assert_same_weights_and_masks(a, b)
    assert a.masks, "pruning while training must end with hard masks"
    # the result compresses (channel methods) and continues
    if method != "imp":
        c = cli("compress", cut, "--no-latency", "-o", tmp_path / "small.pt")
        assert c.code == 0, c.stderr


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["--method", "magnitude", "--granularity", "weight", "--soft", "--rate", "0.5", "--epochs", "1"], "re-selects filters", 2),
        (["--method", "magnitude", "--granularity", "weight", "--rounds", "2", "--rewind", "epoch:5", "--rate", "0.2", "--epochs", "1"], "holds the weights of epoch 0", 1),
        (["--method", "l1", "--rounds", "0", "--rate", "0.2", "--epochs", "1"], "rounds", 2),
        (["--method", "l1", "--soft", "--rate", "0.2"], "give --epochs", 2),
        (["--method", "l1", "--mask-grads", "--rate", "0.2", "--epochs", "1"], "needs --soft", 2),
        (["--method", "l1", "--soft", "--rounds", "2", "--rate", "0.2", "--epochs", "1"], "choose one", 2),
        (["--method", "l1", "--rewind", "init", "--rate", "0.2", "--epochs", "1"], "needs --rounds", 2),
        (["--method", "l1", "--hard-epochs", "1", "--rate", "0.2", "--epochs", "2"], "needs --soft", 2),
        (["--method", "l1", "--soft", "--hard-epochs", "2", "--rate", "0.2", "--epochs", "2"], "fewer than", 2),
        (["--method", "l1", "--rewind", "epoch:x", "--rate", "0.2", "--epochs", "1"], "expected init", 2),
        (["--method", "l1", "--soft", "--granularity", "weight", "--rate", "0.2", "--epochs", "1"], "needs --granularity channel", 2),
        (["--method", "l1", "--soft", "--skip", "*", "--rate", "0.2", "--epochs", "1"], "nothing to prune", 2),
        (["--method", "l2", "--rounds", "2", "--rate", "0.001", "--epochs", "1"], "nothing selected", 2),
        (["--method", "l1", "--soft", "--grouping", "layer", "--scope", "global", "--rate", "0.2", "--epochs", "1"], "layerwise", 2),
        (["--method", "taylor", "--soft", "--grouping", "layer", "--rate", "0.2", "--epochs", "1"], "cannot", 2),
        (["--method", "l1", "--sparsity-bn", "1e-4", "--rate", "0.2"], "give --epochs", 2),
    ],
)
def test_bad_training_options_are_one_line(cli, tmp_path, rewind_base, args, message, code):
    out = tmp_path / "x.pt"
    line = one_line_error(cli("prune", rewind_base, *args, *BASE_ARGS, "-o", out), code)
    assert message in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_rewind_needs_saved_weights_and_sparsity_bn_needs_batchnorm(cli, tmp_path, tiny_base):
    out = tmp_path / "x.pt"
    line = one_line_error(cli("prune", tiny_base, "--method", "magnitude", "--granularity", "weight", "--rounds", "2", "--rewind", "init", "--rate", "0.2", "--epochs", "1", *BASE_ARGS, "-o", out))
    assert "holds no rewind weights" in line and "--save-rewind 0" in line
    line = one_line_error(cli("prune", tiny_base, "--method", "l1", "--rate", "0.2", "--epochs", "1", "--sparsity-bn", "1e-4", *BASE_ARGS, "-o", out))
    assert "no BatchNorm" in line
    assert not list(tmp_path.iterdir())


def test_count_rules_match_the_references():
    # FPGM / SFP: int(C * r) removed; Li et al.: int(C * (1 - r)) kept; open_lth: ceil
    assert [removed_count(c, 0.4, "remove-floor") for c in (16, 32, 64)] == [6, 12, 25]
    assert [removed_count(c, 0.4, "keep-floor") for c in (16, 32, 64)] == [7, 13, 26]
    assert removed_count(10, 0.25, "remove-ceil") == 3 and removed_count(8, 0.25, "remove-ceil") == 2
    assert removed_count(10, 0.25, "threshold") == 3  # slimming: int(N p) + 1
    # FPGM-mix rounds its norm and distance shares down separately: 16 filters, 40%, a quarter by norm
    fpgm = get_criterion("geomedian", mix_norm=0.25)
    assert fpgm.removed_count(16, 0.4, "remove-floor") == int(16 * 0.1) + int(16 * 0.3 + 1e-9) == 5
    assert get_criterion("l1").count_rule == "keep-floor" and get_criterion("l2").count_rule == "remove-floor"
    assert math.isclose(agp_fraction(2, 4), 1 - 0.5**3)


def test_grouping_layer_masks_every_conv_on_its_own_and_compress_removes_what_it_can(cli, tmp_path):
    from prunecli.cli.app import main

    base = tmp_path / "r.pt"
    try:
        main(["train", "--model", "resnet20", "--dataset", "synthetic", "--image-size", "8", "--epochs", "1", "--steps-per-epoch", "2", "--device", "cpu", "-o", str(base)])
    except SystemExit as e:
        assert e.code in (0, None)
    r = cli("prune", base, "--method", "geomedian", "--soft", "--grouping", "layer", "--rate", "0.4", "--epochs", "2", *BASE_ARGS, "-o", tmp_path / "l.pt")
    assert r.code == 0, r.stderr
    ck = load_checkpoint(tmp_path / "l.pt")
    # every conv (stem and both convs of each block) lost int(C * 0.4) of its own filters
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight", "layer2.2.conv2.weight", "layer3.1.conv1.weight"):
        w = ck.state_dict[name]
        zero = int((w.flatten(1).abs().sum(1) == 0).sum())
        assert zero == int(w.shape[0] * 0.4), (name, zero)
    assert "compress cannot remove" in r.stderr  # the residual stream's convs chose different filters
    c = cli("compress", tmp_path / "l.pt", "--no-latency", "--json", "-o", tmp_path / "s.pt")
    assert c.code == 0, c.stderr  # compress checks masked == compressed on a probe batch
    assert c.stdout and '"macs_after"' in c.stdout


def test_folding_keeps_what_zeroed_filters_still_add_through_their_batchnorm_shift():
    """A soft-zeroed filter leaves its BatchNorm shift as a constant channel: folding it into
    the consumer's bias makes the hard (removable) mask compute what the soft model did."""
    from types import SimpleNamespace

    from prunecli.algorithms._training import filter_masks, fold_constant_channels
    from prunecli.surgery.masks import apply_masks

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    )
    with torch.no_grad():
        model[1].bias.uniform_(0.2, 0.5)  # shifts > 0: a zeroed filter's channel stays alive
        model[1].running_var.fill_(0.5)
        model[1].running_mean.uniform_(-0.1, 0.1)
    model.eval()
    x = torch.randn(16, 3, 8, 8)
    criterion = get_criterion("l2")
    pruner = Pruner(model, criterion, Selection(rate=0.5, count_rule="remove-floor", protect="output"), example_input=x[:1])
    plan = pruner.plan()
    apply_masks(model, filter_masks(plan))
    soft = model(x)
    from prunecli.engine.distributed import DistInfo

    state = SimpleNamespace(model=model, train_batches=[(x, None)], dist=DistInfo())
    assert fold_constant_channels(state, plan) == 1
    pruner.mask(plan)  # the whole group: the BatchNorm's entries and the linear layer's inputs
    assert torch.allclose(model(x), soft, atol=1e-5)


def test_resume_keeps_what_the_run_prunes_and_when(cli, tmp_path, rewind_base):
    """A resumed pruning run cannot change its method, rate or rounds (nor a round's length),
    and AGP's ramp length is fixed when the run starts, so more --epochs extend it after T."""
    agp = ["--method", "magnitude", "--granularity", "weight", "--prune-schedule", "agp", "--rate", "0.8", "--epochs", "2", *BASE_ARGS]
    r = cli("prune", rewind_base, *agp, "-o", tmp_path / "agp.pt", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"})
    assert r.code == 130, r.stderr
    assert "--rate" in one_line_error(cli("prune", "--resume", tmp_path / "agp.pt", "--rate", "0.5"), 2)
    longer = cli("prune", "--resume", tmp_path / "agp.pt", "--epochs", "4")
    assert longer.code == 0, longer.stderr
    ck = load_checkpoint(tmp_path / "agp.pt")
    assert ck.lineage[-1]["options"]["prune-epochs"] == 1  # 75% of the 2 epochs the run started with
    w = ck.state_dict["features.2.weight"]
    assert float((w == 0).float().mean()) == pytest.approx(removed_count(w.numel(), 0.8, "remove-ceil") / w.numel())
    rounds = ["--method", "magnitude", "--granularity", "weight", "--rounds", "2", "--rate", "0.5", "--epochs", "1", *BASE_ARGS]
    r = cli("prune", rewind_base, *rounds, "-o", tmp_path / "imp.pt", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"})
    assert r.code == 130, r.stderr
    assert "--epochs" in one_line_error(cli("prune", "--resume", tmp_path / "imp.pt", "--epochs", "2"), 2)
    assert "a prune run" in one_line_error(cli("finetune", "--resume", tmp_path / "imp.pt"), 1)


def test_rounds_stop_at_one_channel_instead_of_failing(cli, tmp_path, rewind_base):
    args = ["--method", "l1", "--rounds", "3", "--rate", "0.3", "--layer-rate", "features.0=0.9", "--epochs", "1", *BASE_ARGS]
    r = cli("prune", rewind_base, *args, "-o", tmp_path / "r.pt")
    assert r.code == 0, r.stderr
    w = load_checkpoint(tmp_path / "r.pt").state_dict["features.0.weight"]
    assert int((w.flatten(1).abs().sum(1) != 0).sum()) >= 1
