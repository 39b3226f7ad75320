"""What a new user stumbles on (issue 13, items 3, 4, 5 and 9): progress on long steps,
help that fits 80 columns, the method names people type, and global-rate surprises.

Tiny models and the synthetic dataset only: the whole file runs in well under a minute on
two CPU cores.
"""

from __future__ import annotations

import io
import json
import re

import pytest
import torch
import torch.nn as nn
from conftest import TINY, one_line_error

from prunecli.checkpoint import load_checkpoint

# ---------------------------------------------------------------------------- 3. progress


def _console(terminal: bool, quiet: bool = False):
    from rich.console import Console

    return Console(file=io.StringIO(), force_terminal=terminal, quiet=quiet, width=100)


def test_progress_is_drawn_on_a_terminal_only():
    from prunecli._progress import shows_progress

    assert shows_progress(_console(terminal=True))
    assert not shows_progress(_console(terminal=False))  # a pipe, a log file, CI
    assert not shows_progress(_console(terminal=True, quiet=True))  # torchrun ranks > 0


def test_a_long_step_draws_its_bar_on_a_terminal_and_nothing_elsewhere(monkeypatch):
    import prunecli._progress as progress
    from prunecli.criteria.hessian import empirical_fisher

    model, batches = _tiny_model_and_batches()
    for terminal in (True, False):
        con = _console(terminal)
        monkeypatch.setattr(progress, "console", lambda con=con: con)
        empirical_fisher(model, batches)
        drawn = con.file.getvalue()
        assert ("hessian: per-sample gradients" in drawn) is terminal, drawn
        if terminal:
            assert "ETA" in drawn and "2/2" in drawn


def test_compress_shows_its_phases_on_a_terminal_only(monkeypatch, tmp_path):
    """The trace, removal, check and timing of a large model take tens of seconds: compress draws a bar over them."""
    import prunecli._progress as progress
    import prunecli.api as pc
    from prunecli.config import CompressConfig
    from prunecli.stages.compress import compress_checkpoint

    net = pc.build("resnet20", image_size=8)
    pc.prune(net, "l1", rate=0.5)
    masked = pc.save(net, tmp_path / "masked.pt")
    for terminal in (True, False):
        con = _console(terminal)
        monkeypatch.setattr(progress, "console", lambda con=con: con)
        compress_checkpoint(masked, CompressConfig(latency=False), output=tmp_path / f"c{terminal}.pt")
        drawn = con.file.getvalue()
        assert ("compress:" in drawn and "ETA" in drawn) is terminal, drawn


def test_a_bar_inside_a_bar_is_not_drawn(monkeypatch):
    # rich draws one live display at a time: an inner bar (an evaluation inside a sweep) stays silent
    import prunecli._progress as progress

    con = _console(terminal=True)
    monkeypatch.setattr(progress, "console", lambda: con)
    with progress.step_bar("outer", 2) as outer:
        assert outer is not None
        with progress.batches_bar("inner", [1, 2]) as inner:
            assert inner is None
    with progress.batches_bar("again", [1, 2]) as bar:
        assert bar is not None


# ---------------------------------------------------------------------------- 3. hessian, batched


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def _tiny_model_and_batches(dtype=torch.float32):
    torch.manual_seed(0)
    model = _TinyNet().to(dtype).eval()
    with torch.no_grad():  # running statistics that are not the identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    batches = [(torch.randn(6, 3, 5, 5, dtype=dtype), torch.randint(0, 5, (6,))) for _ in range(2)]
    return model, batches


@pytest.mark.parametrize("chunk_samples", [1, 4, 64])
def test_hessian_batched_equals_the_per_sample_loop(chunk_samples):
    from prunecli.criteria.hessian import empirical_fisher, empirical_fisher_loop

    # float64: the two forms differ only by rounding, far below any ReLU kink
    model, batches = _tiny_model_and_batches(torch.float64)
    per_sample = sum(p.numel() * p.element_size() for p in model.parameters())
    loop = empirical_fisher_loop(model, batches)
    batched = empirical_fisher(model, batches, chunk_bytes=chunk_samples * per_sample)
    assert loop.keys() == batched.keys()
    for name in loop:
        torch.testing.assert_close(batched[name], loop[name], rtol=1e-10, atol=1e-14)
    assert not model.training and all(not p.requires_grad or p.grad is None for p in model.parameters())


def test_hessian_batched_matches_the_loop_in_float32_and_scores_the_same():
    from prunecli.criteria.hessian import empirical_fisher, empirical_fisher_loop

    model, batches = _tiny_model_and_batches()
    loop, batched = empirical_fisher_loop(model, batches), empirical_fisher(model, batches)
    scale = max(float(v.abs().max()) for v in loop.values())
    assert max(float((batched[n] - loop[n]).abs().max()) for n in loop) <= 1e-5 * scale


class _NoVmap(torch.autograd.Function):
    """A custom op without a vmap rule: torch.func cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_hessian_falls_back_to_the_loop_where_torch_func_cannot_batch(monkeypatch):
    from prunecli.criteria.hessian import empirical_fisher, empirical_fisher_loop

    model, batches = _tiny_model_and_batches(torch.float64)
    plain = model.forward
    monkeypatch.setattr(model, "forward", lambda x: _NoVmap.apply(plain(x)))
    loop, batched = empirical_fisher_loop(model, batches), empirical_fisher(model, batches)
    for name in loop:
        torch.testing.assert_close(batched[name], loop[name])


# ---------------------------------------------------------------------------- 4. help


def _command_paths():
    import typer

    from prunecli.cli.app import app

    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


PYTHON_TYPES = re.compile(r"<(list|bool|int|float|str|path|text|tuple|dict)\b", re.IGNORECASE)


def test_every_help_fits_80_columns_with_names_whole_and_placeholders_in_words(cli):
    for path, cmd in _command_paths():
        r = cli(*path, "--help", env={"COLUMNS": "80"})
        assert r.code == 0, (path, r.stderr)
        text = r.stdout
        where = " ".join(["prunecli", *path])
        assert not PYTHON_TYPES.search(text), (where, PYTHON_TYPES.search(text).group(0))
        long_lines = [line for line in text.splitlines() if len(line) > 80]
        assert not long_lines, (where, long_lines)
        assert "…" not in text, where  # rich's ellipsis: something was cut
        for param in cmd.params:
            if getattr(param, "hidden", False) or param.param_type_name != "option":
                continue
            for flag in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (where, flag)


def test_help_placeholders_say_what_to_type(cli):
    text = cli("prune", "--help", env={"COLUMNS": "80"}).stdout
    for shown in ("-r, --rate R", "--layer-rate PATTERN=RATE", "--layer-rates R1,R2,...", "--epochs N", "--config FILE",
                  "--data DIR", "--channels-last / --no-channels-last", "--scope layerwise|global"):
        assert shown in text, shown
    assert "[default: 0.9; 0 to 1]" in text  # --momentum: default and range in words
    text = cli("train", "--help", env={"COLUMNS": "80"}).stdout
    assert "--model-arg KEY=VALUE" in text and "--milestones N1,N2,..." in text


def test_a_bad_value_is_one_line_in_words(cli):
    line = one_line_error(cli("list", "foo"), 2)
    assert "'foo' is not one of models, datasets, methods, algorithms" in line
    assert "Value error" not in line and "Invalid value" not in line
    assert "'abc': expected an integer" in one_line_error(cli("train", "--epochs", "abc"), 2)
    assert "--optimizer 'foo' is not one of sgd, adam, adamw" in one_line_error(cli("train", "--optimizer", "foo"), 2)
    assert "--epochs -1: must be >= 0" in one_line_error(cli("train", "--epochs", "-1"), 2)
    assert "missing WHAT (one of models, datasets, methods, algorithms)" in one_line_error(cli("list"), 2)


def test_every_option_has_a_metavar_derived_from_its_kind():
    from prunecli.config import STAGE_CONFIGS, option_specs
    from prunecli.config._base import Kind

    for cls in STAGE_CONFIGS.values():
        for spec in option_specs(cls):
            if spec.kind is Kind.BOOL:
                assert spec.metavar is None
            else:
                assert spec.metavar and "<" not in spec.metavar and "[" not in spec.metavar, (cls.command, spec.key)


# ---------------------------------------------------------------------------- 5. names


def test_aliases_resolve_to_registered_names_in_any_case():
    from prunecli.config.methods import canonical_method
    from prunecli.criteria import criterion_aliases, get_criterion

    assert canonical_method("fpgm") == canonical_method("FPGM") == "geomedian"
    assert canonical_method("Network_Slimming") == canonical_method("slim") == canonical_method("bn") == "slimming"
    assert canonical_method("L1-norm") == canonical_method("L1") == "l1"
    assert canonical_method("OBD") == "hessian" and canonical_method("edge-popup") == "edgepopup"
    assert canonical_method("sparse-structure-selection") == "sss"
    assert canonical_method("bogus") == "bogus"  # left for the registry to refuse with the valid names
    assert get_criterion("FPGM").name == "geomedian"
    assert "fpgm" in criterion_aliases("geomedian")


def test_a_method_that_is_a_criterion_plus_options_says_what_to_type(cli, tiny_base):
    line = one_line_error(cli("prune", tiny_base, "--method", "sfp", "--rate", "0.3"), 2)
    assert "--method l2 --soft --epochs N" in line


def test_every_registered_criterion_has_its_alias_entry_and_granularities():
    from prunecli.config.methods import METHOD_ALIASES, NON_CHANNEL_GRANULARITIES
    from prunecli.criteria import criterion_class, list_criteria

    for name in list_criteria():
        assert name in METHOD_ALIASES, name  # so that any case of the name resolves
        has = criterion_class(name).granularities
        if "channel" in has:
            assert name not in NON_CHANNEL_GRANULARITIES, name
        else:
            assert tuple(NON_CHANNEL_GRANULARITIES[name]) == tuple(has), name


def test_list_methods_shows_aliases(cli):
    rows = json.loads(cli("list", "methods", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert "fpgm" in by_name["geomedian"]["aliases"] and "network-slimming" in by_name["slimming"]["aliases"]
    assert "sfp" not in by_name["l2"]["aliases"]  # SFP is l2 *with* --soft, not another name for l2
    table = cli("list", "methods").stdout
    assert re.search(r"fpgm, geometric-median\s+= geomedian", table)


def test_an_alias_is_recorded_under_its_registered_name(cli, tiny_base, tmp_path):
    r = cli("prune", tiny_base, "--method", "FPGM", "--rate", "0.3", "-o", tmp_path / "f.pt")
    assert r.code == 0, r.stderr
    ckpt = load_checkpoint(r.path)
    assert ckpt.lineage[-1]["options"]["method"] == "geomedian"
    assert ckpt.extra["prune"]["method"] == "geomedian"


def test_every_command_that_takes_method_resolves_aliases():
    from prunecli.config import CompressConfig, PruneConfig, SensitivityConfig

    assert PruneConfig(method="fpgm", rate=0.3).to_options()["method"] == "geomedian"
    assert SensitivityConfig(method="slim").method == "slimming"
    assert CompressConfig(block_by_block=True, method="l1-norm", rate=0.3).method == "l1"
    assert CompressConfig(block_by_block=True, method="sensitivity-pruner", rate=0.3).method == "sensitivity"


def test_magnitude_picks_its_only_granularity_and_says_so(cli, tiny_base, tmp_path):
    r = cli("prune", tiny_base, "--method", "magnitude", "--rate", "0.5", "-o", tmp_path / "m.pt")
    assert r.code == 0, r.stderr
    assert "pruning at --granularity weight" in r.stderr
    assert load_checkpoint(r.path).extra["prune"]["granularity"] == "weight"
    line = one_line_error(cli("prune", tiny_base, "--method", "magnitude", "--target-macs", "0.3", "-o", tmp_path / "n.pt"), 2)
    assert "single weights" in line and "l1" in line
    # given explicitly, a granularity the method lacks is still refused
    assert cli("prune", tiny_base, "--method", "magnitude", "--granularity", "channel", "--rate", "0.5", "-o", tmp_path / "c.pt").code != 0


# ---------------------------------------------------------------------------- 9. global rate


def test_global_rate_that_strips_layers_warns(cli, tmp_path):
    base = cli("train", "--model", "resnet20", *TINY[:4], "--device", "cpu", "--epochs", "0", "-o", tmp_path / "r20.pt").path
    # an untrained ResNet: every BatchNorm scale is 1, so one global threshold strips whole layers
    r = cli("prune", base, "--method", "slimming", "--scope", "global", "--rate", "0.4", "-o", tmp_path / "g.pt")
    assert r.code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any("keep less than 10% of their channels" in w and "--max-layer-rate" in w for w in warnings), r.stderr
    assert re.search(r"params \S+ -> \S+", r.stderr)  # what the compressed model will have
    r = cli("prune", base, "--method", "l1", "--rate", "0.4", "-o", tmp_path / "l.pt")
    assert r.code == 0 and "warning:" not in r.stderr, r.stderr  # layer-wise: every layer as asked


def test_params_falling_far_beyond_the_rate_warn():
    from types import SimpleNamespace

    from prunecli.config import PruneConfig
    from prunecli.stages.prune import surprises
    from prunecli.surgery.plan import Plan, UnitPlan

    def plan(kept: int, rate: float = 0.4):
        unit = SimpleNamespace(size=16, root="layer1", index=0)
        return Plan("channel", [UnitPlan(unit, "prune", rate=rate, prune=torch.arange(16 - kept))], rate=rate)

    cfg = PruneConfig(method="slimming", scope="global", rate=0.4)
    # rate 0.4 on every layer keeps about 36% of the params: 5.4% kept is a surprise, 30% is not
    [line] = surprises(plan(kept=8), cfg, params_before=1000, params_after=54)
    assert line.startswith("params fall 94.6% at --rate 0.4") and "channel groups" in line
    assert surprises(plan(kept=8), cfg, params_before=1000, params_after=300) == []
    [line] = surprises(plan(kept=1), cfg, params_before=1000, params_after=300)
    assert "layer1 16->1" in line
    # asked for: 95% of every layer, layer-wise, keeps 5% without a warning
    layerwise = PruneConfig(method="l1", rate=0.95)
    assert surprises(plan(kept=1, rate=0.95), layerwise, 1000, 10) == []


def test_help_says_what_the_rate_counts(cli):
    box = re.sub(r"[│╭╮╰╯─]", " ", cli("prune", "--help", env={"COLUMNS": "80"}).stdout)
    text = " ".join(box.split())  # the panel's wrapping undone
    assert "--scope layerwise: of each layer's channels (or weights); --scope global: of all eligible channels" in text
    assert "a coupled group (a residual stream) counting once" in text
