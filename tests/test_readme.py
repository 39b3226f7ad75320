"""The README's Python example runs as written and says what it claims."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs_and_prunes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example saves its result in the working folder
    text = README.read_text()
    section = text[text.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 12, "the example should stay about ten lines"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    macs = [int(v.replace(",", "")) for v in re.findall(r"MACs ([\d,]+) -> ([\d,]+)", out.getvalue())[0]]
    assert macs[0] == 125_485_706 and 0.3 * macs[0] < macs[1] < 0.4 * macs[0], out.getvalue()
    # what it saved is a checkpoint the commands read: the compressed architecture rebuilds from the file
    import prunecli.api as pc

    again = pc.load(tmp_path / "resnet56-fpgm40.pt")
    assert pc.complexity(again).macs == macs[1]
    assert [e["command"] for e in again.checkpoint.lineage] == ["train", "prune", "compress"]


def test_python_api_load_prune_compress_save_round_trip(tmp_path, cli):
    """pc.load of a trained file, a weight-level and a channel prune, compress, save, and the CLI reads it."""
    import torch

    import prunecli.api as pc

    net = pc.build("conv2", num_classes=10, image_size=8)
    first = pc.save(net, tmp_path / "base.pt")
    net = pc.load(first)
    rows = pc.prune(net, "l1", rate=0.5, skip=["features.0"])
    assert rows and net.masks
    masked_out = net.module(torch.zeros(2, 3, 8, 8) + 0.5)
    diff = pc.compress(net)
    assert diff < 1e-4 and torch.allclose(net.module(torch.zeros(2, 3, 8, 8) + 0.5), masked_out, atol=1e-5)
    out = pc.save(net, tmp_path / "small.pt")
    r = cli("info", out)
    assert r.code == 0, r.stderr
