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


# -- the typed stage configs ------------------------------------------------------------


def _click_commands():
    import typer

    from prunecli.cli.app import app

    return typer.main.get_command(app).commands


def test_every_command_option_is_its_config_field():
    """Flags, defaults, choices and bounds of each command come from its typed config."""
    import enum

    from prunecli.config import STAGE_CONFIGS, option_specs
    from prunecli.config._base import Kind

    commands = _click_commands()
    # recipe and plot run over recipe files and run directories: no pipeline stage of their own
    assert set(commands) - {"recipe", "plot"} == set(STAGE_CONFIGS)
    for name, cls in STAGE_CONFIGS.items():
        params = {p.name: p for p in commands[name].params if p.param_type_name == "option" and p.name not in ("config", "help")}
        specs = {s.name: s for s in option_specs(cls)}
        assert set(params) == set(specs), name
        for key, spec in specs.items():
            p = params[key]
            assert f"--{spec.key}" in p.opts, (name, key, p.opts)
            default = p.default.value if isinstance(p.default, enum.Enum) else p.default
            if spec.kind in (Kind.INTS, Kind.FLOATS, Kind.STRS, Kind.KEY_VALUES, Kind.PATTERN_RATES):
                assert default in (None, ()) and not spec.default, (name, key)
            else:
                want = spec.default.value if isinstance(spec.default, enum.Enum) else spec.default
                assert default == want, (name, key, default, want)
            if spec.kind is Kind.ENUM:
                choices = [m.value for m in p.type_descriptor.annotation]
                assert choices == [m.value for m in spec.choices], (name, key)
            assert (p.min, p.max) == (spec.opt.min, spec.opt.max), (name, key)


def test_finetune_and_train_defaults_differ_only_where_the_config_says():
    from prunecli.config import FinetuneConfig, TrainConfig

    assert TrainConfig().epochs == 15 and FinetuneConfig().epochs == 20
    assert TrainConfig().lr == FinetuneConfig().lr == 0.01


def test_configs_reject_unknown_keys_and_round_trip_their_command_line_form():
    import pytest

    from prunecli.config import STAGE_CONFIGS, PruneConfig, TrainConfig
    from prunecli.errors import OptionError

    with pytest.raises(OptionError, match="unknown key 'learning_rate'"):
        TrainConfig.from_options({"learning_rate": 0.1})
    cfg = TrainConfig.from_options({"model-arg": ["width=2", "cfg=[64, M]"], "milestones": "80,120", "optimizer": "adam"})
    assert cfg.model_args == {"width": 2, "cfg": [64, "M"]} and cfg.milestones == [80, 120] and cfg.optimizer == "adam"
    assert TrainConfig.from_options(cfg.to_options()) == cfg
    assert TrainConfig.from_options(cfg.to_dict()) == cfg
    p = PruneConfig.from_options({"rate": 0.5, "skip": ["layer*.conv2", 16], "layer-rate": {"layer1.*": 0.6}})
    assert p.skip == ["layer*.conv2", "16"] and p.layer_rate == [("layer1.*", 0.6)]
    assert PruneConfig.from_options(p.to_options()) == p
    for cls in STAGE_CONFIGS.values():
        default = cls(rate=0.5) if cls is PruneConfig else cls()
        assert cls.from_options(default.to_options()) == default


def test_library_errors_name_keys_and_the_command_line_names_flags(cli, tmp_path):
    import pytest

    from prunecli.config import PruneConfig, flag_for
    from prunecli.errors import OptionError

    with pytest.raises(OptionError) as err:
        PruneConfig(rate=1.5)
    assert str(err.value).startswith("rate 1.5") and err.value.keys == ["rate"]
    assert err.value.render(flag_for).startswith("--rate 1.5")
    with pytest.raises(OptionError) as err:
        PruneConfig(rate=0.5, target_macs=0.3)
    assert err.value.exit_code == 2 and "target_macs" in str(err.value) and "--target-macs" not in str(err.value)
    from pruning_helpers import make_checkpoint

    src = make_checkpoint(tmp_path / "b.pt", "conv2", image_size=8)
    line = one_line_error(cli("prune", src, "--rate", "1.5", "-o", tmp_path / "o.pt"), code=2)
    assert "--rate 1.5" in line
    line = one_line_error(cli("prune", src, "--config", _write(tmp_path / "p.yaml", "rate: [1]\n")), code=2)
    assert "key 'rate'" in line


def test_the_config_written_next_to_a_finetune_output_is_a_valid_config(cli, tmp_path, tiny_base):
    r = cli("finetune", tiny_base, "--epochs", "0", "--lr", "0.003", "-o", tmp_path / "f.pt")
    assert r.code == 0, r.stderr
    written = yaml.safe_load((tmp_path / "f.config.yaml").read_text())
    assert "checkpoint" not in written and written["lr"] == 0.003
    again = cli("finetune", tiny_base, "--config", tmp_path / "f.config.yaml", "-o", tmp_path / "g.pt")
    assert again.code == 0, again.stderr
    assert load_checkpoint(again.path).lineage[-1]["options"]["lr"] == 0.003
    # and a prune config check needs no command line at all (what recipe stages use)
    from prunecli.config import PruneConfig

    assert PruneConfig.from_options({"method": "geomedian", "rate": 0.4, "mix-norm": 0.1}).mix_norm == 0.1
