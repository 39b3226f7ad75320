"""ThiNet and channel pruning (CP): the greedy, the LASSO path, the refits, and prune -> compress.

Luo et al., ICCV 2017, arXiv:1707.06342 (ThiNet); He et al., ICCV 2017, arXiv:1707.06168 (CP).
The math is checked on hand-made and small random problems; the pipeline on tiny models
with synthetic data.
"""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn as nn

from prunecli.algorithms.reconstruction import LayerReport, consumer_of, reconstruct
from prunecli.checkpoint import load_checkpoint
from prunecli.config.prune import Selection
from prunecli.criteria import get_criterion
from prunecli.criteria._reconstruct import LayerSamples
from prunecli.criteria.cp import channel_gram, lasso_selection
from prunecli.criteria.thinet import channel_scales, contributions, greedy_removal, removal_objective
from prunecli.stages.checkpoints import rebuild_model
from prunecli.surgery.equivalence import outputs, probe_batch
from prunecli.surgery.pruner import Pruner
from conftest import one_line_error


def random_samples(m=200, c=6, k=4, s=3, seed=0) -> LayerSamples:
    g = torch.Generator().manual_seed(seed)
    patches = torch.randn(m, c, s, generator=g, dtype=torch.float64)
    weight = torch.randn(k, c, s, generator=g, dtype=torch.float64)
    target = torch.einsum("ics,kcs->ik", patches, weight) + 0.1 * torch.randn(m, k, generator=g, dtype=torch.float64)
    return LayerSamples(patches, weight, target, torch.randint(k, (m,), generator=g))


def brute_force(x: torch.Tensor, n: int) -> float:
    return min(removal_objective(x, t) for t in itertools.combinations(range(x.shape[1]), n))


# ---------------------------------------------------------------------------- ThiNet


def test_thinet_greedy_is_brute_force_when_contributions_are_orthogonal():
    # orthogonal columns: the objective of a set is the sum of its columns' squared norms,
    # so removing the 3 smallest is optimal and the greedy must find exactly those
    q, _ = torch.linalg.qr(torch.randn(20, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    norms = torch.tensor([3.0, 0.5, 2.0, 0.1, 5.0, 1.0], dtype=torch.float64)
    x = q * norms
    removed = greedy_removal(x, 3)
    assert removed.tolist() == [3, 1, 5]  # chosen in order of increasing norm
    best = min(itertools.combinations(range(6), 3), key=lambda t: removal_objective(x, t))
    assert sorted(removed.tolist()) == sorted(best)
    assert removal_objective(x, removed.tolist()) == pytest.approx(brute_force(x, 3))


def test_thinet_greedy_takes_the_best_next_channel_at_every_step():
    # ThiNet's greedy is not exhaustive: with cancelling channels (0 and 1 below) the best
    # set of 3 can be missed. What it must do is take, at every step, the channel that keeps
    # ||sum_{c in T} x_c||^2 smallest given the channels already taken, and its first step is
    # the brute-force optimum of removing one.
    g = torch.Generator().manual_seed(2)
    a = torch.randn(30, dtype=torch.float64, generator=g)
    noise = lambda scale: scale * torch.randn(30, dtype=torch.float64, generator=g)
    x = torch.stack([a, -a, noise(0.3), 2 * a + 1, noise(1.0), 0.2 * a], 1)
    chosen = greedy_removal(x, 5).tolist()
    for t in range(5):
        rest = [c for c in range(6) if c not in chosen[:t]]
        best = min(rest, key=lambda c: (removal_objective(x, chosen[:t] + [c]), c))
        assert chosen[t] == best, (t, chosen)
    assert removal_objective(x, chosen[:1]) == pytest.approx(brute_force(x, 1))
    assert all(removal_objective(x, chosen[:n]) >= brute_force(x, n) - 1e-12 for n in range(1, 6))


def test_thinet_rescale_lowers_the_error_of_the_kept_channels():
    samples = random_samples()
    thinet = get_criterion("thinet")
    kept = thinet.choose(samples, 3)
    assert len(kept) == 3
    x = contributions(samples)[:, kept]
    y = samples.target.gather(1, samples.out_channel.view(-1, 1)).flatten()
    scales = channel_scales(samples, kept)
    plain = (y - x.sum(1)).pow(2).sum()
    scaled = (y - x @ scales).pow(2).sum()
    assert scaled < plain
    # and the normal equations' solution is the least-squares optimum
    assert torch.allclose(scales, torch.linalg.lstsq(x, y.view(-1, 1)).solution.flatten(), atol=1e-8)
    # the scales fit the drawn (sample, output channel) pairs, ThiNet's objective; full least
    # squares (refit="full") fits every output of every sample and so lowers that error too
    from prunecli.criteria.thinet import ThiNet

    full = ThiNet(refit="full").refit(samples, kept)
    assert samples.relative_error(kept, full) < samples.relative_error(kept)


# ---------------------------------------------------------------------------- CP


@pytest.mark.parametrize("seed", [0, 1])
def test_cp_lasso_path_keeps_exactly_the_requested_channels(seed):
    samples = random_samples(m=150, c=10, k=5, s=2, seed=seed)
    gram, cross, n = channel_gram(samples)
    z = torch.einsum("ics,kcs->ick", samples.patches, samples.weight)
    assert torch.allclose(gram, torch.einsum("ick,idk->cd", z, z))  # the chunked Gram is the full one
    for keep in range(1, 10):
        kept, lam = lasso_selection(gram / n, cross / n, keep)
        assert len(kept) == keep and len(set(kept.tolist())) == keep, keep
    # two identical channels leave the support together: still exactly the count asked for
    samples.patches[:, 1] = samples.patches[:, 0]
    samples.weight[:, 1] = samples.weight[:, 0]
    gram, cross, n = channel_gram(samples)
    assert all(len(lasso_selection(gram / n, cross / n, k)[0]) == k for k in range(1, 10))


def test_cp_least_squares_beats_the_pruned_weights():
    samples = random_samples(m=300, c=8, k=6, s=3, seed=3)
    cp = get_criterion("cp")
    kept = cp.choose(samples, 4)
    new = cp.refit(samples, kept)
    assert new.shape == (6, 4, 3)
    assert samples.relative_error(kept, new) < samples.relative_error(kept)


# ---------------------------------------------------------------------------- in memory


class Chain(nn.Module):
    """conv -> bn -> relu -> conv -> bn -> relu -> (+ residual conv) -> pool -> linear head."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 1)
        self.d = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = torch.relu(self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))
        h = self.c(h) + self.d(h)  # c and d add: their channels have no single reader
        return self.head(torch.flatten(h, 1))


def test_reconstruct_in_memory_is_what_the_mask_computes_and_leaves_residual_units_whole():
    torch.manual_seed(0)
    model = Chain().eval()
    for bn in (model.bn_a, model.bn_b):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    original = copy.deepcopy(model)
    data = [(torch.randn(16, 3, 8, 8), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    pruner = Pruner(model, get_criterion("thinet"), Selection(rate=0.5), example_input=torch.zeros(1, 3, 8, 8), calibration=data)
    names = {m: n for n, m in model.named_modules()}
    eligible = {u.root: consumer_of(u, names) for u in pruner.units}
    assert eligible["a"][0].name == "b"
    assert eligible["b"][0] is None and "read by 2 layers" in eligible["b"][1]  # b feeds c and d
    assert eligible["c"][0] is None and "residual add" in eligible["c"][1]  # c + d
    report: list[LayerReport] = []
    plan = reconstruct(model, original, pruner.units, selection=pruner.selection, calibration=data, method=get_criterion("cp"),
                       output_layer=pruner.output_layer, forward_order=pruner.graph.forward_order, report=report)
    status = {p.unit.root: p.status for p in plan.units}
    assert status["a"] == "prune" and status["b"] == "unscored" and status["c"] == "unscored"  # b feeds c and d; c+d add
    assert [r.unit for r in report] == ["a"] and report[0].error_reconstructed < report[0].error_pruned
    probe = torch.randn(4, 3, 8, 8)
    reconstructed = outputs(model, probe)
    masked = pruner.mask(plan)
    assert torch.allclose(outputs(model, probe), reconstructed, atol=1e-5)  # the mask changes nothing reconstruct did not
    assert torch.allclose(outputs(masked.compressed, probe), reconstructed, atol=1e-5)
    assert masked.compressed.b.in_channels == 4


# ---------------------------------------------------------------------------- the CLI


def _data_batches(ckpt_path, n=2):
    from prunecli.data.loaders import TensorBatches
    from prunecli.stages.checkpoints import data_for_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    bundle = data_for_checkpoint(ckpt, dataset=None, data=None, seed=0)
    batches = TensorBatches(bundle.test, batch_size=64, device=torch.device("cpu"), mean=bundle.spec.mean, std=bundle.spec.std)
    return [x for x, _ in itertools.islice(iter(batches), n)]


@pytest.mark.parametrize("method", ["thinet", "cp"])
def test_prune_then_compress_matches_and_reconstruction_beats_l1(cli, tiny_base, tmp_path, method):
    pruned, small, l1 = tmp_path / "p.pt", tmp_path / "c.pt", tmp_path / "l1.pt"
    r = cli("prune", tiny_base, "--method", method, "--rate", "0.5", "--calib-batches", "2", "-o", pruned)
    assert r.code == 0, r.stderr
    assert "reconstruction: next-layer relative error" in r.stderr
    assert cli("compress", pruned, "-o", small).code == 0
    assert cli("prune", tiny_base, "--method", "l1", "--rate", "0.5", "-o", l1).code == 0
    ck = load_checkpoint(pruned)
    rows = ck.extra["prune"]["reconstruction"]
    if method == "cp":  # full least squares on every sampled output: never worse on them
        assert all(row["error_reconstructed"] < row["error_pruned"] for row in rows)
    else:  # ThiNet's scales fit its drawn (sample, channel) pairs; over all outputs they help on the whole
        assert sum(row["error_reconstructed"] for row in rows) < sum(row["error_pruned"] for row in rows)
    assert len(rows) == 4  # conv2: both convs and both hidden linear layers; the output layer is protected
    probe = probe_batch(ck.model, 8)
    a, b = outputs(rebuild_model(ck), probe), outputs(rebuild_model(load_checkpoint(small)), probe)
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)
    # on held-out data the reconstructed network stays closer to the original than plain l1 at the same rate
    x = torch.cat(_data_batches(tiny_base))
    dense = outputs(rebuild_model(load_checkpoint(tiny_base)), x)
    err = lambda path: float((outputs(rebuild_model(load_checkpoint(path)), x) - dense).pow(2).mean())
    assert err(pruned) < err(l1), (err(pruned), err(l1))


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--scope", "global"], "--scope"),
        (["--granularity", "weight"], "--granularity"),
        (["--epochs", "1"], "--epochs"),
        (["--target-macs", "0.3", "--rate", None], "--target-macs"),
    ],
)
def test_options_reconstruction_cannot_honour_are_refused_in_one_line(cli, tiny_base, tmp_path, args, flag):
    out = tmp_path / "m.pt"
    base = ["prune", tiny_base, "--method", "thinet", "--rate", "0.5", "-o", out]
    if None in args:  # --target-macs replaces --rate
        base = ["prune", tiny_base, "--method", "thinet", "-o", out]
        args = [a for a in args if a not in ("--rate", None)]
    line = one_line_error(cli(*base, *args), code=2)
    assert flag in line, line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_resnet_units_on_the_residual_stream_are_left_whole_and_reported(cli, tmp_path):
    from pruning_helpers import make_checkpoint

    src = make_checkpoint(tmp_path / "r.pt", "resnet20", image_size=8)
    r = cli("prune", src, "--method", "thinet", "--rate", "0.5", "--calib-batches", "1", "--batch-size", "8", "-o", tmp_path / "m.pt")
    assert r.code == 0, r.stderr
    assert "cannot reconstruct" in r.stderr and "residual add" in r.stderr
    rows = {row["name"]: row for row in load_checkpoint(tmp_path / "m.pt").extra["prune"]["layers"]}
    assert rows["layer1.0.conv1"]["after"] == 8 and rows["conv1"]["status"] == "unscored"
    assert cli("compress", tmp_path / "m.pt", "-o", tmp_path / "c.pt").code == 0
