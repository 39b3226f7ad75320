"""The in-memory core, without files: the Pruner on every zoo model and channel criterion,
the Trainer with callbacks (killed and resumed bit-identically), and pruning on CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from prunecli.config import PruneConfig, Selection, TrainingOptions
from prunecli.criteria import criterion_class, get_criterion, list_criteria
from prunecli.data import get_dataset
from prunecli.engine.callbacks import EnforceMasks
from prunecli.engine.trainer import Callback, FitState, Trainer, TrainingInterrupted
from prunecli.errors import OptionError, PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.models import ModelSpec, build_model, example_input, list_models
from prunecli.surgery import Pruner
from prunecli.surgery.equivalence import outputs, probe_batch

SMALL = {"resnext29": dict(cardinality=2, base_width=4), "mobilenetv2": dict(width_mult=0.5)}
NO_BATCHNORM = ("conv2", "conv4", "conv6", "conv8", "lenet300_100")
CHANNEL_CRITERIA = [c for c in list_criteria() if c != "magnitude" and not getattr(criterion_class(c), "reconstructs", False) and not criterion_class(c).learned]  # thinet, cp: tests/test_reconstruction.py


def _spec(model: str) -> ModelSpec:
    return ModelSpec(model, 3, 10, 28 if model == "lenet300_100" else 16, SMALL.get(model, {}))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)


@pytest.mark.parametrize("model", list_models())
def test_pruner_plan_mask_remove_on_every_model_and_criterion(model):
    spec = _spec(model)
    torch.manual_seed(0)
    base = build_model(spec).eval()
    example, probe = example_input(spec), probe_batch(spec, 4)
    calibration = [(torch.randn(4, 3, spec.image_size, spec.image_size), torch.arange(4))]
    shape = tuple(example.shape[1:])
    macs_before = count_complexity(base, shape).macs
    shapes = {n: t.shape for n, t in base.state_dict().items()}
    for name in CHANNEL_CRITERIA:
        net = copy.deepcopy(base)
        pruner = Pruner(net, get_criterion(name), Selection(rate=0.3), example_input=example, calibration=calibration, name=model)
        if name == "slimming" and model in NO_BATCHNORM:
            with pytest.raises(PruneCliError, match="cannot score"):
                pruner.plan()
            continue
        plan = pruner.plan()
        assert plan.pruned, (model, name)
        masked = pruner.mask(plan)  # zeroes whole groups in `net`; shapes stay
        assert {n: t.shape for n, t in net.state_dict().items()} == shapes
        assert masked.masks and all(not bool(m.all()) for m in masked.masks.values())
        expected = outputs(net, probe)
        assert _close(expected, outputs(masked.compressed, probe)), (model, name)  # the copy mask() removed
        pruner.remove(plan)  # and now the model itself
        assert _close(expected, outputs(net, probe)), (model, name)
        macs = count_complexity(net, shape).macs
        assert macs < macs_before and macs == count_complexity(masked.compressed, shape).macs, (model, name)


def test_pruner_plans_for_a_macs_target():
    spec = _spec("resnet20")
    torch.manual_seed(0)
    model = build_model(spec)
    pruner = Pruner(model, get_criterion("l1"), Selection(), example_input=example_input(spec))
    plan = pruner.plan_for_macs(0.5)
    before = count_complexity(model, (3, 16, 16)).macs
    pruner.remove(plan)
    assert 0.5 <= 1 - count_complexity(model, (3, 16, 16)).macs / before <= 0.56
    assert plan.rate is not None and 0 < plan.rate < 1


def test_pruner_weight_plans_mask_but_never_remove():
    spec = _spec("conv2")
    model = build_model(spec)
    pruner = Pruner(model, get_criterion("magnitude"), Selection(rate=0.5), example_input=example_input(spec), granularity="weight")
    plan = pruner.plan()
    masks = pruner.mask(plan).masks
    assert masks["features.0.weight"].float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (model.features[0].weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(PruneCliError, match="weight-level"):
        pruner.remove(plan)
    with pytest.raises(OptionError, match="granularity"):
        Pruner(model, get_criterion("geomedian"), example_input=example_input(spec), granularity="weight")


def test_plan_zeroed_finds_exactly_the_masked_channels():
    spec = _spec("resnet20")
    model = build_model(spec).eval()
    pruner = Pruner(model, get_criterion("l2"), Selection(rate=0.25), example_input=example_input(spec))
    plan = pruner.plan()
    pruner.mask(plan)
    zeroed = Pruner(model, example_input=example_input(spec)).plan_zeroed()
    want = {p.unit.root: sorted(p.prune.tolist()) for p in plan.pruned}
    got = {p.unit.root: sorted(p.prune.tolist()) for p in zeroed.pruned}
    assert got == want


def test_criteria_take_their_hyperparameters_in_the_constructor():
    assert get_criterion("geomedian", mix_norm=0.1).mix_norm == 0.1
    assert get_criterion("random", seed=3).seed == 3
    with pytest.raises(OptionError) as err:
        get_criterion("l1", mix_norm=0.1)
    assert "geomedian" in str(err.value) and set(err.value.keys) == {"mix_norm"}
    with pytest.raises(OptionError, match=r"\[0, 1\]"):
        get_criterion("geomedian", mix_norm=2.0)


# ---------------------------------------------------------------------------- the Trainer


class CountEvents(Callback):
    """Counts every event and keeps a running sum of the loss: state that must survive a resume."""

    key = "count"
    EVENTS = ("on_fit_start", "on_epoch_start", "after_backward", "after_step", "on_epoch_end", "before_save", "after_save", "on_fit_end")

    def __init__(self):
        self.counts = {e: 0 for e in self.EVENTS}
        self.loss_sum = 0.0
        self.saw_prefix = False

    def _count(self, event: str, state: FitState) -> None:
        self.counts[event] += 1
        self.saw_prefix |= any(n.startswith("module.") for n, _ in state.model.named_parameters())

    def on_fit_start(self, state):
        self._count("on_fit_start", state)

    def on_epoch_start(self, state):
        self._count("on_epoch_start", state)

    def after_backward(self, state):
        self._count("after_backward", state)
        assert all(p.grad is not None for p in state.model.parameters())

    def after_step(self, state):
        self._count("after_step", state)

    def on_epoch_end(self, state):
        self._count("on_epoch_end", state)
        self.loss_sum += state.train_stats.loss

    def before_save(self, state):
        self._count("before_save", state)

    def after_save(self, state):
        self._count("after_save", state)

    def on_fit_end(self, state):
        self._count("on_fit_end", state)

    def state_dict(self):
        return {"counts": dict(self.counts), "loss_sum": self.loss_sum}

    def load_state_dict(self, state):
        self.counts, self.loss_sum = dict(state["counts"]), state["loss_sum"]


class KillAfter(Callback):
    """A kill right after epoch ``n``'s checkpoint (it is not part of the run's state)."""

    key = "kill"

    def __init__(self, n: int):
        self.n = n

    def after_save(self, state):
        if state.epoch == self.n:
            raise KeyboardInterrupt


CFG = dict(epochs=3, batch_size=64, lr=0.05, device="cpu", schedule="multistep", milestones=[1, 2])
SPEC = ModelSpec("resnet20", 3, 10, 8)  # BatchNorm, momentum and a multistep schedule all carry state


def _fresh():
    torch.manual_seed(0)
    return build_model(SPEC)


def _data():
    return get_dataset("synthetic", image_size=8)


def test_trainer_callback_state_survives_a_kill_and_resume_is_bit_identical():
    cfg = TrainingOptions(**CFG)
    saved = {}

    def save(state: FitState) -> None:  # what a checkpoint holds, in memory
        saved["weights"] = copy.deepcopy(state.model.state_dict())
        saved["resume"] = copy.deepcopy(state.resume_state())

    straight_counter = CountEvents()
    straight = _fresh()
    Trainer(cfg).fit(straight, _data(), [straight_counter])

    killed = _fresh()
    with pytest.raises(TrainingInterrupted) as err:
        Trainer(cfg).fit(killed, _data(), [CountEvents(), KillAfter(1)], save=save)
    assert err.value.saved_epoch == 1 and saved["resume"]["epoch"] == 1

    resumed, counter = _fresh(), CountEvents()
    resumed.load_state_dict(saved["weights"])
    state = Trainer(cfg).fit(resumed, _data(), [counter], save=save, resume=saved["resume"])

    assert state.epoch == 3 and state.resumed
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert counter.loss_sum == straight_counter.loss_sum  # the callback's own state carried over
    steps = straight_counter.counts["after_step"]
    assert steps == 3 * len(range(0, 512, 64))
    assert counter.counts["after_step"] == steps and counter.counts["after_backward"] == steps
    assert counter.counts["on_epoch_end"] == straight_counter.counts["on_epoch_end"] == 3
    assert counter.counts["on_fit_start"] == 2  # started twice: before the kill and on resume
    assert not counter.saw_prefix  # callbacks see the unwrapped model


class PruneAtEpoch(Callback):
    """Changes the masks during training, as gradual pruning will."""

    key = "prune_at"

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, state):
        if state.epoch == self.epoch:
            w = state.model.conv1.weight
            mask = torch.ones_like(w, dtype=torch.bool)
            mask[:4] = False
            state.set_masks({**state.masks, "conv1.weight": mask})


def test_trainer_owns_the_masks_enforces_changes_and_resets_the_best_record():
    from prunecli.engine.callbacks import BestCheckpoint

    cfg = TrainingOptions(**CFG)
    saved_masks, best_writes = [], []
    best = BestCheckpoint(write=lambda state: best_writes.append(state.epoch))
    model = _fresh()
    first = {"layer1.0.conv1.weight": torch.ones_like(model.layer1[0].conv1.weight, dtype=torch.bool)}
    first["layer1.0.conv1.weight"][0] = False
    state = Trainer(cfg).fit(
        model, _data(), [PruneAtEpoch(2), best], masks=first, save=lambda s: saved_masks.append(sorted(s.masks))
    )
    assert saved_masks[0] == ["layer1.0.conv1.weight"] and saved_masks[-1] == ["conv1.weight", "layer1.0.conv1.weight"]
    assert torch.count_nonzero(model.conv1.weight[:4]) == 0  # enforced after every later step
    assert torch.count_nonzero(model.layer1[0].conv1.weight[0]) == 0
    assert state.masks_version == 1
    # epochs 1 and 2 were measured with the first masks: only epoch 3 compares with what is saved now
    assert best.masks_version == 1 and best.epoch == 3
    assert best_writes and best_writes[-1] == best.epoch


def test_masks_a_callback_sets_are_enforced_even_when_the_run_starts_without_any():
    cfg = TrainingOptions(**{**CFG, "epochs": 2})
    model, saved = _fresh(), []
    state = Trainer(cfg).fit(model, _data(), [PruneAtEpoch(1)], save=lambda s: saved.append(copy.deepcopy(s.model.conv1.weight)))
    assert [type(cb).__name__ for cb in state.callbacks] == ["EnforceMasks", "PruneAtEpoch"]
    assert torch.count_nonzero(saved[0][:4]) == 0  # the checkpoint of the epoch that set the masks matches them
    assert torch.count_nonzero(model.conv1.weight[:4]) == 0 and torch.count_nonzero(model.conv1.weight[4:]) > 0


def test_trainer_adds_mask_enforcement_once_and_refuses_duplicate_keys():
    cfg = TrainingOptions(**{**CFG, "epochs": 0})
    model = _fresh()
    mask = torch.ones_like(model.conv1.weight, dtype=torch.bool)
    mask[0] = False
    state = Trainer(cfg).fit(model, _data(), [EnforceMasks()], masks={"conv1.weight": mask})
    assert [type(cb).__name__ for cb in state.callbacks] == ["EnforceMasks"]
    assert torch.count_nonzero(model.conv1.weight[0]) == 0
    with pytest.raises(ValueError, match="share a state key"):
        Trainer(cfg).fit(_fresh(), _data(), [CountEvents(), CountEvents()])


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_prune_on_cuda_calibrates_there(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from pruning_helpers import compress, make_checkpoint

    from prunecli.stages.prune import prune_checkpoint

    seen = []
    original = Pruner.__init__

    def spy(self, model, *args, **kwargs):
        original(self, model, *args, **kwargs)
        seen.append((next(model.parameters()).device.type, [x.device.type for x, _ in self.calibration or []]))

    src = make_checkpoint(tmp_path / "b.pt", "resnet20", image_size=16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Pruner, "__init__", spy)
        cuda = prune_checkpoint(src, PruneConfig(method="taylor", rate=0.4, device="cuda", calib_batches=2), output=tmp_path / "g.pt")
    assert seen == [("cuda", ["cuda", "cuda"])]
    cpu = prune_checkpoint(src, PruneConfig(method="l1", rate=0.4, device="cpu"), output=tmp_path / "c.pt")
    gpu = prune_checkpoint(src, PruneConfig(method="l1", rate=0.4, device="cuda"), output=tmp_path / "l.pt")
    assert [r.after for r in cpu.rows] == [r.after for r in gpu.rows]
    assert cuda.macs_after < cuda.macs_before
    assert compress(tmp_path / "g.pt", tmp_path / "gc.pt").max_abs_diff < 1e-4
    direct = prune_checkpoint(src, PruneConfig(method="l1", rate=0.4, device="cuda", compress=True), output=tmp_path / "d.pt")
    assert direct.max_abs_diff is not None and direct.max_abs_diff < 1e-4  # checked on the GPU, in full precision
