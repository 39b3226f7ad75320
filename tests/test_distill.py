"""Knowledge distillation during fine-tuning (Hinton et al., arXiv:1503.02531): the loss,
the Trainer's loss hook, ``finetune --teacher PATH|lineage``, bad teachers, resume."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import TINY, final_error_line, one_line_error

from prunecli.checkpoint import load_checkpoint, sha256_file
from prunecli.engine.callbacks import BestCheckpoint
from prunecli.engine.distill import Distillation, distillation_loss
from prunecli.engine.trainer import Callback, EnforceMasks, _loss_hook

FT = ["--device", "cpu", "--batch-size", "64", "--steps-per-epoch", "2"]

# ---------------------------------------------------------------------------- the loss


def _softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def _by_hand(student, teacher, labels, alpha, t, smoothing=0.0):
    """alpha * T^2 * mean_i KL(p_i || q_i) + (1 - alpha) * mean_i CE_i, written out."""
    kl = ce = 0.0
    for s, te, y in zip(student, teacher, labels):
        p, q = _softmax(te, t), _softmax(s, t)
        kl += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q))
        q1 = _softmax(s, 1.0)
        k = len(s)
        target = [smoothing / k + (1.0 - smoothing) * (j == y) for j in range(k)]
        ce += -sum(tj * math.log(qj) for tj, qj in zip(target, q1))
    n = len(labels)
    return alpha * t * t * kl / n + (1.0 - alpha) * ce / n


STUDENT = [[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]]
TEACHER = [[1.5, 0.0, -0.5], [-1.0, 2.0, 1.0]]
LABELS = [0, 2]


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.9])
@pytest.mark.parametrize("t", [1.0, 4.0])
def test_distillation_loss_is_hintons_formula(alpha, t):
    got = distillation_loss(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(LABELS), alpha, t)
    assert got.item() == pytest.approx(_by_hand(STUDENT, TEACHER, LABELS, alpha, t), rel=1e-12)


def test_label_smoothing_applies_to_the_hard_term_only():
    args = (torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(LABELS))
    got = distillation_loss(*args, 0.9, 4.0, label_smoothing=0.1)
    assert got.item() == pytest.approx(_by_hand(STUDENT, TEACHER, LABELS, 0.9, 4.0, smoothing=0.1), rel=1e-12)
    assert distillation_loss(*args, 1.0, 4.0, label_smoothing=0.1).item() == pytest.approx(distillation_loss(*args, 1.0, 4.0).item(), rel=1e-12)
    # a student that copies the teacher pays nothing for the soft term
    assert distillation_loss(args[1], args[1], args[2], 1.0, 4.0).item() == pytest.approx(0.0, abs=1e-12)


def test_loss_hook_is_absent_unless_a_callback_overrides_it_and_chains_in_order():
    assert _loss_hook([EnforceMasks(), BestCheckpoint()], state=None) is None  # plain training: no per-step call

    class Add(Callback):
        def __init__(self, key, value):
            self.key, self.value = key, value

        def loss(self, state, inputs, outputs, labels, loss):
            return loss * 2 + self.value

    hook = _loss_hook([EnforceMasks(), Add("a", 1.0), Add("b", 10.0)], state=None)
    assert hook(None, None, None, torch.tensor(1.0)).item() == (1 * 2 + 1) * 2 + 10

    # the callback's loss is distillation_loss with the trainer's cross-entropy as the hard term
    student, teacher, labels = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    lookup = torch.nn.Embedding.from_pretrained(teacher)  # the teacher maps input i to TEACHER[i]
    kd = Distillation(lookup, alpha=0.9, temperature=4.0)
    ce = torch.nn.functional.cross_entropy(student, labels)
    got = kd.loss(None, torch.tensor([0, 1]), student, labels, ce)
    assert got.item() == pytest.approx(distillation_loss(student, teacher, labels, 0.9, 4.0).item(), rel=1e-6)


# ---------------------------------------------------------------------------- finetune --teacher


@pytest.fixture
def watch_teacher(monkeypatch):
    """Records, for every teacher forward pass: training mode, grad mode, device."""
    seen: list[tuple[bool, bool, str]] = []
    teachers: list[torch.nn.Module] = []
    original = Distillation.on_fit_start

    def on_fit_start(self, state):
        original(self, state)
        teachers.append(self.teacher)
        self.teacher.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled(), str(o.device))))

    monkeypatch.setattr(Distillation, "on_fit_start", on_fit_start)
    return seen, teachers


def test_finetune_with_teacher_runs_in_eval_mode_and_leaves_the_teacher_alone(cli, tmp_path, tiny_base, watch_teacher):
    seen, teachers = watch_teacher
    # a teacher of another architecture, with BatchNorm: in train mode its running statistics would move
    teacher = cli("train", *TINY, "--model", "resnet20", "--epochs", "0", "-o", tmp_path / "teacher.pt").path
    sha = sha256_file(teacher)
    plain = cli("finetune", tiny_base, *FT, "--epochs", "1", "-o", tmp_path / "plain.pt")
    assert plain.code == 0, plain.stderr
    assert not seen
    kd = cli("finetune", tiny_base, *FT, "--epochs", "1", "--teacher", teacher, "--kd-temperature", "2", "-o", tmp_path / "kd.pt")
    assert kd.code == 0, kd.stderr
    assert "distilling from" in kd.stderr and sha[:12] in kd.stderr

    assert len(seen) == 2 and all(s == (False, False, "cpu") for s in seen)  # one pass per step, eval mode, no grad
    stored = load_checkpoint(teacher).state_dict
    after = teachers[0].state_dict()
    assert all(torch.equal(stored[k], after[k]) for k in stored)  # running stats included
    assert sha256_file(teacher) == sha

    loss = [json.loads((tmp_path / f"{name}.metrics.jsonl").read_text())["train_loss"] for name in ("plain", "kd")]
    assert loss[0] != loss[1]
    ck = load_checkpoint(kd.path)
    assert ck.lineage[-1]["options"]["teacher"] == str(teacher) and ck.lineage[-1]["options"]["kd-temperature"] == 2.0
    assert ck.lineage[-1]["teacher"] == {"path": str(teacher), "sha256": sha}
    assert "teacher" not in ck.extra

    # alpha 0 is plain fine-tuning, bit for bit (the hook adds nothing, the teacher is skipped)
    zero = cli("finetune", tiny_base, *FT, "--epochs", "1", "--teacher", teacher, "--kd-alpha", "0", "-o", tmp_path / "zero.pt")
    assert zero.code == 0, zero.stderr
    a, b = load_checkpoint(plain.path).state_dict, load_checkpoint(zero.path).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def _pruned(cli, tmp_path, tiny_base):
    base = tmp_path / "base.pt"
    shutil.copyfile(tiny_base, base)
    pruned = cli("prune", base, "--method", "l1", "--rate", "0.5", "-o", tmp_path / "p.pt")
    assert pruned.code == 0, pruned.stderr
    return base, pruned.path


def test_teacher_lineage_finds_the_dense_ancestor(cli, tmp_path, tiny_base):
    base, pruned = _pruned(cli, tmp_path, tiny_base)
    # train -> prune -> finetune -> finetune: the teacher is still the file prune read
    ft = cli("finetune", pruned, *FT, "--epochs", "1", "-o", tmp_path / "ft.pt").path
    r = cli("finetune", ft, *FT, "--epochs", "1", "--teacher", "lineage", "-o", tmp_path / "kd.pt")
    assert r.code == 0, r.stderr
    entry = load_checkpoint(r.path).lineage[-1]
    assert [e["command"] for e in load_checkpoint(r.path).lineage] == ["train", "prune", "finetune", "finetune"]
    assert entry["options"]["teacher"] == "lineage"
    assert entry["teacher"] == {"path": str(base), "sha256": sha256_file(base)}
    assert (tmp_path / "kd.config.yaml").read_text().count("teacher: lineage") == 1


def _nothing_written(tmp_path, before):
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_teachers_are_one_line_and_write_nothing(cli, tmp_path, tiny_base):
    base, pruned = _pruned(cli, tmp_path, tiny_base)
    wide = cli("train", *TINY, "--image-size", "16", "--epochs", "0", "-o", tmp_path / "wide.pt").path
    five = cli("train", *TINY, "--num-classes", "5", "--epochs", "0", "-o", tmp_path / "five.pt").path
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    out = tmp_path / "out.pt"
    before = sorted(p.name for p in tmp_path.iterdir())

    def refused(*args, code=1):
        line = one_line_error(cli("finetune", *args, *FT, "--epochs", "1", "-o", out), code=code)
        _nothing_written(tmp_path, before)
        return line

    assert "no such file" in refused(pruned, "--teacher", tmp_path / "missing.pt")
    assert "text file" in refused(pruned, "--teacher", tmp_path / "notes.txt")
    line = refused(pruned, "--teacher", wide)
    assert "16x16" in line and "8x8" in line
    assert "5 classes" in refused(pruned, "--teacher", five)
    assert "no prune or compress stage" in refused(base, "--teacher", "lineage")  # train only: no dense ancestor
    assert "--teacher" in refused(pruned, "--kd-alpha", "0.5", code=2)  # distillation options without a teacher
    assert "--teacher" in refused(pruned, "--kd-temperature", "2", code=2)
    assert "> 0" in refused(pruned, "--teacher", base, "--kd-temperature", "0", code=2)
    refused(pruned, "--teacher", base, "--kd-alpha", "1.5", code=2)

    shutil.copyfile(five, base)  # the ancestor replaced since prune read it
    assert "changed since `prune` read it" in refused(pruned, "--teacher", "lineage")
    base.unlink()
    before.remove("base.pt")
    assert "is gone" in refused(pruned, "--teacher", "lineage")


def test_resume_of_a_distillation_run_is_bit_identical(cli, tmp_path, tiny_base):
    _, pruned = _pruned(cli, tmp_path, tiny_base)
    args = [pruned, *FT, "--epochs", "2", "--teacher", "lineage", "--kd-alpha", "0.7"]
    straight = cli("finetune", *args, "-o", tmp_path / "straight.pt")
    assert straight.code == 0, straight.stderr
    cut = cli("finetune", *args, "-o", tmp_path / "cut.pt", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"})
    assert "epoch 1/2" in final_error_line(cut, code=130)
    resumed = cli("finetune", "--resume", tmp_path / "cut.pt")
    assert resumed.code == 0, resumed.stderr
    assert "distilling from" in resumed.stderr  # the stored options bring the teacher back
    a, b = load_checkpoint(straight.path), load_checkpoint(resumed.path)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), "resumed weights differ"
    assert a.metrics["loss"] == b.metrics["loss"]
    assert b.lineage[-1]["teacher"] == a.lineage[-1]["teacher"]


def test_resume_refuses_a_teacher_that_changed(cli, tmp_path, tiny_base):
    teacher = tmp_path / "teacher.pt"
    shutil.copyfile(tiny_base, teacher)
    cut = cli("finetune", tiny_base, *FT, "--epochs", "2", "--teacher", teacher, "-o", tmp_path / "cut.pt", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"})
    assert cut.code == 130, cut.stderr
    shutil.copyfile(tiny_base.with_name("base.best.pt"), teacher)
    kept = sha256_file(tmp_path / "cut.pt")
    line = final_error_line(cli("finetune", "--resume", tmp_path / "cut.pt"), code=1)
    assert "changed since this run started" in line
    assert sha256_file(tmp_path / "cut.pt") == kept
