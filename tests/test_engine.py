"""Engine units: schedules, top-k accounting, device augmentation, sharding."""

from __future__ import annotations

import pytest
import torch

from prunecli.data._registry import Augment, DataBundle, DatasetSpec, TensorSplit
from prunecli.data.loaders import TensorBatches, augment_batch, draw_augment_params
from prunecli.config import TrainConfig
from prunecli.engine.loop import evaluate
from prunecli.engine.optim import build_optimizer, lr_factor
from prunecli.errors import PruneCliError


def test_lr_schedules():
    spe = 10  # steps per epoch
    c = TrainConfig(epochs=4, schedule="constant")
    assert [lr_factor(c, s, spe) for s in (0, 39)] == [1.0, 1.0]
    c = TrainConfig(epochs=10, schedule="step", step_size=3, gamma=0.5)
    assert lr_factor(c, 29, spe) == 1.0 and lr_factor(c, 30, spe) == 0.5 and lr_factor(c, 60, spe) == 0.25
    c = TrainConfig(epochs=8, schedule="multistep", gamma=0.1)  # default milestones: 50% and 75%
    assert lr_factor(c, 39, spe) == 1.0 and lr_factor(c, 40, spe) == pytest.approx(0.1) and lr_factor(c, 60, spe) == pytest.approx(0.01)
    c = TrainConfig(epochs=8, schedule="multistep", milestones=[2, 5])
    assert lr_factor(c, 19, spe) == 1.0 and lr_factor(c, 20, spe) == pytest.approx(0.1) and lr_factor(c, 50, spe) == pytest.approx(0.01)
    c = TrainConfig(epochs=4, schedule="cosine")
    assert lr_factor(c, 0, spe) == 1.0 and lr_factor(c, 20, spe) == pytest.approx(0.5) and lr_factor(c, 40, spe) == pytest.approx(0.0)
    c = TrainConfig(epochs=4, schedule="cosine", lr_warmup_epochs=1)
    assert lr_factor(c, 0, spe) == pytest.approx(0.1) and lr_factor(c, 9, spe) == pytest.approx(1.0)
    assert lr_factor(c, 10, spe) == 1.0 and lr_factor(c, 25, spe) == pytest.approx(0.5)
    with pytest.raises(PruneCliError):
        lr_factor(TrainConfig(schedule="exp"), 0, 1)


def test_optimizers():
    model = torch.nn.Linear(3, 2)
    assert isinstance(build_optimizer(TrainConfig(optimizer="sgd", nesterov=True), model), torch.optim.SGD)
    assert build_optimizer(TrainConfig(optimizer="sgd", nesterov=True), model).param_groups[0]["nesterov"]
    assert isinstance(build_optimizer(TrainConfig(optimizer="adam"), model), torch.optim.Adam)
    assert isinstance(build_optimizer(TrainConfig(optimizer="adamw"), model), torch.optim.AdamW)
    with pytest.raises(PruneCliError, match="sgd, adam, adamw"):
        build_optimizer(TrainConfig(optimizer="rmsprop"), model)


class _Fixed(torch.nn.Module):
    """Returns pre-set logits for sample i (the input carries i)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_evaluate_top1_top5_and_loss_on_hand_made_logits():
    logits = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # label 0: top-1 hit
            [1.0, 9, 8, 7, 6, 5, 4],  # label 6: rank 7 -> miss
            [5.0, 6, 7, 8, 9, 1, 2],  # label 1: rank 4 -> top-5 hit
            [0.0, 0, 0, 0, 0, 0, 9],  # label 6: top-1 hit
        ]
    )
    labels = torch.tensor([0, 6, 1, 6])
    images = torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2).contiguous()
    split = TensorSplit(images, labels)
    batches = TensorBatches(split, batch_size=3, device=torch.device("cpu"), mean=(0.0,), std=(1 / 255,))
    r = evaluate(_Fixed(logits), batches, device=torch.device("cpu"))
    assert r.samples == 4
    assert r.top1 == 50.0 and r.top5 == 75.0
    assert r.loss == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


def test_augment_crop_is_a_shift_with_zero_fill_and_flip_mirrors():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4).repeat(3, 1, 1, 1)
    aug = Augment(crop_padding=1, hflip=True)
    dy, dx = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    out = augment_batch(x, aug, dy, dx, torch.tensor([False, False, True]))
    assert torch.equal(out[1], x[1])  # offset (1, 1) = the original
    expect0 = torch.zeros(4, 4, dtype=torch.uint8)
    expect0[1:, 1:] = x[0, 0, :3, :3]  # shifted down-right, zero border
    assert torch.equal(out[0, 0], expect0)
    expect2 = torch.zeros(4, 4, dtype=torch.uint8)
    expect2[:3, :3] = x[2, 0, 1:, 1:]
    assert torch.equal(out[2, 0], expect2.flip(1))
    g = torch.Generator().manual_seed(0)
    dy, dx, flip = draw_augment_params(1000, Augment(crop_padding=4, hflip=True), g)
    assert dy.min() == 0 and dy.max() == 8 and 0.4 < flip.float().mean() < 0.6


def _bundle(n=37, size=6):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % 5
    spec = DatasetSpec("t", 5, 3, size, (0.5,) * 3, (0.25,) * 3)
    return DataBundle(spec, TensorSplit(images, labels), TensorSplit(images, labels), Augment(crop_padding=2, hflip=True))


def _collect(batches):
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_see_exactly_what_one_process_sees(world):
    from prunecli.data.loaders import make_batches

    b = _bundle()
    cpu = torch.device("cpu")
    one = make_batches(b, "train", batch_size=12, device=cpu, train=True, seed=4)
    one.set_epoch(3)
    x1, y1 = _collect(one)
    parts = []
    for rank in range(world):
        tb = make_batches(b, "train", batch_size=12 // world if 12 % world == 0 else 4, device=cpu, train=True, seed=4, rank=rank, world_size=world)
        tb.set_epoch(3)
        parts.append(_collect(tb))
    assert len({len(y) for _, y in parts}) == 1  # equal steps on every rank (DDP needs them)
    assert sum(len(y) for _, y in parts) >= len(y1)
    # every (augmented image, label) pair of the single process appears on some rank
    rows = {(tuple(x.flatten().tolist()), int(y)) for xs, ys in parts for x, y in zip(xs, ys)}
    assert {(tuple(x.flatten().tolist()), int(y)) for x, y in zip(x1, y1)} <= rows
    # evaluation splits are not padded: every sample exactly once over the ranks
    total = 0
    for rank in range(world):
        ev = make_batches(b, "test", batch_size=5, device=cpu, train=False, rank=rank, world_size=world)
        total += len(_collect(ev)[1])
    assert total == 37


def test_epoch_randomness_depends_only_on_seed_and_epoch():
    from prunecli.data.loaders import make_batches

    b = _bundle()
    cpu = torch.device("cpu")
    a = make_batches(b, "train", batch_size=8, device=cpu, train=True, seed=1)
    c = make_batches(b, "train", batch_size=8, device=cpu, train=True, seed=1)
    for e in (0, 1, 0):  # epoch 0 again after epoch 1: the same batches as the first time
        a.set_epoch(e)
    c.set_epoch(0)
    xa, ya = _collect(a)
    xc, yc = _collect(c)
    assert torch.equal(xa, xc) and torch.equal(ya, yc)
    c.set_epoch(1)
    assert not torch.equal(_collect(c)[1], yc)
