"""--config FILE.yaml: default < YAML < flag, unknown keys and wrong types rejected by name."""

from __future__ import annotations

import yaml
from conftest import TINY, one_line_error

from prunecli.checkpoint import load_checkpoint


def _write(path, text):
    path.write_text(text)
    return path


def test_yaml_overrides_defaults_and_flags_override_yaml(cli, tmp_path):
    cfg = _write(tmp_path / "c.yaml", "epochs: 0\nseed: 7\nlr: 0.3\nbatch-size: 32\nmilestones: [3, 5]\nmodel-arg: {}\n")
    r = cli("train", *TINY, "--config", cfg, "--lr", "0.2", "-o", tmp_path / "a.pt")
    assert r.code == 0, r.stderr
    opts = load_checkpoint(r.path).lineage[0]["options"]
    assert opts["epochs"] == 0  # from YAML (default is 15)
    assert opts["seed"] == 7  # from YAML
    assert opts["lr"] == 0.2  # the flag beats YAML's 0.3
    assert opts["batch-size"] == 64  # TINY passes --batch-size 64 on the command line
    assert opts["milestones"] == "3,5"  # YAML list accepted for the comma-separated option
    assert load_checkpoint(r.path).resume["config"]["milestones"] == [3, 5]


def test_written_config_is_reusable(cli, tmp_path):
    r = cli("train", *TINY, "--epochs", "0", "--seed", "5", "-o", tmp_path / "a.pt")
    assert r.code == 0, r.stderr
    written = tmp_path / "a.config.yaml"
    assert written.exists()
    data = yaml.safe_load(written.read_text())
    assert data["seed"] == 5 and data["model"] == "conv2"
    r2 = cli("train", "--config", written, "-o", tmp_path / "b.pt")
    assert r2.code == 0, r2.stderr
    assert load_checkpoint(r2.path).lineage[0]["options"]["seed"] == 5


def test_unknown_key_names_it(cli, tmp_path):
    cfg = _write(tmp_path / "c.yaml", "epochs: 1\nlearning_rate: 0.1\n")
    line = one_line_error(cli("train", "--config", cfg, "-o", tmp_path / "a.pt"), code=2)
    assert "learning_rate" in line and "lr" in line
    assert not (tmp_path / "a.pt").exists()


def test_wrong_types_name_the_key(cli, tmp_path):
    for text, key in (("epochs: many\n", "epochs"), ("epochs: 1.5\n", "epochs"), ("lr: true\n", "lr"), ("optimizer: rmsprop\n", "optimizer"), ("nesterov: 1\n", "nesterov")):
        cfg = _write(tmp_path / "c.yaml", text)
        line = one_line_error(cli("train", "--config", cfg, "-o", tmp_path / "a.pt"), code=2)
        assert repr(key) in line or key in line, line


def test_invalid_yaml_and_non_mapping(cli, tmp_path):
    one_line_error(cli("train", "--config", _write(tmp_path / "a.yaml", "epochs: [1,\n"), "-o", tmp_path / "a.pt"), code=2)
    one_line_error(cli("train", "--config", _write(tmp_path / "b.yaml", "- 1\n- 2\n"), "-o", tmp_path / "a.pt"), code=2)
    one_line_error(cli("train", "--config", tmp_path / "missing.yaml", "-o", tmp_path / "a.pt"), code=2)


def test_every_command_takes_config(cli, tmp_path, tiny_base):
    cfg = _write(tmp_path / "e.yaml", "batch-size: 16\nlatency: false\nlayers: false\n")
    r = cli("evaluate", tiny_base, "--config", cfg, "--json")
    assert r.code == 0, r.stderr
    assert r.stdout.strip().startswith("{")
    cfg2 = _write(tmp_path / "i.yaml", "json: true\n")
    r = cli("info", tiny_base, "--config", cfg2)
    assert r.code == 0 and r.stdout.strip().startswith("{")
    r = cli("list", "models", "--config", cfg2)
    assert r.code == 0 and r.stdout.strip().startswith("[")
    r = cli("finetune", tiny_base, "--config", _write(tmp_path / "f.yaml", "epochs: 0\n"), "-o", tmp_path / "f.pt")
    assert r.code == 0, r.stderr
