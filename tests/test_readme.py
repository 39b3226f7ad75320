"""The README's Python example runs as written and says what it claims."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs_and_prunes():
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
