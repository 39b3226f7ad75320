"""Pruning criteria against their papers' formulas, on hand-made weights.

Each test builds a tiny model, sets its weights by hand, traces it into dependency units
and compares a criterion's scores / selections with the formula computed independently.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from prunecli.errors import PruneCliError
from prunecli.criteria import get_criterion, list_criteria, criterion_description
from prunecli.surgery.units import build_graph, units

ALL = ["cp", "edgepopup", "geomedian", "hessian", "l1", "l2", "lamp", "magnitude", "random", "slimming", "sss", "taylor", "thinet"]


def traced_units(model: nn.Module, example: torch.Tensor) -> dict:
    """The model's units by root name."""
    return {u.root: u for u in units(build_graph(model, example))}


def set_filters(conv: nn.Conv2d, rows) -> None:
    """Give ``conv`` the flattened filters ``rows`` (one per output channel)."""
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(rows, dtype=torch.float32).view_as(conv.weight))


def chain(filters) -> tuple[nn.Module, dict]:
    """conv(1 -> n, kernel 1x2) -> 1x1 conv consumer; the consumer's weights are large on
    purpose, so any criterion that mixed in its input-channel weights would rank differently."""
    model = nn.Sequential(nn.Conv2d(1, len(filters), (1, 2), bias=False), nn.Conv2d(len(filters), 2, 1, bias=False))
    set_filters(model[0], filters)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[100.0, 1.0, 1.0, 1.0][: len(filters)]] * 2).view_as(model[1].weight))
    return model, traced_units(model, torch.zeros(1, 1, 1, 2))


class Residual(nn.Module):
    """bn_a(a(x)) + bn_b(b(x)) -> head: a and b are coupled into one unit."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 3, (1, 2), bias=False), nn.Conv2d(1, 3, (1, 2), bias=False)
        self.bn_a, self.bn_b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(self.bn_a(self.a(x)) + self.bn_b(self.b(x)))


# ---------------------------------------------------------------------------- registry


def test_every_method_is_listed_and_cites_its_paper():
    assert list_criteria() == ALL
    for name in ALL:
        line = criterion_description(name)
        assert re.search(r"arXiv:\d{4}\.\d{4,5}|NIPS \d{4}|ICLR \d{4}|CVPR \d{4}", line), (name, line)
        method = get_criterion(name)
        assert method.name == name
        assert method.granularities and set(method.granularities) <= {"channel", "weight", "block", "group"}
        assert method.global_normalizer in ("mean", "lamp", None)
    assert [n for n in ALL if get_criterion(n).needs_data] == ["cp", "hessian", "taylor", "thinet"]


# ---------------------------------------------------------------------------- L1 / L2

# L1 ranks filter 0 lowest (3 < 4 < 5); L2 ranks filter 1 lowest (2.83 < 3 < 4.12).
FILTERS = [[3.0, 0.0], [2.0, 2.0], [-4.0, 1.0]]


def test_l1_and_l2_are_the_producer_filter_norms_and_rank_differently():
    model, us = chain(FILTERS)
    unit = us["0"]
    l1, l2 = get_criterion("l1"), get_criterion("l2")
    assert l1.channel_scores(unit).tolist() == [3.0, 4.0, 5.0]
    assert torch.allclose(l2.channel_scores(unit), torch.tensor([3.0, math.sqrt(8), math.sqrt(17)], dtype=torch.float64))
    assert l1.select_channels(unit, 1).tolist() == [0]
    assert l2.select_channels(unit, 1).tolist() == [1]
    w = model[0].weight
    assert torch.equal(l1.weight_scores("0.weight", w), w.abs())
    assert torch.equal(l2.weight_scores("0.weight", w), w.abs())


def test_coupled_producers_score_the_mean_of_their_filter_norms():
    import torch_pruning as tp
    from torch_pruning.dependency.group import Group

    model = Residual()
    set_filters(model.a, FILTERS)
    set_filters(model.b, [[1.0, 0.0], [0.0, -6.0], [1.0, 1.0]])
    unit = traced_units(model, torch.zeros(1, 1, 1, 2))["a"]
    assert unit.producer_names == ["a", "b"]
    assert get_criterion("l1").channel_scores(unit).tolist() == [(3 + 1) / 2, (4 + 6) / 2, (5 + 2) / 2]
    l2 = [(3 + 1) / 2, (math.sqrt(8) + 6) / 2, (math.sqrt(17) + math.sqrt(2)) / 2]
    assert torch.allclose(get_criterion("l2").channel_scores(unit), torch.tensor(l2, dtype=torch.float64))

    # Torch-Pruning's L1 on a producer-only view of the group gives the same numbers
    view = Group()
    view._DG = unit.group._DG
    view._group = [
        it for it in unit.group.items if it.dep.handler in (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
    ]
    ref = tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None, target_types=[nn.Conv2d, nn.Linear])
    assert torch.allclose(ref(view).double(), get_criterion("l1").channel_scores(unit))


def test_transposed_conv_filters_are_weight_columns_and_grouped_ones_are_refused():
    from prunecli.criteria.norm import output_filters

    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(2, 3, 2, bias=False), nn.Conv2d(3, 1, 1))
    unit = traced_units(model, torch.zeros(1, 2, 3, 3))["0"]
    w = model[0].weight.detach().double()  # (in, out, kh, kw): output filter o is w[:, o]
    assert torch.allclose(get_criterion("l1").channel_scores(unit), w.abs().sum((0, 2, 3)))
    grouped = nn.ConvTranspose2d(4, 4, 2, groups=2)
    with pytest.raises(PruneCliError, match="transposed"):
        output_filters(grouped, grouped.weight)


# ---------------------------------------------------------------------------- FPGM

# Filter 0 is [-1, -1.05]: an outlier in raw weights, but |w| puts it next to filter 1, so a
# criterion on |w| would prune filter 0; on raw weights filter 1 is the geometric median.
GM_FILTERS = [[-1.0, -1.05], [1.0, 1.0], [1.2, 1.1], [0.9, 1.2]]


def distance_sums(rows) -> list[float]:
    return [sum(math.dist(a, b) for b in rows) for a in rows]


def test_geomedian_scores_raw_distance_sums_and_prunes_the_central_filter():
    model, us = chain(GM_FILTERS)
    unit, fpgm = us["0"], get_criterion("geomedian")
    scores = fpgm.channel_scores(unit)
    assert torch.allclose(scores, torch.tensor(distance_sums(GM_FILTERS), dtype=torch.float64))
    assert fpgm.select_channels(unit, 1).tolist() == [1]  # central one; the outlier 0 is kept
    on_abs = distance_sums([[abs(v) for v in row] for row in GM_FILTERS])
    assert min(range(4), key=on_abs.__getitem__) == 0  # what |w| (Torch-Pruning's FPGM) would prune


# FPGM-mix, 2 of 5 with mix_norm 0.5: filter 1 has the smallest norm; among the other four
# filter 3 is the geometric median, whereas over all five filters it would be filter 2.
MIX_FILTERS = [[2.5, 2.0], [-1.5, -1.0], [-1.0, -2.0], [2.5, 1.0], [-2.5, -1.5]]


def test_fpgm_mix_removes_the_norm_share_first_then_the_median_of_the_survivors():
    model = nn.Sequential(nn.Conv2d(1, 5, (1, 2), bias=False))
    set_filters(model[0], MIX_FILTERS)
    unit = traced_units(model, torch.zeros(1, 1, 1, 2))["0"]
    fpgm = get_criterion("geomedian")
    norms = [math.hypot(*r) for r in MIX_FILTERS]
    first = min(range(5), key=norms.__getitem__)
    survivors = [i for i in range(5) if i != first]
    sums = distance_sums([MIX_FILTERS[i] for i in survivors])
    second = survivors[min(range(4), key=sums.__getitem__)]
    assert (first, second) == (1, 3)
    assert get_criterion("geomedian", mix_norm=0.5).select_channels(unit, 2).tolist() == [1, 3]
    assert fpgm.select_channels(unit, 2).tolist() == [1, 2]  # FPGM-only
    pure_l2 = get_criterion("l2").select_channels(unit, 2)
    assert torch.equal(get_criterion("geomedian", mix_norm=1.0).select_channels(unit, 2), pure_l2)
    with pytest.raises(PruneCliError):
        get_criterion("geomedian", mix_norm=1.5).select_channels(unit, 2)


# ---------------------------------------------------------------------------- slimming


def test_slimming_scores_are_abs_gamma_and_none_without_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.1, 0.3]))
    us = traced_units(model, torch.zeros(1, 1, 2, 2))
    slim = get_criterion("slimming")
    assert torch.allclose(slim.channel_scores(us["0"]), torch.tensor([0.5, 0.1, 0.3], dtype=torch.float64))
    assert slim.select_channels(us["0"], 1).tolist() == [1]
    assert slim.channel_scores(us["3"]) is None  # the head has no BatchNorm

    res = Residual()
    with torch.no_grad():
        res.bn_a.weight.copy_(torch.tensor([1.0, -2.0, 0.2]))
        res.bn_b.weight.copy_(torch.tensor([3.0, 0.0, -0.4]))
    unit = traced_units(res, torch.zeros(1, 1, 1, 2))["a"]
    assert torch.allclose(slim.channel_scores(unit), torch.tensor([2.0, 1.0, 0.3], dtype=torch.float64))


# ---------------------------------------------------------------------------- LAMP


def test_lamp_weight_scores_follow_the_formula_and_peak_at_one_per_layer():
    lamp = get_criterion("lamp")
    w = torch.tensor([[3.0, -1.0], [2.0, 0.5]])
    # squares 9, 1, 4, 0.25; ascending 0.25, 1, 4, 9 with suffix sums 14.25, 14, 13, 9
    expected = torch.tensor([[9 / 9, 1 / 14], [4 / 13, 0.25 / 14.25]], dtype=torch.float64)
    assert torch.allclose(lamp.weight_scores("w", w), expected)
    small = torch.tensor([1e-3, -2e-3, 5e-4])
    assert lamp.weight_scores("w", small).max() == 1.0
    assert lamp.weight_scores("w", w).max() == 1.0

    model, us = chain(FILTERS)  # squared filter norms 9, 8, 17
    assert torch.allclose(lamp.channel_scores(us["0"]), torch.tensor([9 / 26, 8 / 34, 17 / 17], dtype=torch.float64))


# ---------------------------------------------------------------------------- gradient criteria


def bn_model() -> nn.Module:
    """conv(+bias) -> BN -> ReLU -> pool -> linear, with non-trivial BN parameters and statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)
    )
    with torch.no_grad():
        bn = model[1]
        bn.weight.copy_(torch.tensor([0.7, -1.3, 0.9]))
        bn.bias.copy_(torch.tensor([0.2, 0.5, -0.1]))
        bn.running_mean.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.5]))
    return model


def calibration():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(3, 2, 4, 4, generator=g), torch.randint(0, 4, (3,), generator=g)) for _ in range(2)]


def channel_params(model):
    """The parameters that lose an entry when a channel of the first conv goes."""
    conv, bn = model[0], model[1]
    return [conv.weight, conv.bias, bn.weight, bn.bias]


def per_channel(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1) if t.dim() > 1 else t


def manual_grads(model, x, y):
    """Reference gradients on a fresh copy in eval mode (the criteria's convention)."""
    model.eval()
    loss = F.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, channel_params(model))


def test_taylor_is_the_mean_squared_channel_sum_of_grad_times_weight_including_batchnorm():
    model, data = bn_model(), calibration()
    ref_model = copy.deepcopy(model)
    model.train()
    model[5].bias.requires_grad_(False)  # a frozen parameter must stay frozen
    running = model[1].running_mean.clone()
    taylor = get_criterion("taylor")
    us = traced_units(model, torch.zeros(1, 2, 4, 4))
    model.train()  # build_graph restores the mode; make the starting state explicit
    taylor.prepare(model, list(us.values()), data)

    expected, conv_only = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    expected_w = torch.zeros_like(ref_model[0].weight)
    for x, y in data:
        terms = [per_channel(g * p).double() for g, p in zip(manual_grads(ref_model, x, y), channel_params(ref_model))]
        expected += sum(terms) ** 2 / len(data)
        conv_only += sum(terms[:2]) ** 2 / len(data)  # what skipping BatchNorm would give
        expected_w += (manual_grads(ref_model, x, y)[0] * ref_model[0].weight).pow(2) / len(data)
    scores = taylor.channel_scores(us["0"])
    assert torch.allclose(scores, expected, rtol=1e-5)
    assert not torch.allclose(scores, conv_only, rtol=1e-2)
    assert torch.allclose(taylor.weight_scores("0.weight", model[0].weight), expected_w, rtol=1e-5)

    # the model is left as found: training flags, requires_grad, no .grad, BN statistics
    assert all(m.training for m in model.modules())
    assert model[5].bias.requires_grad is False and model[0].weight.requires_grad is True
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[1].running_mean, running)


def test_hessian_is_half_the_per_sample_fisher_times_weight_squared():
    model, data = bn_model(), calibration()
    ref_model = copy.deepcopy(model)
    hessian = get_criterion("hessian")
    us = traced_units(model, torch.zeros(1, 2, 4, 4))
    hessian.prepare(model, list(us.values()), data)

    samples = [(x[i : i + 1], y[i : i + 1]) for x, y in data for i in range(len(x))]
    fisher = [torch.zeros_like(p) for p in channel_params(ref_model)]
    for x, y in samples:
        for f, g in zip(fisher, manual_grads(ref_model, x, y)):
            f += g.pow(2) / len(samples)
    saliency = [0.5 * f * p.detach().pow(2) for f, p in zip(fisher, channel_params(ref_model))]
    expected = sum(per_channel(s).double() for s in saliency)
    assert torch.allclose(hessian.channel_scores(us["0"]), expected, rtol=1e-5)
    assert torch.allclose(hessian.weight_scores("0.weight", model[0].weight), saliency[0], rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())

    # the per-batch alternative (mean of squared batch gradients) is smaller: not what we compute
    batch_fisher = sum(manual_grads(ref_model, x, y)[0].pow(2) for x, y in data) / len(data)
    assert (batch_fisher.sum() < fisher[0].sum()).item()


def test_gradient_criteria_need_calibration_data():
    model, us = chain(FILTERS)
    for name in ("taylor", "hessian"):
        with pytest.raises(PruneCliError, match="calibration"):
            get_criterion(name).prepare(model, list(us.values()), None)
        with pytest.raises(PruneCliError, match="prepare"):
            get_criterion(name).channel_scores(us["0"])


# ---------------------------------------------------------------------------- random, magnitude


def test_random_is_reproducible_per_seed_and_independent_per_unit():
    from prunecli.criteria.random import stream_seed

    model = Residual()
    us = traced_units(model, torch.zeros(1, 1, 1, 2))
    rnd = get_criterion("random")
    a = get_criterion("random", seed=7).channel_scores(us["a"])
    assert torch.equal(a, get_criterion("random", seed=7).channel_scores(us["a"]))
    assert not torch.equal(a, get_criterion("random", seed=8).channel_scores(us["a"]))
    assert us["head"].channels == 2
    assert not torch.equal(a[:2], get_criterion("random", seed=7).channel_scores(us["head"]))
    w = model.a.weight
    assert torch.equal(rnd.weight_scores("a.weight", w), rnd.weight_scores("a.weight", w))
    assert not torch.equal(rnd.weight_scores("a.weight", w), rnd.weight_scores("b.weight", w))
    assert rnd.weight_scores("a.weight", w).shape == w.shape
    # not Python's salted hash(): the stream seed is a fixed function of (seed, key)
    assert stream_seed(0, "unit:conv1") == stream_seed(0, "unit:conv1") != stream_seed(1, "unit:conv1")
    digest = hashlib.blake2b(b"0:unit:conv1", digest_size=8).digest()
    assert stream_seed(0, "unit:conv1") == int.from_bytes(digest, "little") & (2**63 - 1)


def test_magnitude_is_abs_weight_and_has_no_channel_scores():
    model, us = chain(FILTERS)
    mag = get_criterion("magnitude")
    assert mag.granularities == ("weight",)
    assert torch.equal(mag.weight_scores("0.weight", model[0].weight), model[0].weight.abs())
    with pytest.raises(PruneCliError, match="weight"):
        mag.channel_scores(us["0"])


# ---------------------------------------------------------------------------- a real network


def test_every_channel_method_scores_every_unit_of_resnet20():
    from prunecli.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet20")
    us = units(build_graph(model, torch.zeros(1, 3, 32, 32)))
    data = [(torch.randn(2, 3, 32, 32), torch.tensor([1, 7]))]
    for name in list_criteria():
        method = get_criterion(name, mix_norm=0.5) if name == "geomedian" else get_criterion(name)
        if "channel" not in method.granularities or getattr(method, "reconstructs", False) or method.learned:
            continue  # thinet and cp choose while reconstructing: tests/test_reconstruction.py; learned masks: tests/test_edgepopup.py
        method.prepare(model, us, data)
        for u in us:
            s = method.channel_scores(u)
            if s is None:
                assert name == "slimming" and u.root == "fc"
                continue
            assert s.shape == (u.channels,) and torch.isfinite(s).all(), (name, u.root)
            assert len(set(method.select_channels(u, u.channels // 4).tolist())) == u.channels // 4
