"""train / finetune / evaluate / info end to end, resume, interrupts, seeds, masks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TINY, default_sigint, final_error_line, one_line_error, run_process

from prunecli.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, sha256_file


def test_digits_conv4_short_run_learns(cli, tmp_path):
    # the README quickstart runs 15 epochs (>= 95%); 4 epochs must already be far above chance
    r = cli("train", "--model", "conv4", "--dataset", "digits", "--epochs", "4", "--device", "cpu", "-o", tmp_path / "d.pt")
    assert r.code == 0, r.stderr
    assert load_checkpoint(r.path).metrics["top1"] >= 85.0


@pytest.mark.slow
def test_digits_quickstart_reaches_95(cli, tmp_path):
    r = cli("train", "--model", "conv4", "--dataset", "digits", "--epochs", "15", "-o", tmp_path / "d.pt")
    assert r.code == 0, r.stderr
    assert load_checkpoint(r.path).metrics["top1"] >= 95.0


def test_pipeline_chain_stdout_is_only_paths(cli, tmp_path, tiny_base):
    r = cli("finetune", tiny_base, "--epochs", "1", "--lr", "0.01", "-o", tmp_path / "ft.pt")
    assert r.code == 0, r.stderr
    assert r.stdout == f"{tmp_path / 'ft.pt'}\n"  # nothing but the path
    assert "epoch" in r.stderr  # progress goes to stderr

    ev = cli("evaluate", tiny_base, r.path, "--json", "--repeats", "2")
    assert ev.code == 0, ev.stderr
    rows = json.loads(ev.stdout)
    assert [row["checkpoint"] for row in rows] == [str(tiny_base), str(r.path)]
    for row in rows:
        assert {"checkpoint", "top1", "top5", "loss", "macs", "params", "latency_ms"} <= set(row)
        assert 0 <= row["top1"] <= row["top5"] <= 100 and row["macs"] > 0 and row["latency_ms"] > 0
    assert rows[0]["params"] == rows[1]["params"]

    info = json.loads(cli("info", r.path, "--json").stdout)
    assert [e["command"] for e in info["lineage"]] == ["train", "finetune"]
    assert info["lineage"][1]["parent"] == str(tiny_base)
    assert info["lineage"][1]["parent_sha256"] == sha256_file(tiny_base)

    # evaluate and info write no checkpoint: their tables are the result, on stdout (tests/test_reports.py)
    t = cli("evaluate", tiny_base, "--repeats", "2")
    assert t.code == 0 and "top-1" in t.stdout and "per-layer widths" in t.stdout and "top-1" not in t.stderr
    t = cli("info", r.path, "--layers")
    assert t.code == 0 and "lineage" in t.stdout and "classifier.4" in t.stdout and t.stderr == ""


def test_stdin_dash_reads_path(cli, tmp_path, tiny_base):
    r = cli("finetune", "-", "--epochs", "0", "-o", tmp_path / "a.pt", stdin=f"{tiny_base}\n")
    assert r.code == 0, r.stderr
    assert r.path == tmp_path / "a.pt"
    r = cli("info", "-", "--json", stdin=f"{r.path}\n")
    assert json.loads(r.stdout)["stage"] == "finetune"


def test_real_shell_pipe(tmp_path, tiny_base):
    cmd = (
        f"{sys.executable} -m prunecli finetune {tiny_base} --epochs 0 -o {tmp_path / 'p.pt'} "
        f"| {sys.executable} -m prunecli finetune - --epochs 0 "
        f"| {sys.executable} -m prunecli info - --json"
    )
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lineage = json.loads(proc.stdout)["lineage"]
    assert [e["command"] for e in lineage] == ["train", "finetune", "finetune"]
    assert (tmp_path / "p.ft.pt").exists()  # default output name next to the input


def test_default_finetune_output_and_refusing_to_overwrite_input(cli, tmp_path, tiny_base):
    base = tmp_path / "base.pt"
    base.write_bytes(tiny_base.read_bytes())
    r = cli("finetune", base, "--epochs", "0")
    assert r.code == 0 and r.path == tmp_path / "base.ft.pt"
    line = one_line_error(cli("finetune", base, "--epochs", "0", "-o", base))
    assert "input checkpoint" in line


def test_epochs_zero_writes_initialised_model(cli, tmp_path):
    r = cli("train", *TINY, "--epochs", "0", "--seed", "3", "-o", tmp_path / "init.pt")
    assert r.code == 0, r.stderr
    ck = load_checkpoint(r.path)
    assert ck.metrics["epoch"] == 0 and ck.resume["epoch"] == 0
    torch.manual_seed(3)
    from prunecli.models import build_model

    fresh = build_model(ck.model).state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in ck.state_dict.items())


def test_side_files(cli, tmp_path):
    r = cli("train", *TINY, "--epochs", "3", "--eval-every", "2", "-o", tmp_path / "s.pt")
    assert r.code == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "s.metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    assert "test_top1" not in lines[0] and "test_top1" in lines[1] and "test_top1" in lines[2]
    assert (tmp_path / "s.config.yaml").exists()
    best = load_checkpoint(tmp_path / "s.best.pt")
    assert best.resume is None and best.metrics["top1"] == best.metrics["best_top1"]


def test_seed_determinism(cli, tmp_path):
    a = cli("train", *TINY, "--epochs", "2", "--seed", "1", "-o", tmp_path / "a.pt").path
    b = cli("train", *TINY, "--epochs", "2", "--seed", "1", "-o", tmp_path / "b.pt").path
    c = cli("train", *TINY, "--epochs", "2", "--seed", "2", "-o", tmp_path / "c.pt").path
    sa, sb, sc = (load_checkpoint(p).state_dict for p in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_resume_after_interrupt_equals_straight_run(cli, tmp_path):
    args = [*TINY, "--model", "resnet20", "--epochs", "4", "--lr", "0.05", "--schedule", "multistep", "--milestones", "1,3"]
    straight = cli("train", *args, "-o", tmp_path / "straight.pt")
    assert straight.code == 0, straight.stderr

    cut = cli("train", *args, "-o", tmp_path / "cut.pt", env={"PRUNECLI_INTERRUPT_AFTER_EPOCH": "2"})
    line = final_error_line(cut, code=130)
    assert "epoch 2/4" in line and "--resume" in line
    assert load_checkpoint(tmp_path / "cut.pt").resume["epoch"] == 2

    resumed = cli("train", "--resume", tmp_path / "cut.pt")
    assert resumed.code == 0, resumed.stderr
    assert resumed.path == tmp_path / "cut.pt"

    a, b = load_checkpoint(straight.path), load_checkpoint(resumed.path)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict), "resumed weights differ"
    ea = json.loads(cli("evaluate", straight.path, "--json", "--no-latency").stdout)
    eb = json.loads(cli("evaluate", resumed.path, "--json", "--no-latency").stdout)
    for key in ("top1", "top5", "loss", "macs", "params"):
        assert ea[key] == eb[key], key
    metrics = [json.loads(x) for x in (tmp_path / "cut.metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]
    assert load_checkpoint(resumed.path).lineage[0]["resumed"][0]["at_epoch"] == 2


def test_resume_can_extend_and_refuses_non_resumable(cli, tmp_path, tiny_base):
    r = cli("train", "--resume", tiny_base, "--epochs", "3", "-o", tmp_path / "more.pt")
    assert r.code == 0, r.stderr
    assert load_checkpoint(r.path).metrics["epoch"] == 3
    best = tiny_base.with_name("base.best.pt")
    assert "no resume state" in one_line_error(cli("train", "--resume", best))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_signal_mid_epoch_leaves_last_complete_checkpoint(tmp_path, sig):
    out = tmp_path / "run.pt"
    metrics = tmp_path / "run.metrics.jsonl"
    # an epoch long enough to be interrupted in the middle (about a second per epoch)
    cmd = [sys.executable, "-m", "prunecli", "train", "--model", "resnet20", "--dataset", "synthetic", "--image-size", "16", "--epochs", "50", "--device", "cpu", "--batch-size", "32", "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or not metrics.read_text().strip()):
        time.sleep(0.05)
    assert metrics.exists(), "the first epoch never finished"
    time.sleep(0.3)  # now somewhere inside epoch 2 (or 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err
        assert "--resume" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    ck = load_checkpoint(out)  # intact and loadable
    done = ck.resume["epoch"]
    assert 1 <= done < 50
    r = run_process(["train", "--resume", out, "--epochs", str(done + 1), "-o", tmp_path / "next.pt"])
    assert r.code == 0, r.stderr
    assert load_checkpoint(tmp_path / "next.pt").metrics["epoch"] == done + 1


def test_shuffle_labels_really_permutes(cli, tmp_path):
    from prunecli.data import get_dataset
    from prunecli.data.loaders import shuffle_labels

    split = get_dataset("digits").train
    a, b = shuffle_labels(split, seed=0), shuffle_labels(split, seed=0)
    c = shuffle_labels(split, seed=1)
    assert torch.equal(a.labels, b.labels)  # seeded
    assert not torch.equal(a.labels, c.labels)
    assert torch.equal(a.labels.sort().values, split.labels.sort().values)  # same label multiset
    assert (a.labels != split.labels).float().mean() > 0.8  # really shuffled (chance of keeping: ~10%)
    assert torch.equal(a.images, split.images)
    r = cli("train", *TINY, "--epochs", "1", "--shuffle-labels", "-o", tmp_path / "s.pt")
    assert r.code == 0 and load_checkpoint(r.path).lineage[0]["options"]["shuffle-labels"] is True


def test_finetune_keeps_masked_weights_exactly_zero(cli, tmp_path, tiny_base):
    ck = load_checkpoint(tiny_base)
    masks = {}
    for name, w in ck.state_dict.items():
        m = torch.ones_like(w, dtype=torch.bool)
        m[::3] = False  # every third output channel / neuron pruned
        masks[name] = m
        ck.state_dict[name] = w * m
    masked = save_checkpoint(Checkpoint(model=ck.model, state_dict=ck.state_dict, dataset=ck.dataset, masks=masks, lineage=ck.lineage), tmp_path / "masked.pt")
    r = cli("finetune", masked, "--epochs", "2", "--lr", "0.05", "--weight-decay", "0.01", "-o", tmp_path / "ft.pt")
    assert r.code == 0, r.stderr
    out = load_checkpoint(r.path)
    assert set(out.masks) == set(masks)
    changed = 0
    for name, w in out.state_dict.items():
        assert torch.count_nonzero(w[~masks[name]]) == 0, f"{name}: pruned weights came back"
        changed += int(not torch.equal(w[masks[name]], ck.state_dict[name][masks[name]]))
    assert changed == len(masks), "the kept weights did not train"


def test_finetune_on_incompatible_dataset(cli, tmp_path, tiny_base):
    line = one_line_error(cli("finetune", tiny_base, "--dataset", "digits", "--epochs", "0", "-o", tmp_path / "x.pt"))
    assert "digits" in line and "classes" in line or "channels" in line


def test_sparsity_bn_drives_batchnorm_scales_to_zero(cli, tmp_path):
    """Network Slimming's L1 penalty on gamma (Liu et al. 2017): with it, far more scales end near 0."""
    from prunecli.checkpoint import load_checkpoint

    common = ["--dataset", "synthetic", "--image-size", "8", "--model", "resnet20", "--device", "cpu", "--batch-size", "64",
              "--epochs", "3", "--lr", "0.1", "--bn-init", "0.05"]
    plain, sparse = tmp_path / "plain.pt", tmp_path / "sparse.pt"
    assert cli("train", *common, "-o", plain).code == 0
    assert cli("train", *common, "--sparsity-bn", "0.05", "-o", sparse).code == 0

    def small_fraction(path):
        sd = load_checkpoint(path).state_dict
        gammas = torch.cat([v.flatten() for k, v in sd.items() if k.endswith("bn1.weight") or k.endswith("bn2.weight") or k == "bn1.weight"])
        return float((gammas.abs() < 1e-2).float().mean())

    assert small_fraction(plain) < 0.1 and small_fraction(sparse) > 0.5, (small_fraction(plain), small_fraction(sparse))
    # a model without BatchNorm: one line, nothing written
    r = cli("train", "--dataset", "synthetic", "--image-size", "8", "--model", "conv2", "--epochs", "1", "--sparsity-bn", "1e-4", "-o", tmp_path / "x.pt")
    assert r.code == 1 and "has no BatchNorm scales" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "x.pt").exists()
