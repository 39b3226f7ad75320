"""Hostile inputs (issue 8): every kind gets one clear line, the documented exit code, and
nothing executed, written or downloaded, within bounded time and memory.

Inputs are generated here, small. The ones built to exhaust memory run in a subprocess
under ``RLIMIT_AS`` and report their peak resident memory (``VmHWM``), which must stay
within `RSS_BOUND` of what opening a normal checkpoint costs.

Exit codes (README, "Safety"): 1 for a bad file or a failed run, 2 for a bad command line
or config file, 130 for an interruption.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import TINY, default_sigint, final_error_line, one_line_error
from prunecli.outputs import claim_output

RSS_BOUND_KB = 1_500_000  # a prunecli process opening a conv4 checkpoint peaks at ~0.75 GB (torch itself)
AS_LIMIT = 8 << 30  # address space: torch's CUDA libraries map ~3.6 GB before any work


def payload_of(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def write_payload(payload: dict, path: Path) -> Path:
    torch.save(payload, path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def bounded_run(args: list[str], tmp_path: Path, timeout: float = 120, stdin: bytes | None = None):
    """``prunecli ARGS`` in a subprocess under RLIMIT_AS; returns (code, stderr, peak RSS in kB)."""
    rss_file = tmp_path / "rss.txt"
    code = (
        "import re, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({AS_LIMIT}, {AS_LIMIT}))\n"
        "from prunecli.cli.app import main\n"
        "try:\n"
        "    main(sys.argv[1:])\n"
        "finally:\n"
        "    hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        f"    open({str(rss_file)!r}, 'w').write(hwm)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, timeout=timeout, cwd=tmp_path, input=stdin)
    rss = int(rss_file.read_text()) if rss_file.exists() else None
    return proc.returncode, proc.stderr.decode(errors="replace"), rss


# ---------------------------------------------------------------------------- 0, 5, 6, 7, 9: outputs


def test_existing_output_is_not_replaced_without_overwrite(cli, tmp_path, tiny_base):
    out = tmp_path / "base.pt"
    assert cli("train", *TINY, "--epochs", "1", "-o", out).code == 0
    config = tmp_path / "base.config.yaml"
    before = {p: sha(p) for p in tmp_path.iterdir()}
    # the case: the config written beside a checkpoint names it as the output
    msg = one_line_error(cli("train", "--config", config, "--epochs", "0"), 2)
    assert f"--output {out} already exists; pass --overwrite" in msg
    for command in (("prune", tiny_base, "--rate", "0.5"), ("compress", tiny_base), ("finetune", tiny_base, "--epochs", "0")):
        msg = one_line_error(cli(*command, "-o", out), 2)
        assert "already exists" in msg, command
    assert {p: sha(p) for p in tmp_path.iterdir()} == before
    r = cli("train", "--config", config, "--epochs", "0", "--overwrite")
    assert r.code == 0 and sha(out) != before[out]


def test_resume_may_replace_its_own_file_but_not_another_run(cli, tmp_path):
    a = tmp_path / "a.pt"
    other = tmp_path / "other.pt"
    assert cli("train", *TINY, "--epochs", "1", "-o", a).code == 0
    assert cli("train", *TINY, "--epochs", "1", "-o", other, "--seed", "1").code == 0
    kept = sha(other)
    assert "already exists" in one_line_error(cli("train", "--resume", a, "--epochs", "2", "-o", other), 2)
    assert sha(other) == kept
    msg = one_line_error(cli("train", "--resume", a, "--model", "conv4"), 2)
    assert "--model 'conv4'" in msg and "keeps it" in msg
    assert cli("train", "--resume", a, "--epochs", "2").code == 0  # its own file: no --overwrite needed


def test_output_checked_before_any_work(cli, tmp_path, tiny_base):
    folder = tmp_path / "existing"
    folder.mkdir()
    started = time.perf_counter()
    msg = one_line_error(cli("train", *TINY, "--epochs", "50", "-o", folder), 2)
    assert "is a folder" in msg and time.perf_counter() - started < 5
    msg = one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", tmp_path / "bad\nname.pt"), 2)
    assert "newline or control character" in msg
    assert listing(tmp_path) == ["existing"] and listing(folder) == []


def test_failed_run_leaves_the_previous_run_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "run.pt"
    assert cli("train", *TINY, "--epochs", "1", "-o", out).code == 0
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    # diverges in epoch 1: before the first checkpoint of the new run exists
    r = cli("train", *TINY, "--epochs", "2", "--lr", "1000", "--wd", "0", "-o", out, "--overwrite")
    msg = final_error_line(r, 1)
    assert "diverged in epoch 1" in msg and "nothing written" in msg
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before, "old checkpoint and side files must be untouched"
    # and into a new folder: not even the folder stays
    r = cli("train", *TINY, "--epochs", "2", "--lr", "1000", "--wd", "0", "-o", tmp_path / "new" / "run.pt")
    assert r.code == 1 and not (tmp_path / "new").exists()


def test_second_writer_of_one_output_is_refused_naming_the_holder(cli, tmp_path, tiny_base):
    out = tmp_path / "pruned.pt"
    with claim_output(out):
        msg = one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", out))
        assert f"being written by another prunecli run (pid {os.getpid()})" in msg
    assert not out.exists()
    assert cli("prune", tiny_base, "--rate", "0.5", "-o", out).code == 0
    assert listing(tmp_path) == ["pruned.pt"], "the lock file goes with the claim"


def test_two_concurrent_trainings_on_one_output(tmp_path):
    out = tmp_path / "run.pt"
    cmd = [sys.executable, "-m", "prunecli", "train", *TINY, "--epochs", "30", "-o", str(out)]
    procs = [subprocess.Popen([*cmd, "--seed", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 1], [0, 2]), results  # locked out (1), or it found the finished output (2)
    loser = next(err for code, err in results if code != 0)
    assert "being written by another prunecli run" in loser or "already exists" in loser  # its pid may not be written yet
    lines = (tmp_path / "run.metrics.jsonl").read_text().splitlines()
    assert [int(line.split('"epoch": ')[1].split(",")[0]) for line in lines] == list(range(1, 31)), "one run's epochs only"


def test_kill_during_write_leaves_no_litter_after_the_next_run(tmp_path, cli):
    out = tmp_path / "run.pt"
    writer = (
        "import sys, time\n"
        "from prunecli.outputs import atomic_write\n"
        "def slow(f):\n"
        "    f.write(b'x' * 4096); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        f"atomic_write({str(out)!r}, slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    litter = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(litter) == 1 and litter[0].startswith(".run.pt.")
    assert cli("train", *TINY, "--epochs", "1", "-o", out).code == 0
    assert listing(tmp_path) == ["run.best.pt", "run.config.yaml", "run.metrics.jsonl", "run.pt"]


def test_write_failure_is_one_line_naming_the_cause(cli, tmp_path, tiny_base, monkeypatch):
    out = tmp_path / "p.pt"

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    msg = one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", out))
    assert "no space left on device" in msg and "nothing was replaced" in msg
    monkeypatch.undo()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    msg = one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", out))
    assert "read-only file system" in msg
    monkeypatch.undo()
    assert listing(tmp_path) == []


def test_real_write_failure_under_a_file_size_limit(tmp_path, tiny_base):
    """A real failing write (RLIMIT_FSIZE, as a full disk would): one line, no litter."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # EFBIG instead of death, as ENOSPC would be
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from prunecli.cli.app import main\n"
        "main(sys.argv[1:])\n"
    )
    out = tmp_path / "p.pt"
    proc = subprocess.run([sys.executable, "-c", code, "prune", str(tiny_base), "--rate", "0.5", "-o", str(out)], capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("prunecli: error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"cannot write {out}" in lines[0]
    assert listing(tmp_path) == []


def test_files_honour_the_umask(cli, tmp_path, tiny_base):
    old = os.umask(0o022)
    try:
        out = tmp_path / "p.pt"
        assert cli("prune", tiny_base, "--rate", "0.5", "-o", out).code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        assert cli("prune", tiny_base, "--rate", "0.3", "-o", out, "--overwrite").code == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        run = tmp_path / "run.pt"
        assert cli("train", *TINY, "--epochs", "1", "-o", run).code == 0
        for p in tmp_path.glob("run*"):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
        os.umask(0o077)
        assert cli("prune", tiny_base, "--rate", "0.5", "-o", tmp_path / "private.pt").code == 0
        assert stat.S_IMODE((tmp_path / "private.pt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# ---------------------------------------------------------------------------- 1, 10, 14: config files


def test_billion_laughs_config_is_refused_within_bounds(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    lines.append("epochs: *a9")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 1500
    for command in (["train"], ["list", "models"], ["info", "x.pt"]):
        started = time.perf_counter()
        code, err, rss = bounded_run([*command, "--config", bomb], tmp_path, timeout=60)
        assert code == 2, err
        assert "refused" in err and "YAML aliases" in err and err.count("\n") == 1, err
        assert rss < RSS_BOUND_KB and time.perf_counter() - started < 60


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"\x00\x01\x02binary\xff", "not a text file"),
        (b"epochs: " + b"9" * 5000 + b"\n", "a value YAML cannot read"),
        (b"[" * 5000 + b"]" * 5000, "nested"),
        (b"- 1\n- 2\n", "expected a mapping"),
        (b"epochs: [\n", "not valid YAML"),
        (b"epochs: 5\nlearning_rate: 3\n", "unknown key 'learning_rate'"),
    ],
)
def test_bad_config_files_are_usage_errors(cli, tmp_path, content, expected):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    assert expected in one_line_error(cli("train", "--config", cfg), 2)
    assert listing(tmp_path) == ["c.yaml"]


def test_config_folder_and_missing_file(cli, tmp_path):
    assert "is a folder" in one_line_error(cli("train", "--config", tmp_path), 2)
    assert "no such file" in one_line_error(cli("train", "--config", tmp_path / "none.yaml"), 2)


# ---------------------------------------------------------------------------- 8, 10: option values


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--lr", "inf"], "--lr"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--lr", "1e300"], "--lr"),
        (["train", "--lr-warmup-epochs", "inf"], "--lr-warmup-epochs"),
        (["prune", "BASE", "--rate", "0.5", "--max-layer-rate", "nan"], "--max-layer-rate"),
        (["train", "--milestones", "5,-3"], "increasing"),
        (["train", "--epochs", "1e30"], "--epochs"),
        (["train", "--epochs", "-1"], "--epochs"),
        (["train", "--seed", str(2**70)], "--seed"),
        (["finetune", "BASE", "--seed", str(2**70)], "--seed"),
        (["prune", "BASE", "--rate", "1.5"], "--rate 1.5"),
        (["prune", "BASE", "--rate", "0.5", "--skip", "*"], "nothing to prune"),
        (["prune", "BASE", "--rate", "0.5", "--round-to", "1000"], "--round-to 1000: wider than every prunable layer"),
        (["prune", "BASE", "--target-macs", "0.9999"], "remove at most"),
        (["train", "--image-size", "100000"], "--image-size"),
    ],
)
def test_out_of_range_values_are_usage_errors(cli, tmp_path, tiny_base, args, expected):
    args = [str(tiny_base) if a == "BASE" else a for a in args]
    out = tmp_path / "out.pt"
    r = cli(*args, *(["--dataset", "synthetic", "--image-size", "8", "--model", "conv2"] if args[0] == "train" and "--image-size" not in args else []), "-o", out)
    msg = one_line_error(r, 2)
    assert expected in msg
    assert listing(tmp_path) == []


def test_target_macs_shows_enough_digits(cli, tmp_path, tiny_base):
    msg = one_line_error(cli("prune", tiny_base, "--target-macs", "0.9999", "-o", tmp_path / "o.pt"), 2)
    shown = float(msg.split("remove at most ")[1].split("%")[0])
    assert shown < 99.99


# ---------------------------------------------------------------------------- 2: untrusted model specs and archives


def test_huge_model_spec_is_refused_before_building(tmp_path, tiny_base):
    p = payload_of(tiny_base)
    p["model"] = {**p["model"], "name": "densenet40", "kwargs": {"depth": 300004}}
    bad = write_payload(p, tmp_path / "deep.pt")
    code, err, rss = bounded_run(["info", bad], tmp_path, timeout=120)
    assert code == 1 and "refused: its model has more than" in err, err  # modules or parameters, whichever first
    assert rss < RSS_BOUND_KB


def test_many_classes_are_checked_against_the_file_before_allocating(tmp_path, tiny_base):
    p = payload_of(tiny_base)
    # conv2 at 512 px has a 1.07e9-parameter classifier (4.3 GB): within the build budget,
    # so only comparing with the file's shapes on the meta device keeps it from being allocated
    p["model"] = {**p["model"], "image_size": 512}
    bad = write_payload(p, tmp_path / "wide.pt")
    code, err, rss = bounded_run(["info", bad], tmp_path)
    assert code == 1 and "do not fit architecture 'conv2'" in err, err
    assert rss < RSS_BOUND_KB
    p["model"] = {**p["model"], "num_classes": 2_000_000}
    assert "outside 1..100,000" in bounded_run(["info", write_payload(p, tmp_path / "classes.pt")], tmp_path)[1]


def test_zip_bomb_is_refused_before_reading(tmp_path, tiny_base):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(tiny_base) as src, zipfile.ZipFile(bomb, "w") as dst:
        inflated = False
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename and not info.filename.endswith(".pkl") and not inflated:
                inflated = True
                entry = zipfile.ZipInfo(info.filename)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with dst.open(entry, "w", force_zip64=True) as f:
                    chunk = bytes(1 << 20)
                    for _ in range(512):  # 512 MiB of zeros, deflated to ~0.5 MB
                        f.write(chunk)
                continue
            dst.writestr(info, data)
    assert bomb.stat().st_size < 20 << 20
    code, err, rss = bounded_run(["info", bomb], tmp_path)
    assert code == 1 and "refused: declares" in err, err
    assert rss < RSS_BOUND_KB


def test_shared_reference_bomb_in_plain_data(cli, tmp_path, tiny_base):
    p = payload_of(tiny_base)
    nest = ["lol"] * 10
    for _ in range(12):
        nest = [nest] * 10  # 10^13 values, a few hundred bytes pickled
    p["lineage"] = [{"command": "train", "options": {"x": nest}}]
    bad = write_payload(p, tmp_path / "laughs.pt")
    assert bad.stat().st_size < 2 * tiny_base.stat().st_size
    started = time.perf_counter()
    assert "refused: its plain data is more than" in one_line_error(cli("info", bad))
    assert time.perf_counter() - started < 10


def test_huge_lineage_string_is_refused(cli, tmp_path, tiny_base):
    p = payload_of(tiny_base)
    p["lineage"][0]["options"]["output"] = "x" * (10 << 20)
    bad = write_payload(p, tmp_path / "long.pt")
    assert "a string of 10,485,760 characters" in one_line_error(cli("info", bad))
    assert "a string of" in one_line_error(cli("finetune", bad, "--epochs", "0", "-o", tmp_path / "child.pt"))
    assert not (tmp_path / "child.pt").exists()


# ---------------------------------------------------------------------------- 3: masks and weights


def _with_mask(tiny_base: Path, tmp_path: Path, name: str, mask) -> Path:
    p = payload_of(tiny_base)
    p["masks"] = {name: mask}
    return write_payload(p, tmp_path / "masked.pt")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda w: torch.full_like(w, 1000.0), "values other than 0 and 1"),
        (lambda w: torch.ones(3, dtype=torch.bool), "has shape (3,)"),
        (None, "not a tensor of the model"),
        (lambda w: torch.ones_like(w), None),  # float 0/1 masks are fine: read as boolean
    ],
)
def test_masks_are_validated(cli, tmp_path, tiny_base, make, expected):
    p = payload_of(tiny_base)
    name = next(k for k in p["state_dict"] if k.endswith("weight"))
    bad = _with_mask(tiny_base, tmp_path, name if make else "no.such.weight", make(p["state_dict"][name]) if make else torch.ones(3, dtype=torch.bool))
    for command in (("info", bad), ("evaluate", bad, "--no-latency"), ("prune", bad, "--rate", "0.5", "-o", tmp_path / "o.pt"), ("compress", bad, "-o", tmp_path / "c.pt", "--no-latency")):
        r = cli(*command)
        if expected is None:
            assert r.code == 0, (command, r.stderr)
        else:
            assert expected in one_line_error(r), command
    if expected is not None:
        assert listing(tmp_path) == ["masked.pt"]


def test_nonfinite_weights_are_refused_unless_allowed(cli, tmp_path, tiny_base):
    p = payload_of(tiny_base)
    name = next(k for k in p["state_dict"] if k.endswith("weight"))
    p["state_dict"][name][0] = float("nan")
    bad = write_payload(p, tmp_path / "nan.pt")
    for command in (("evaluate", bad), ("compress", bad, "-o", tmp_path / "c.pt"), ("prune", bad, "--rate", "0.5", "-o", tmp_path / "p.pt"), ("finetune", bad, "-o", tmp_path / "f.pt")):
        msg = one_line_error(cli(*command))
        assert f"weights hold NaN or Inf ({name}" in msg and "--allow-nonfinite" in msg, command
    assert listing(tmp_path) == ["nan.pt"]
    r = cli("info", bad)
    assert r.code == 0 and "NaN or Inf" in r.stderr
    assert cli("evaluate", bad, "--allow-nonfinite", "--no-latency").code == 0


# ---------------------------------------------------------------------------- 4: no downloads


def test_checkpoint_naming_hub_weights_never_downloads(cli, tmp_path, monkeypatch):
    import torchvision

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", no_network, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    from prunecli.checkpoint import Checkpoint, save_checkpoint
    from prunecli.models import ModelSpec

    model = torchvision.models.squeezenet1_1(num_classes=1000)
    spec = ModelSpec("tv:squeezenet1_1", 3, 1000, 64, {"weights": "IMAGENET1K_V1"})
    path = save_checkpoint(Checkpoint(model=spec, state_dict=model.state_dict()), tmp_path / "hub.pt")
    r = cli("info", path)
    assert r.code == 0, r.stderr
    assert not (tmp_path / "hub").exists()


# ---------------------------------------------------------------------------- 10, 14: damaged files


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("lineage", "not a list", "'lineage' is a str"),
        ("lineage", [1, 2], "lineage entry is not a mapping"),
        ("resume", [1], "'resume' is a list"),
        ("masks", ["x"], "'masks' is a list"),
        ("version", "1", "format version '1' is not a number"),
        ("version", 0, "format version 0 does not exist"),
        ("model", {"name": "conv2"}, "model or dataset spec"),
        ("state_dict", {"w": 3}, "state_dict is not a mapping of names to tensors"),
    ],
)
def test_wrongly_typed_fields_are_damage_not_bugs(cli, tmp_path, tiny_base, field, value, expected):
    p = payload_of(tiny_base)
    p[field] = value
    msg = one_line_error(cli("info", write_payload(p, tmp_path / "bad.pt")))
    assert expected in msg and "internal error" not in msg


def test_resume_state_of_another_architecture(cli, tmp_path, tiny_base):
    run = tmp_path / "run.pt"
    assert cli("train", *TINY, "--epochs", "1", "-o", run).code == 0
    other = tmp_path / "other.pt"
    assert cli("train", "--dataset", "synthetic", "--image-size", "8", "--model", "conv4", "--epochs", "1", "-o", other, "--batch-size", "64").code == 0
    p = payload_of(run)
    p["resume"]["optimizer"] = payload_of(other)["resume"]["optimizer"]
    bad = write_payload(p, tmp_path / "mixed.pt")
    msg = final_error_line(cli("train", "--resume", bad, "--epochs", "2"), 1)
    assert "resume state does not fit" in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"P", "truncated checkpoint (1 bytes)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(100), "a PNG image"),
        (b"hello, this is text\n", "a text file"),
    ],
)
def test_foreign_files_are_named_for_what_they_are(cli, tmp_path, content, expected):
    f = tmp_path / "x.pt"
    f.write_bytes(content)
    assert expected in one_line_error(cli("info", f))


def test_truncated_archive(cli, tmp_path, tiny_base):
    f = tmp_path / "cut.pt"
    f.write_bytes(tiny_base.read_bytes()[:5000])
    assert "truncated or corrupt" in one_line_error(cli("info", f))


# ---------------------------------------------------------------------------- 11, 12: interrupts and terminals


def test_ctrl_c_says_what_was_written(tmp_path):
    """Interrupted while checking or timing (tv ResNet-18 at 224, batch 128: seconds a pass, and compress
    times at least 3 rounds, even of steady runs): nothing was written."""
    import prunecli.api as pc

    big = pc.save(pc.build("tv:resnet18", image_size=224), tmp_path / "big.pt")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunecli", "compress", str(big), "--force", "--batch-size", "128", "--latency-budget", "3600", "-o", str(tmp_path / "c.pt")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    time.sleep(8)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "prunecli: error: interrupted; nothing written"
    assert listing(tmp_path) == ["big.pt"]


def test_escape_codes_from_a_checkpoint_never_reach_the_terminal(cli, tmp_path, tiny_base):
    p = payload_of(tiny_base)
    p["lineage"][0]["command"] = "train\x1b[2J\x1b]0;owned\x07[bold]x[/bold]"
    p["model"]["kwargs"] = {}
    bad = write_payload(p, tmp_path / "esc.pt")
    r = cli("info", bad)
    assert r.code == 0 and "\x1b" not in r.stdout + r.stderr and "\x07" not in r.stdout + r.stderr
    assert "\\x1b[2J" in r.stdout and "[bold]x[/bold]" in r.stdout  # shown (the report is on stdout), escaped, markup not applied


def test_binary_stdin_is_not_echoed(cli):
    r = cli("info", "-", stdin="\x1b[2J\x00garbage\n")
    msg = one_line_error(r)
    assert "stdin does not hold a checkpoint path" in msg and "\x1b" not in r.stderr


def test_error_messages_escape_control_characters(cli, tmp_path):
    r = cli("info", tmp_path / "no\x1b[31mfile.pt")
    assert "\x1b" not in r.stderr and "\\x1b" in r.stderr


# ---------------------------------------------------------------------------- found in review


def test_a_reused_config_never_carries_overwrite(cli, tmp_path):
    out = tmp_path / "a.pt"
    assert cli("train", *TINY, "--epochs", "0", "-o", out, "--overwrite").code == 0
    text = (tmp_path / "a.config.yaml").read_text()
    assert "overwrite" not in text
    assert "already exists" in one_line_error(cli("train", "--config", tmp_path / "a.config.yaml"), 2)


def test_side_files_of_another_run_need_overwrite(cli, tmp_path):
    (tmp_path / "m.metrics.jsonl").write_text('{"epoch": 1}\n')
    msg = one_line_error(cli("train", *TINY, "--epochs", "0", "-o", tmp_path / "m.pt"), 2)
    assert "m.metrics.jsonl beside it already exists" in msg
    assert listing(tmp_path) == ["m.metrics.jsonl"]


def test_a_swallowed_ctrl_c_still_stops_the_command(cli, tmp_path, tiny_base, monkeypatch):
    """Torch-Pruning's tracing retries under a bare except: a Ctrl-C there must not be lost."""
    from prunecli import _signals
    from prunecli.surgery.pruner import Pruner

    real = Pruner.plan

    def plan_swallowing_a_ctrl_c(self, *a, **k):
        try:
            _signals.handler(signal.SIGINT, None)
        except:  # noqa: E722 -- what the library does
            pass
        return real(self, *a, **k)

    monkeypatch.setattr(Pruner, "plan", plan_swallowing_a_ctrl_c)
    r = cli("prune", tiny_base, "--rate", "0.5", "-o", tmp_path / "p.pt")
    assert r.code == 130 and r.stderr.strip().splitlines()[-1] == "prunecli: error: interrupted; nothing written"
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: p["lineage"][0].update(command=7), "names no command"),
        (lambda p: p["lineage"].append({}), "names no command"),
        (lambda p: p["state_dict"].update({k: v.to(torch.complex64) for k, v in list(p["state_dict"].items())[:1]}), "complex-valued"),
    ],
)
def test_more_damaged_fields(cli, tmp_path, tiny_base, edit, expected):
    p = payload_of(tiny_base)
    edit(p)
    bad = write_payload(p, tmp_path / "bad.pt")
    for command in (("info", bad), ("evaluate", bad, "--no-latency")):
        assert expected in one_line_error(cli(*command)), command


@pytest.mark.parametrize(
    "field, value, expected",
    [("epoch", "x", "field 'epoch' is 'x'"), ("epoch", -5, "at epoch -5"), ("epoch", 10**30, "resume state at epoch 1000"), ("optimizer", "x", "field 'optimizer'")],
)
def test_damaged_resume_states(cli, tmp_path, field, value, expected):
    run = tmp_path / "run.pt"
    assert cli("train", *TINY, "--epochs", "1", "-o", run).code == 0
    p = payload_of(run)
    p["resume"][field] = value
    bad = write_payload(p, tmp_path / "bad.pt")
    assert expected in one_line_error(cli("train", "--resume", bad, "--epochs", "2"))


def test_optimizer_state_of_the_wrong_shape(cli, tmp_path):
    run = tmp_path / "run.pt"
    assert cli("train", *TINY, "--epochs", "1", "-o", run).code == 0
    p = payload_of(run)
    state = p["resume"]["optimizer"]["state"]
    first = next(iter(state))
    state[first]["momentum_buffer"] = torch.zeros(3)
    bad = write_payload(p, tmp_path / "bad.pt")
    msg = final_error_line(cli("train", "--resume", bad, "--epochs", "2"), 1)
    assert "resume state does not fit" in msg and "shape (3,)" in msg


def test_resume_conflicts(cli, tmp_path):
    run = tmp_path / "run.pt"
    assert cli("train", *TINY, "--epochs", "2", "-o", run).code == 0
    assert "has already trained 2 epochs" in one_line_error(cli("train", "--resume", run, "--epochs", "1"), 2)
    assert "not both" in one_line_error(cli("finetune", run, "--resume", run), 2)


@pytest.mark.parametrize(
    "args, code, expected",
    [
        (["train", "--model", "nope", "--dataset", "synthetic", "--image-size", "8"], 2, "unknown model 'nope'"),
        (["train", "--dataset", "nope"], 2, "--dataset 'nope': unknown"),
        (["train", "--model", "conv2", "--model-arg", "foo=1", "--dataset", "synthetic", "--image-size", "8"], 2, "takes no argument 'foo'"),
        (["train", "--batch-size", "1000000000000"], 2, "--batch-size"),
    ],
)
def test_bad_names_are_usage_errors(cli, tmp_path, args, code, expected):
    assert expected in one_line_error(cli(*args, "--epochs", "0", "-o", tmp_path / "o.pt"), code)
    assert listing(tmp_path) == []


def test_odd_paths(cli, tmp_path, tiny_base):
    assert "not a file name" in one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", ""), 2)
    long = tmp_path / ("a" * 5000) / "a.pt"
    assert "file name too long" in one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", long))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in one_line_error(cli("info", fifo))
    assert "not a regular file" in one_line_error(cli("prune", tiny_base, "--rate", "0.5", "-o", fifo, "--overwrite"), 2)
    assert stat.S_ISFIFO(fifo.stat().st_mode)


def test_duplicate_config_keys(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\nepochs: 2\n")
    assert "key 'epochs' is given twice (line 2)" in one_line_error(cli("train", "--config", cfg), 2)


def test_replacing_a_private_file_keeps_it_private(cli, tmp_path, tiny_base):
    out = tmp_path / "p.pt"
    assert cli("prune", tiny_base, "--rate", "0.5", "-o", out).code == 0
    out.chmod(0o600)
    assert cli("prune", tiny_base, "--rate", "0.3", "-o", out, "--overwrite").code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
