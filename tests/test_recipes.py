"""Recipes (issue 9): every shipped recipe checks and smoke-runs; broken recipes fail in one
line naming file, stage and key; an interrupted run continues to the same result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import final_error_line, one_line_error
from prunecli.checkpoint import load_checkpoint
from prunecli.recipes import library

SHIPPED = sorted(library.shipped())


def test_the_settings_the_issue_names_are_shipped():
    for name in (
        "quickstart/digits-conv4-geomedian",
        "seed-002/vgg16-cifar10-l1-50",
        "seed-002/vgg16-cifar100-l1-50",
        "l1-norm/vgg16-cifar10-A",
        "l1-norm/resnet56-cifar10-A",
        "l1-norm/resnet56-cifar10-B",
        "l1-norm/resnet110-cifar10-A",
        "l1-norm/resnet110-cifar10-B",
        "fpgm/resnet56-cifar10-40",
        "fpgm/resnet56-cifar10-40-mix",
        "fpgm/resnet50-imagenet-30",
        "fpgm/resnet50-imagenet-40",
        "slimming/vgg19-cifar10-70",
        "slimming/preresnet164-cifar10-40",
        "slimming/preresnet164-cifar10-60",
        "slimming/densenet40-cifar10-40",
        "slimming/densenet40-cifar10-70",
        "sensitivity-pruner/resnet50-cifar10",
        "sensitivity-pruner/resnet50-cifar100",
        "sensitivity-pruner/vgg16-cifar10",
        "sensitivity-pruner/vgg16-cifar100",
        "sensitivity-pruner/mobilenetv2-imagenet",
        "torch-pruning/resnet56-cifar10-group-l1",
        "torch-pruning/resnet56-cifar10-group-bn",
        "thinet/resnet50-imagenet-50",
        "thinet/resnet50-imagenet-70",
        "cp/resnet56-cifar10-50",
    ):
        assert name in SHIPPED, name


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_passes_check(cli, name):
    """Validates, and the architecture-only numbers (random weights) match the header."""
    r = cli("recipe", "check", name)
    assert r.code == 0, r.stderr
    assert r.stdout.strip() and "outside" not in r.stdout  # the report is on stdout (check writes no checkpoint)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_smoke_runs(cli, tmp_path, name):
    run_dir = tmp_path / "run"
    r = cli("recipe", "run", name, "--smoke", "-o", run_dir)
    assert r.code == 0, r.stderr
    assert r.path == run_dir
    recipe = library.load(name)
    for stage in recipe.checkpoint_stages:
        assert (run_dir / f"{stage.name}.pt").is_file(), stage.name
    doc = json.loads((run_dir / "results.json").read_text())
    assert [row["stage"] for row in doc["rows"]] == [s.name for s in recipe.checkpoint_stages]
    assert doc["smoke"] is True
    assert (run_dir / "results.csv").read_text().startswith("stage,command,top1")
    assert (run_dir / "accuracy_vs_macs.png").read_bytes()[:4] == b"\x89PNG"


def test_li_et_al_check_reproduces_the_printed_columns(cli):
    r = cli("recipe", "check", "l1-norm/resnet56-cifar10-B")
    assert r.code == 0
    assert "90.91M" in r.stdout and "27.56" in r.stdout  # paper: 9.09e7, 27.6%


TINY_RECIPE = """
setting: "conv2 on synthetic 8x8, l1 at 50%, fine-tune"
variables:
  epochs: 2
stages:
  - name: base
    command: train
    options: {model: conv2, dataset: synthetic, image-size: 8, epochs: "${epochs}", batch-size: 64, device: cpu, lr: 0.02}
  - name: prune
    command: prune
    options: {method: l1, rate: 0.5}
  - name: compress
    command: compress
    options: {latency: false}
  - name: finetune
    command: finetune
    options: {epochs: "${epochs}", batch-size: 64, device: cpu}
  - name: compare
    command: evaluate
    inputs: [base, finetune]
    options: {latency: false, device: cpu}
expected:
  - {metric: macs_reduction, value: 74.0, tolerance: 0.1}
  - {metric: top1, stage: base, value: 50, tolerance: 50}
"""


def _tiny(tmp_path: Path, text: str = TINY_RECIPE) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def _weights(path: Path) -> dict:
    return {k: v.clone() for k, v in load_checkpoint(path).state_dict.items()}


def test_run_writes_reports_and_a_rerun_skips_finished_stages(cli, tmp_path):
    recipe = _tiny(tmp_path)
    run_dir = tmp_path / "run"
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu")
    assert r.code == 0, r.stderr
    doc = json.loads((run_dir / "results.json").read_text())
    reduction = next(e for e in doc["expected"] if e["metric"] == "macs_reduction")
    assert reduction["within"] is True
    assert {row["stage"] for row in doc["rows"]} == {"base", "prune", "compress", "finetune"}
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.pt")}
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu")
    assert r.code == 0 and r.stderr.count("up to date") == 4
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.glob("*.pt")} == before
    # a changed variable re-runs what depends on it: everything downstream of base
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu", "--set", "epochs=1")
    assert r.code == 0 and "up to date" not in r.stderr


def test_interrupted_run_continues_to_the_same_result(cli, tmp_path):
    recipe = _tiny(tmp_path)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli("recipe", "run", recipe, "-o", straight, "--device", "cpu").code == 0
    # Ctrl-C right after the finetune stage's first epoch is saved
    r = cli("recipe", "run", recipe, "-o", resumed, "--device", "cpu", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "1"})
    assert r.code == 130
    assert (resumed / "base.pt").is_file() and not (resumed / "results.json").exists()
    r = cli("recipe", "run", recipe, "-o", resumed, "--device", "cpu")
    assert r.code == 0, r.stderr
    assert "continuing the interrupted run" in r.stderr
    for stage in ("base", "prune", "compress", "finetune"):
        a, b = _weights(straight / f"{stage}.pt"), _weights(resumed / f"{stage}.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage


def test_from_stage_reruns_that_stage_and_later_ones(cli, tmp_path):
    recipe = _tiny(tmp_path)
    run_dir = tmp_path / "run"
    assert cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu").code == 0
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu", "--from", "compress")
    assert r.code == 0 and r.stderr.count("up to date") == 2  # base and prune
    assert "--from nope" in one_line_error(cli("recipe", "run", recipe, "-o", run_dir, "--from", "nope"))


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace("setting:", "settings:"), "unknown key 'settings'"),
        (lambda t: t.replace("method: l1", "method: l1, learning-rate: 3"), "stage 'prune': key 'learning-rate': `prunecli prune` has no option"),
        (lambda t: t.replace("inputs: [base, finetune]", "inputs: [base, nowhere]"), "stage 'compare': key 'input': 'nowhere' is not an earlier stage"),
        (lambda t: t.replace("value: 74.0, tolerance: 0.1", "value: 74.0"), "key 'expected[1].tolerance': an expectation needs a tolerance"),
        (lambda t: t.replace("rate: 0.5}", "rate: 1.5}"), "stage 'prune': key 'rate': rate 1.5"),
        (lambda t: t.replace('"${epochs}", batch-size: 64, device: cpu, lr', '"${epoch}", batch-size: 64, device: cpu, lr'), "unknown variable ${epoch}"),
        (lambda t: t.replace("method: l1, rate: 0.5", "method: l1, rate: 0.5, output: x.pt"), "the recipe runner sets output itself"),
        (lambda t: t.replace("command: compress", "command: compres"), "stage 'compress': key 'command'"),
    ],
)
def test_broken_recipe_is_one_line_naming_file_stage_and_key(cli, tmp_path, edit, expected):
    recipe = _tiny(tmp_path, edit(TINY_RECIPE))
    for command in ("check", "run"):
        args = ["recipe", command, recipe] + (["-o", tmp_path / "run"] if command == "run" else [])
        msg = one_line_error(cli(*args))
        assert str(recipe) in msg and expected in msg, msg
    assert not (tmp_path / "run").exists()


def test_set_unknown_variable_and_unknown_recipe(cli, tmp_path):
    recipe = _tiny(tmp_path)
    assert "has no variable 'epoch'" in one_line_error(cli("recipe", "check", recipe, "--set", "epoch=3"), 2)
    assert "did you mean 'fpgm/resnet56-cifar10-40'" in one_line_error(cli("recipe", "check", "fpgm/resnet56-cifar10-4"))


def test_list_and_plot(cli, tmp_path):
    r = cli("recipe", "list", "--json")
    names = {row["name"] for row in json.loads(r.stdout)}
    assert names == set(SHIPPED)
    recipe = _tiny(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli("recipe", "run", recipe, "-o", a, "--device", "cpu").code == 0
    assert cli("recipe", "run", recipe, "-o", b, "--device", "cpu", "--set", "epochs=1").code == 0
    out = tmp_path / "both.png"
    r = cli("plot", a, b, "-o", out)
    assert r.code == 0 and r.path == out and out.read_bytes()[:4] == b"\x89PNG"
    assert "no readable results.json" in one_line_error(cli("plot", tmp_path, "-o", tmp_path / "x.png"))


def test_a_train_stage_can_start_from_an_existing_checkpoint(cli, tmp_path, tiny_base):
    text = TINY_RECIPE.replace("variables:\n", "variables:\n  checkpoint: null\n").replace(
        "  - name: base\n    command: train\n", '  - name: base\n    command: train\n    from: "${checkpoint}"\n'
    )
    recipe = _tiny(tmp_path, text)
    run_dir = tmp_path / "run"
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu", "--set", f"checkpoint={tiny_base}")
    assert r.code == 0, r.stderr
    assert (run_dir / "base.pt").read_bytes() == tiny_base.read_bytes() and "not trained here" in r.stderr
    other = tmp_path / "conv4.pt"
    assert cli("train", "--dataset", "synthetic", "--image-size", "8", "--model", "conv4", "--epochs", "0", "-o", other).code == 0
    msg = final_error_line(cli("recipe", "run", recipe, "-o", tmp_path / "run2", "--set", f"checkpoint={other}"), 1)
    assert "its model is 'conv4', the stage trains 'conv2'" in msg


def test_review_findings(cli, tmp_path, tiny_base, monkeypatch):
    """Found by a review: stale checkpoints never continue; from: checks the architecture; names are
    checked before any stage runs; evaluate stages are reported."""
    recipe = _tiny(tmp_path, TINY_RECIPE.replace("variables:\n", "variables:\n  ft: 1\n").replace(
        'options: {epochs: "${epochs}", batch-size: 64, device: cpu}', 'options: {epochs: "${ft}", batch-size: 64, device: cpu}'))
    run_dir = tmp_path / "run"
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu")
    assert r.code == 0 and "stage compare (evaluate)" in r.stderr
    assert set(json.loads((run_dir / "results.json").read_text())["evaluations"]) == {"compare"}
    # new options for finetune, interrupted before its first new checkpoint: the old one must not be "continued"
    import prunecli.engine.trainer as trainer

    real = trainer.train_one_epoch

    def ctrl_c_in_the_first_epoch(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train_one_epoch", ctrl_c_in_the_first_epoch)
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu", "--set", "ft=3")
    assert r.code == 130 and "no checkpoint was written" in r.stderr
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    r = cli("recipe", "run", recipe, "-o", run_dir, "--device", "cpu", "--set", "ft=3")
    assert r.code == 0, r.stderr
    assert "continuing" not in r.stderr
    assert load_checkpoint(run_dir / "finetune.pt").metrics["epoch"] == 3
    # from: a conv2 of another input size is not the architecture the stage trains
    other = tmp_path / "other.pt"
    assert cli("train", "--dataset", "synthetic", "--image-size", "16", "--model", "conv2", "--epochs", "0", "-o", other).code == 0
    text = TINY_RECIPE.replace("variables:\n", "variables:\n  checkpoint: null\n").replace(
        "  - name: base\n    command: train\n", '  - name: base\n    command: train\n    from: "${checkpoint}"\n')
    recipe2 = tmp_path / "from.yaml"
    recipe2.write_text(text)
    msg = final_error_line(cli("recipe", "run", recipe2, "-o", tmp_path / "r2", "--set", f"checkpoint={other}"), 1)
    assert "its image size is 16, the stage trains 8" in msg
    assert "key 'from': " in one_line_error(cli("recipe", "check", recipe2, "--set", f"checkpoint={tmp_path / 'missing.pt'}"))
    # unknown names are found at load time, before the base trains
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY_RECIPE.replace("method: l1", "method: bogus"))
    assert "stage 'prune': key 'method': unknown method 'bogus'" in one_line_error(cli("recipe", "run", bad, "-o", tmp_path / "r3"))
    assert not (tmp_path / "r3").exists()
    bad.write_text(TINY_RECIPE.replace("expected:\n  - {metric: macs_reduction, value: 74.0, tolerance: 0.1}\n  - {metric: top1, stage: base, value: 50, tolerance: 50}\n", "expected: 5\n"))
    assert "key 'expected': expected a list" in one_line_error(cli("recipe", "check", bad))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "cannot create the run directory" in one_line_error(cli("recipe", "run", recipe, "-o", afile / "sub"))
