"""Shared fixtures: an in-process CLI runner and small trained checkpoints.

The runner calls `prunecli.cli.app.main` in this process (no interpreter + torch start-up
per call) and captures stdout and stderr separately, which is what the shell-chaining
contract is about. Tests that need a real process (signals, stdin pipes, torchrun, import
costs) use `run_process`.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from prunecli.cli.app import main

if os.environ.get("PYTEST_XDIST_WORKER"):
    # the suite runs in two processes on two cores (pytest-xdist, -n 2): one thread each, for
    # the workers and for the prunecli processes the tests start, rather than four threads
    # fighting over two cores
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# Tiny, fast and learnable: synthetic 3x8x8, 10 classes, conv2 (no BatchNorm).
TINY = ["--dataset", "synthetic", "--image-size", "8", "--model", "conv2", "--device", "cpu", "--batch-size", "64"]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def path(self) -> Path:
        lines = self.stdout.strip().splitlines()
        assert len(lines) == 1, f"expected exactly one path on stdout, got {self.stdout!r}"
        return Path(lines[0])


@pytest.fixture
def cli(capsys, monkeypatch):
    def run(*args: str, stdin: str | None = None, env: dict | None = None) -> Result:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        for k, v in (env or {}).items():
            monkeypatch.setenv(k, v)
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        for k in env or {}:
            monkeypatch.delenv(k, raising=False)
        return Result(code, out, err)

    return run


def default_sigint() -> None:
    """Popen's preexec_fn for a child the test will Ctrl-C: a runner started as a background
    job ignores SIGINT, and a child inherits that, so give it the default disposition."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_process(args: list[str], *, cwd: Path | None = None, env: dict | None = None, stdin: str | None = None, timeout: float = 300):
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "prunecli", *map(str, args)],
        cwd=cwd,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def kill_then_resume(cli, args: list, *, epoch: int) -> None:
    """Run ``prunecli ARGS`` in a subprocess killed (SIGKILL) inside epoch ``epoch``, check that the file
    holds epoch ``epoch - 1``'s resume state, and resume it in process. ``args`` end with ``-o FILE``."""
    import signal

    from prunecli.checkpoint import load_checkpoint

    out = args[-1]
    proc = run_process(args, env={"PRUNECLI_KILL_DURING_EPOCH": str(epoch)})
    assert proc.code == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(out).resume["epoch"] == epoch - 1
    resumed = cli(args[0], "--resume", out)
    assert resumed.code == 0, resumed.stderr


def assert_same_weights_and_masks(a, b) -> None:
    """Two checkpoints hold bit-identical weights and masks (a killed-and-resumed run against a whole one)."""
    import torch

    assert a.state_dict.keys() == b.state_dict.keys()
    for k in a.state_dict:
        assert torch.equal(a.state_dict[k], b.state_dict[k]), k
    assert a.masks.keys() == b.masks.keys() and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A conv2 trained 2 epochs on synthetic 8x8 (shared, read-only)."""
    out = tmp_path_factory.mktemp("tiny") / "base.pt"
    with pytest.MonkeyPatch.context():
        try:
            main(["train", *TINY, "--epochs", "2", "--lr", "0.02", "-o", str(out)])
        except SystemExit as e:
            assert e.code in (0, None), f"training the shared tiny checkpoint failed ({e.code})"
    return out


def one_line_error(result: Result, code: int = 1) -> str:
    """Assert the error contract: exit code, one line on stderr, no traceback, nothing on stdout."""
    assert result.code == code, (result.code, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert lines[0].startswith("prunecli: error: ")
    return lines[0]


def final_error_line(result: Result, code: int) -> str:
    """For errors after progress output: the last stderr line is the one error line, no traceback."""
    assert result.code == code, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("prunecli: error: ")
    assert sum(line.startswith("prunecli: error") for line in lines) == 1
    return lines[-1]
