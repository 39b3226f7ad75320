"""Torchvision's classification families through prune -> compress (small inputs).

Every family must either compress with masked == compressed and reload from the
checkpoint alone, or fail with one clear line (Torch-Pruning's known limits).
"""

from __future__ import annotations

import pytest
import torch

from prunecli.checkpoint import load_checkpoint
from prunecli.stages.checkpoints import rebuild_model
from prunecli.errors import PruneCliError
from prunecli.surgery.equivalence import outputs, probe_batch
from pruning_helpers import compress, make_checkpoint, prune

FAST = [
    "resnet18",
    "resnext50_32x4d",
    "densenet121",
    "googlenet",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mnasnet0_5",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_x_400mf",
    "regnet_y_400mf",
    "squeezenet1_0",
]
SLOW = ["wide_resnet50_2", "vgg11_bn", "alexnet", ("inception_v3", 299)]


def _check_family(tmp_path, name: str, size: int = 64):
    src = make_checkpoint(tmp_path / "base.pt", f"tv:{name}", image_size=size)
    r = prune(src, tmp_path / "m.pt", rate=0.3)
    c = compress(tmp_path / "m.pt", tmp_path / "c.pt")
    assert c.macs_after < c.macs_before and c.params_after < c.params_before
    assert c.macs_after == r.macs_after
    masked, small = load_checkpoint(tmp_path / "m.pt"), load_checkpoint(tmp_path / "c.pt")
    probe = probe_batch(masked.model, 2)
    a, b = outputs(rebuild_model(masked), probe), outputs(rebuild_model(small), probe)
    assert torch.allclose(a, b, atol=1e-4 * max(1.0, float(a.abs().max())), rtol=0)


@pytest.mark.parametrize("name", FAST)
def test_torchvision_family(tmp_path, name):
    _check_family(tmp_path, name)


@pytest.mark.slow
@pytest.mark.parametrize("entry", SLOW, ids=lambda e: e if isinstance(e, str) else e[0])
def test_torchvision_family_slow(tmp_path, entry):
    name, size = (entry, 64) if isinstance(entry, str) else entry
    _check_family(tmp_path, name, size)


def test_convnext_needs_and_works_with_prune_compress(tmp_path):
    src = make_checkpoint(tmp_path / "base.pt", "tv:convnext_tiny", image_size=32)
    with pytest.raises(PruneCliError, match="LayerNorm"):
        prune(src, tmp_path / "m.pt", rate=0.3)
    r = prune(src, tmp_path / "c.pt", rate=0.3, compress=True)
    assert r.macs_after < 0.6 * r.macs_before
    model = rebuild_model(load_checkpoint(tmp_path / "c.pt"))  # the structure replays
    assert outputs(model, probe_batch(load_checkpoint(tmp_path / "c.pt").model, 1)).shape == (1, 10)


@pytest.mark.slow
def test_vit_with_prune_compress(tmp_path):
    src = make_checkpoint(tmp_path / "base.pt", "tv:vit_b_16", image_size=224)
    r = prune(src, tmp_path / "c.pt", rate=0.3, compress=True)
    model = rebuild_model(load_checkpoint(tmp_path / "c.pt"))
    assert model.hidden_dim == model.conv_proj.out_channels and model.hidden_dim % 12 == 0  # whole heads
    assert r.macs_after < r.macs_before


def test_shufflenet_is_a_clear_error(tmp_path):
    src = make_checkpoint(tmp_path / "base.pt", "tv:shufflenet_v2_x0_5", image_size=64)
    with pytest.raises(PruneCliError, match="channel shuffle"):
        prune(src, tmp_path / "m.pt", rate=0.3)
    assert not (tmp_path / "m.pt").exists()
    # weight-level masks need no dependency graph
    prune(src, tmp_path / "w.pt", method="magnitude", granularity="weight", rate=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swin_t", "maxvit_t"])
def test_hanging_families_are_stopped(tmp_path, name):
    src = make_checkpoint(tmp_path / "base.pt", f"tv:{name}", image_size=224)
    with pytest.raises(PruneCliError, match="did not finish"):
        prune(src, tmp_path / "m.pt", rate=0.3)
