"""The CLI contracts of DESIGN.md: fast help, stdout only for results, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import TINY, one_line_error, run_process

from prunecli import __version__


def test_help_does_not_import_torch():
    # `prunecli --help` must stay fast; importing torch alone takes over a second
    code = (
        "import sys\n"
        "from prunecli.cli.app import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for cmd in ('train', 'prune', 'compress', 'finetune', 'evaluate', 'info', 'list'):\n"
        "    try:\n        main([cmd, '--help'])\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().endswith("NO-TORCH")
    assert "train" in proc.stdout and "--epochs" in proc.stdout


def test_version(cli):
    r = cli("--version")
    assert r.code == 0
    assert r.stdout.strip() == f"prunecli {__version__}"


def test_python_dash_m_entry_point():
    r = run_process(["--version"])
    assert r.code == 0 and r.stdout.strip() == f"prunecli {__version__}"


def test_unknown_command_is_usage_error(cli):
    line = one_line_error(cli("trian"), code=2)
    assert "trian" in line


def test_bad_option_value_is_usage_error(cli):
    line = one_line_error(cli("train", "--epochs", "many"), code=2)
    assert "--epochs" in line


def test_unknown_model_lists_valid_names_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "x.pt"
    line = one_line_error(cli("train", "--model", "resnet57", "--epochs", "0", "-o", out), 2)
    assert "resnet57" in line and "resnet56" in line and "conv4" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_dataset(cli, tmp_path):
    line = one_line_error(cli("train", "--dataset", "cifar11", "--epochs", "0", "-o", tmp_path / "x.pt"), 2)
    assert "cifar11" in line and "cifar10" in line


def test_missing_dataset_folder_says_where_it_looked(cli, tmp_path):
    line = one_line_error(cli("train", "--dataset", "cifar10", "--data", tmp_path / "nowhere", "--epochs", "0", "-o", tmp_path / "x.pt"))
    assert "looked for" in line and str(tmp_path / "nowhere") in line
    assert not (tmp_path / "x.pt").exists()


def test_bad_model_argument(cli, tmp_path):
    line = one_line_error(cli("train", *TINY, "--model-arg", "depth=3", "--epochs", "0", "-o", tmp_path / "x.pt"), 2)
    assert "depth" in line


def test_cuda_requested_without_cuda(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    line = one_line_error(cli("train", "--dataset", "synthetic", "--device", "cuda", "--epochs", "0", "-o", tmp_path / "x.pt"), 2)
    assert "CUDA" in line


def test_debug_env_shows_traceback(tmp_path):
    r = run_process(["info", tmp_path / "missing.pt"], env={"PRUNECLI_DEBUG": "1"})
    assert r.code != 0 and "Traceback" in r.stderr
    r = run_process(["info", tmp_path / "missing.pt"])
    assert r.code == 1 and "Traceback" not in r.stderr


def test_list_models_and_datasets(cli):
    r = cli("list", "models")
    assert r.code == 0
    for name in ("conv4", "vgg16", "resnet56", "preresnet164", "densenet40", "resnext29", "mobilenetv2", "lenet300_100", "tv:NAME"):
        assert name in r.stdout
    r = cli("list", "datasets", "--json")
    names = {d["name"] for d in json.loads(r.stdout)}
    assert {"digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "imagenet", "imagefolder", "synthetic"} <= names


def test_stdin_dash_without_input(cli):
    line = one_line_error(cli("info", "-", stdin=""))
    assert "stdin" in line
