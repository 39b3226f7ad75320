"""What the reporting commands print: reports on stdout, readable lineage, side-by-side evaluate, plots.

Issue 13 items 1, 6, 7 and the plots: `info`, `evaluate` and `list` return their report
on stdout (a command that writes a checkpoint keeps stdout for the path); `info` tells
each stage in one line with what it changed; `evaluate` compares a checkpoint only with
its own ancestor; `plot widths|history` write PNG files and print their paths.

One chain (tiny conv2 -> prune l1 0.5 -> compress -> finetune 1 epoch) is built once for
the module, on the shared tiny checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, one_line_error

from prunecli.checkpoint import sha256_file
from prunecli.cli.app import main

PNG = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(autouse=True)
def _wide_reports(monkeypatch):
    """These tests read table rows: a wide console (xdist workers may inherit a narrow COLUMNS)."""
    monkeypatch.setenv("COLUMNS", "250")

def _main(*args) -> None:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        assert e.code in (0, None), f"prunecli {' '.join(map(str, args))} failed ({e.code})"


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_base) -> dict[str, Path]:
    """base -> masked (l1, rate 0.5) -> small (compressed) -> final (finetuned 1 epoch), and an unrelated model."""
    d = tmp_path_factory.mktemp("chain")
    base = d / "base.pt"
    shutil.copy(tiny_base, base)
    shutil.copy(tiny_base.with_name("base.metrics.jsonl"), d / "base.metrics.jsonl")
    _main("prune", base, "--method", "l1", "--rate", "0.5", "--device", "cpu", "-o", d / "masked.pt")
    _main("compress", d / "masked.pt", "--no-latency", "-o", d / "small.pt")
    _main("finetune", d / "small.pt", "--epochs", "1", "--lr", "0.01", "--device", "cpu", "-o", d / "final.pt")
    _main("train", *TINY, "--epochs", "0", "--seed", "1", "-o", d / "other.pt")
    return {name: d / f"{name}.pt" for name in ("base", "masked", "small", "final", "other")}


def _row(stdout: str, first_cell: str, after: str = "") -> str:
    """The one table line whose first cell is ``first_cell`` (in the part of ``stdout`` after ``after``)."""
    rows = [line for line in stdout[stdout.index(after):].splitlines() if line.split("│")[0].strip() == first_cell]
    assert len(rows) == 1, f"no single row {first_cell!r} in:\n{stdout}"
    return rows[0]


# ---------------------------------------------------------------------------- 1: reports on stdout


def test_info_report_is_on_stdout(cli, chain):
    r = cli("info", chain["final"], "--layers")
    assert r.code == 0, r.stderr
    assert r.stderr == ""
    assert f"{chain['final']}\n" in r.stdout and "lineage" in r.stdout and "classifier.2" in r.stdout
    j = cli("info", chain["final"], "--json")
    assert json.loads(j.stdout)["stage"] == "finetune" and j.stderr == ""


def test_evaluate_report_is_on_stdout(cli, chain):
    r = cli("evaluate", chain["base"], chain["final"], "--no-latency")
    assert r.code == 0, r.stderr
    assert "top-1 %" in r.stdout and "per-layer widths" in r.stdout
    assert "top-1 %" not in r.stderr and "base.pt" not in r.stderr
    j = cli("evaluate", chain["base"], "--no-latency", "--json")
    assert json.loads(j.stdout)["sha256"] == sha256_file(chain["base"])


def test_list_report_is_on_stdout(cli):
    r = cli("list", "methods")
    assert r.code == 0 and "geomedian" in r.stdout and "algorithms" in r.stdout and r.stderr == ""


def test_info_redirected_to_a_file_holds_the_report(tmp_path, chain):
    """The issue's case, in a real shell: `prunecli info x.pt > report.txt`."""
    report = tmp_path / "report.txt"
    cmd = f"{sys.executable} -m prunecli info {chain['small']} > {report}"
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    assert "lineage" in text and "compress" in text and proc.stderr == ""


# ---------------------------------------------------------------------------- 6: info on a pruned model


def test_info_tells_each_stage_in_one_line(cli, chain):
    r = cli("info", chain["final"])
    assert r.code == 0, r.stderr
    prune = _row(r.stdout, "2")
    assert "prune" in prune and "l1" in prune and "rate 0.5" in prune and "layerwise channels" in prune
    assert "->" in prune and "*" in prune  # what compress will leave, marked
    compress = _row(r.stdout, "3")
    assert "compress" in compress and "->" in compress and "masked.pt" in compress
    finetune = _row(r.stdout, "4")
    assert "1 epoch, lr 0.01" in finetune and "small.pt" in finetune
    # human units, no raw dump of metric keys
    assert "macs_before" not in r.stdout and "macs_after_compress" not in r.stdout and "K" in compress

    steps = json.loads(cli("info", chain["final"], "--json").stdout)["steps"]
    assert [s["command"] for s in steps] == ["train", "prune", "compress", "finetune"]
    train, pr, co, ft = steps
    assert pr["after_compress"] and pr["macs_after"] < pr["macs_before"] == train["macs_before"]
    assert co["changes"] and (co["macs_before"], co["macs_after"]) == (pr["macs_before"], pr["macs_after"])
    assert (co["params_before"], co["params_after"]) == (pr["params_before"], pr["params_after"])
    assert ft["macs_before"] == co["macs_after"] and not ft["changes"]
    final = torch.load(chain["final"], weights_only=True)
    assert ft["top1"] == pytest.approx(final["metrics"]["top1"]) and train["top1"] is not None
    assert r.stdout.count("top-1") >= 2 and f"{final['metrics']['top1']:.2f}" in finetune


def test_info_of_a_compressed_file_reads_its_metrics_in_words(cli, chain):
    r = cli("info", chain["small"])
    assert r.code == 0, r.stderr
    assert "compress check" in r.stdout and "macs_before" not in r.stdout
    assert "not measured on this file" in r.stdout and "after step 1 (train), before prune, compress" in r.stdout  # where the last top-1 is from


def test_info_of_a_masked_file_says_what_compress_will_leave(cli, chain):
    r = cli("info", chain["masked"])
    assert r.code == 0, r.stderr
    assert "once compressed" in r.stdout and "macs_after_compress" not in r.stdout


def test_files_written_before_lineage_results_still_render(cli, tmp_path, chain):
    """An older compressed file: no `result` on its entries; its metrics carry the prune's prediction."""
    payload = torch.load(chain["small"], weights_only=True)
    for entry in payload["lineage"]:
        entry.pop("result", None)
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    r = cli("info", old)
    assert r.code == 0, r.stderr
    prune = _row(r.stdout, "2")
    assert "rate 0.5" in prune and "->" in prune  # from the carried metrics
    steps = json.loads(cli("info", old, "--json").stdout)["steps"]
    assert steps[2]["macs_after"] == steps[1]["macs_after"] and steps[0]["top1"] is None
    v1 = Path(__file__).resolve().parent / "data" / "v1" / "resnet20-compressed.pt"
    r = cli("info", v1)
    assert r.code == 0 and "compress" in _row(r.stdout, "2"), r.stderr


def test_info_never_trips_on_odd_values_in_a_file(cli, tmp_path, chain):
    payload = torch.load(chain["final"], weights_only=True)
    payload["metrics"] = {"top1": "high", "epoch": [1], "max_abs_diff": None, "macs": "many", "custom": 12345678}
    payload["lineage"][1]["options"] = {"method": 3, "rate": "half", "target-macs": "x"}
    payload["lineage"][1]["result"] = {"macs_before": "a", "top1": {}}
    payload["lineage"][2]["options"] = "not a mapping"
    odd = tmp_path / "odd.pt"
    torch.save(payload, odd)
    r = cli("info", odd)
    assert r.code == 0, r.stderr
    assert "custom 12.35M" in r.stdout


# ---------------------------------------------------------------------------- 7: side-by-side evaluate


def test_evaluate_compares_a_checkpoint_with_its_own_ancestor_only(cli, chain):
    # the pruned child first, the dense ancestor last, an unrelated model in between
    r = cli("evaluate", chain["final"], chain["other"], chain["base"], "--no-latency", "--no-layers")
    assert r.code == 0, r.stderr
    final, other, base = _row(r.stdout, "1"), _row(r.stdout, "2"), _row(r.stdout, "3")
    assert "final.pt" in final and final.rstrip().endswith("#3") and "x)" in final
    assert other.rstrip().endswith("-") and "x)" not in other  # no ancestor in the table: no ratio
    assert base.rstrip().endswith("-") and "x)" not in base
    assert "own ancestor" in r.stdout  # the caption says what the ratios are


def test_ancestor_rule_matches_files_by_sha256_and_prefers_the_oldest():
    from prunecli.stages.evaluate import Report, ancestor_columns

    def rep(sha, ancestors=()):
        return Report("x", "s", "m", "d", 0, 0, 0, 1, 1, 1, 1, sha256=sha, ancestors=list(ancestors))

    reports = [rep("c", ["a", "b"]), rep("b", ["a"]), rep("a"), rep("a"), rep("z", ["q"]), rep("d", ["b"])]
    assert ancestor_columns(reports) == [2, 2, None, None, None, 1]


def test_evaluate_keeps_names_that_differ_only_at_the_end(cli, tmp_path, chain):
    long = "final_fpgm_global_resnet56_cifar10_rate"
    a, b = tmp_path / f"{long}_40.pt", tmp_path / f"{long}_50.pt"
    (tmp_path / "x").mkdir()
    c = tmp_path / "x" / a.name
    for p in (a, b, c):
        shutil.copy(chain["small"], p)
    r = cli("evaluate", a, b, c, "--no-latency", "--no-layers")
    assert r.code == 0, r.stderr
    assert f"{long}_40.pt" in r.stdout and f"{long}_50.pt" in r.stdout and f"x/{a.name}" in r.stdout
    assert "…" not in r.stdout and "..." not in r.stdout


def test_a_narrow_terminal_drops_columns_rather_than_cutting_numbers(cli, monkeypatch, chain):
    monkeypatch.setenv("COLUMNS", "80")
    r = cli("evaluate", chain["base"], chain["small"], "--no-layers", "--repeats", "2", "--threads", "1")
    assert r.code == 0, r.stderr
    assert "…" not in r.stdout and "left out to fit 80 columns: latency IQR" in r.stdout
    assert max(len(line) for line in r.stdout.splitlines() if "│" in line) <= 80, r.stdout
    assert "base.pt" in r.stdout and "small.pt" in r.stdout and "(0." in r.stdout
    monkeypatch.setenv("COLUMNS", "250")
    wide = cli("evaluate", chain["base"], chain["small"], "--no-layers", "--repeats", "2", "--threads", "1")
    assert "┃ latency IQR ┃" in wide.stdout and "left out" not in wide.stdout
    assert "1 thread" in wide.stdout and "median of 2 interleaved runs" in wide.stdout  # how it was timed, from the reports


def test_per_layer_table_explains_what_it_counts(cli, chain):
    r = cli("evaluate", chain["base"], chain["masked"], "--no-latency")
    assert r.code == 0, r.stderr
    assert "sparsity" not in r.stdout and " / " not in r.stdout  # no "0% / 41%" column
    assert "alive" in r.stdout and "% zero" in r.stdout and "share of the layer's weights that are zero" in r.stdout
    layer = _row(r.stdout, "1", after="per-layer widths")  # the first conv: dense whole, masked half alive
    assert "alive" in layer and "zero" in layer


# ---------------------------------------------------------------------------- plots


def test_plot_widths_writes_a_png_and_prints_its_path(cli, tmp_path, chain):
    out = tmp_path / "w.png"
    r = cli("plot", "widths", chain["base"], chain["masked"], chain["small"], "-o", out)
    assert r.code == 0, r.stderr
    assert r.stdout == f"{out}\n" and out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    r = cli("plot", "widths", chain["base"], chain["final"])  # default: beside the first checkpoint
    default = chain["base"].with_name("base.widths.png")
    assert r.code == 0 and r.path == default and default.read_bytes()[:8] == PNG
    assert "already exists" in one_line_error(cli("plot", "widths", chain["base"], chain["final"]), 2)  # never replaced silently
    assert cli("plot", "widths", chain["base"], "--overwrite").code == 0


def test_plot_history_writes_a_png_and_prints_its_path(cli, tmp_path, chain):
    jsonl = chain["base"].with_name("base.metrics.jsonl")
    finetune = chain["final"].with_name("final.metrics.jsonl")
    out = tmp_path / "h.png"
    r = cli("plot", "history", jsonl, finetune, "-o", out)
    assert r.code == 0, r.stderr
    assert r.stdout == f"{out}\n" and out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    r = cli("plot", "history", finetune)
    assert r.code == 0 and r.path == chain["final"].with_name("final.history.png") and r.path.stat().st_size > 0


def test_plot_bad_input_is_one_line(cli, tmp_path, chain):
    assert "no such file" in one_line_error(cli("plot", "widths", tmp_path / "missing.pt", "-o", tmp_path / "a.png"))
    assert "no such file" in one_line_error(cli("plot", "history", tmp_path / "missing.metrics.jsonl"))
    empty = tmp_path / "empty.metrics.jsonl"
    empty.write_text('{"note": "no epochs here"}\n\n')
    assert "no epoch records" in one_line_error(cli("plot", "history", empty))
    broken = tmp_path / "broken.metrics.jsonl"
    broken.write_text('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2, "train_lo\n')
    assert "line 2 is not JSON" in one_line_error(cli("plot", "history", broken))
    assert "not a prunecli checkpoint" in one_line_error(cli("plot", "widths", broken))
    assert "widths" in one_line_error(cli("plot", "widhts", chain["base"]), 2)  # did you mean
    assert list(tmp_path.glob("*.png")) == []


def test_plot_does_not_load_matplotlib_until_it_draws():
    code = (
        "import sys\nfrom prunecli.cli.app import main\n"
        "for args in (['--help'], ['plot', '--help'], ['plot', 'widths', '--help'], ['info', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "print('MPL' if 'matplotlib' in sys.modules else 'NO-MPL', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("NO-MPL") and "history" in proc.stdout


def test_run_dirs_still_plot_without_the_subcommand(cli, tmp_path):
    """`prunecli plot RUN_DIR...` (before widths and history) is still `plot runs RUN_DIR...` (tests/test_recipes.py draws one)."""
    assert "no readable results.json" in one_line_error(cli("plot", tmp_path, "-o", tmp_path / "x.png"))
