"""Model zoo: published sizes, every registered model end to end, and name resolution.

Parameter counts and MACs depend only on the architecture, so a correct implementation
reproduces the papers' tables from randomly initialised weights (METHODS.md). Published
numbers are checked to the precision the paper prints them with; where a paper's number
can only be matched with a stated tolerance, the test says why.
"""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from prunecli.errors import PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.models import get_model, list_models, model_description
from prunecli.models.cifar_resnet import ShortcutA

CIFAR = (3, 32, 32)


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    # Batch-2 CPU work gains nothing from OpenMP, and when other processes share the cores
    # its waiting threads made this file 30x slower (forward/backward of every model:
    # 2.8 s on one thread, 90 s on two, on a loaded 2-core machine).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _round_to(value: float, unit: float) -> float:
    """``value`` rounded to a multiple of ``unit`` (the last digit the paper prints)."""
    return round(value / unit) * unit


# --- (a) exact parameter counts -------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [("conv2", 4_300_992), ("conv4", 2_425_024), ("conv6", 2_261_184), ("conv8", 5_275_840)],
)
def test_convnet_param_counts_are_exact(name, expected):
    assert _params(get_model(name, in_channels=3, num_classes=10, image_size=32)) == expected


def test_lenet300_100_param_count_is_exact():
    assert _params(get_model("lenet300_100", in_channels=1, num_classes=10, image_size=28)) == 266_610


def test_convnets_have_no_bias_and_no_batchnorm():
    model = get_model("conv8")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_convnet_flatten_size_follows_input_shape():
    model = get_model("conv4", in_channels=1, image_size=16)  # digits: two pools, 16 -> 4
    assert model.classifier[0].in_features == 128 * 4 * 4
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 10)


# --- (b) published parameter counts ---------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, published, unit",
    [
        # Li et al. (arXiv:1608.08710) table: 8.5e5 and 1.5e7
        ("resnet56", {}, 8.5e5, 1e4),
        ("vgg16", {"head": "li"}, 1.5e7, 1e6),
        # Network Slimming (arXiv:1708.06519) table: 20.04M, 1.70M
        ("vgg19", {"head": "slimming"}, 20.04e6, 1e4),
        ("preresnet164", {}, 1.70e6, 1e4),
        # pytorch-classification's post-activation ResNet-164: 1.70M
        ("resnet164", {}, 1.70e6, 1e4),
        # Slimming's DenseNet-40 (1.02M) has a 16-channel stem (the default), see below
        ("densenet40", {}, 1.02e6, 1e4),
        # Xie et al. (arXiv:1611.05431) table 7: ResNeXt-29 8x64d 34.4M
        ("resnext29", {}, 34.4e6, 1e5),
    ],
)
def test_param_count_matches_paper_to_printed_precision(name, kwargs, published, unit):
    measured = _params(get_model(name, **kwargs))
    assert _round_to(measured, unit) == pytest.approx(published), measured


def test_resnet56_option_a_has_853018_params():
    assert _params(get_model("resnet56")) == 853_018


def test_resnet110_param_count_matches_li_et_al_truncated():
    # Li et al. print 1.72e6 for 1,727,962: the digits are truncated, not rounded (rounding
    # would print 1.73e6), so the tolerance is one unit of the last digit, from below.
    measured = _params(get_model("resnet110"))
    assert measured == 1_727_962
    assert 0 <= measured - 1.72e6 < 1e4


def test_densenet40_stem_widths():
    # The default 16-channel stem (Huang et al.) reproduces the Slimming table (test above);
    # Network Slimming's PyTorch code uses 2 x growth rate = 24 channels, 4% more params.
    assert get_model("densenet40").conv1.out_channels == 16
    assert _params(get_model("densenet40")) == 1_019_722
    model = get_model("densenet40", stem_channels=24)
    assert model.conv1.out_channels == 24
    assert _params(model) == 1_059_298


def test_mobilenetv2_imagenet_matches_torchvision_exactly():
    import torchvision

    ours = get_model("mobilenetv2", num_classes=1000, image_size=224, strides="imagenet")
    assert _params(ours) == 3_504_872 == _params(torchvision.models.mobilenet_v2(weights=None))


# --- (c) MACs (conv + linear) ---------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs, published, unit",
    [
        # Li et al. (arXiv:1608.08710) table, conv + linear MACs at 3x32x32 ("FLOPs" there)
        ("vgg16", {"head": "li"}, 3.13e8, 1e6),
        ("resnet56", {}, 1.25e8, 1e6),
        ("resnet110", {}, 2.53e8, 1e6),
    ],
)
def test_macs_match_paper_to_printed_precision(name, kwargs, published, unit):
    macs = count_complexity(get_model(name, **kwargs), CIFAR).macs
    assert _round_to(macs, unit) == pytest.approx(published), macs


@pytest.mark.parametrize(
    "name, kwargs, published_flops",
    [
        # Network Slimming (arXiv:1708.06519) table, CIFAR-10 baselines
        ("vgg19", {"head": "slimming"}, 7.97e8),
        ("preresnet164", {}, 4.99e8),
        ("densenet40", {}, 5.33e8),
    ],
)
def test_slimming_flops_are_about_twice_the_macs(name, kwargs, published_flops):
    # Slimming's FLOPs count a multiply and an add per MAC plus the BN, ReLU and pooling
    # operations that prunecli's MACs leave out, so 2 x MACs must fall slightly below the
    # paper's number: by at most 1% (measured: 0.09%, 0.75%, 0.64%).
    flops = 2 * count_complexity(get_model(name, **kwargs), CIFAR).macs
    assert 0 <= published_flops - flops <= 0.01 * published_flops, flops


def test_resnet50_is_torchvisions_with_the_sensitivity_pruners_cifar_stem():
    """The seed's ImageNet baseline has 25.557 M params; its 'resnet56' folders hold this net with a CIFAR stem."""
    imagenet = get_model("resnet50", num_classes=1000, image_size=224)
    assert _params(imagenet) == 25_557_032 and isinstance(imagenet.maxpool, torch.nn.MaxPool2d)
    cifar = get_model("resnet50", num_classes=10, image_size=32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and isinstance(cifar.maxpool, torch.nn.Identity)
    assert _params(cifar) == 23_520_842
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_mobilenetv2_imagenet_macs_match_torchvision():
    import torchvision

    ours = count_complexity(get_model("mobilenetv2", num_classes=1000, image_size=224), (3, 224, 224))
    theirs = count_complexity(torchvision.models.mobilenet_v2(weights=None), (3, 224, 224))
    assert ours == theirs


# --- (d) every registered model, end to end -------------------------------------------

EXPECTED_MODELS = {
    "conv2", "conv4", "conv6", "conv8", "lenet300_100",
    "vgg11", "vgg13", "vgg16", "vgg19",
    "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet164", "preresnet164",
    "densenet40", "resnext29", "mobilenetv2", "resnet50",
}  # fmt: skip

# Full-size ResNeXt-29 is 5.4 GMACs per image: shrink it for a CPU forward/backward
# (the full network is covered by the parameter-count test).
SMALL_KWARGS = {"resnext29": {"cardinality": 2, "base_width": 4}}

# models with four 2x2 max-pools need at least 16 pixels
NEEDS_16_PIXELS = {"conv8", "vgg11", "vgg13", "vgg16", "vgg19"}

SHAPES = [
    pytest.param(1, 16, 10, id="1x16x16-10cls"),
    pytest.param(3, 32, 100, id="3x32x32-100cls"),
    pytest.param(3, 8, 10, id="3x8x8-10cls"),
]


def test_registry_has_every_family():
    assert EXPECTED_MODELS <= set(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_model_cites_its_paper(name):
    assert "arXiv:" in model_description(name)


@pytest.mark.parametrize("in_channels, image_size, num_classes", SHAPES)
@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_forward_and_backward(name, in_channels, image_size, num_classes):
    if name in NEEDS_16_PIXELS and image_size < 16:
        pytest.skip(f"{name} max-pools 4 times: needs image_size >= 16 (the error is tested separately)")
    torch.manual_seed(0)
    model = get_model(
        name, in_channels=in_channels, num_classes=num_classes, image_size=image_size, **SMALL_KWARGS.get(name, {})
    )
    out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, num_classes)
    out.logsumexp(1).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert not unused, f"parameters outside the forward pass: {unused[:5]}"


@pytest.mark.parametrize("name", sorted(NEEDS_16_PIXELS))
def test_too_small_images_give_a_clean_error(name):
    with pytest.raises(PruneCliError, match="image_size must be >= 16"):
        get_model(name, image_size=8)


# --- architecture details later code relies on ----------------------------------------


def test_cifar_resnet_uses_named_option_a_shortcuts():
    model = get_model("resnet56")
    shortcuts = {n: m for n, m in model.named_modules() if isinstance(m, ShortcutA)}
    assert sorted(shortcuts) == ["layer2.0.shortcut", "layer3.0.shortcut"]
    x = torch.randn(1, 16, 8, 8)
    y = shortcuts["layer2.0.shortcut"](x)
    assert y.shape == (1, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and not y[:, 16:].any()
    # a pruned map: output j carries input source[j], -1 is a zero channel
    shortcut = ShortcutA(4, 6, stride=2)
    shortcut.source = torch.tensor([2, -1, 0, -1, 3, -1])
    shortcut.refresh()
    x = torch.randn(1, 4, 4, 4)
    y = shortcut(x)
    sub = x[:, :, ::2, ::2]
    assert torch.equal(y[0, 0], sub[0, 2]) and torch.equal(y[0, 2], sub[0, 0]) and torch.equal(y[0, 4], sub[0, 3])
    assert not y[0, [1, 3, 5]].any()
    state = shortcut.state_dict()
    fresh = ShortcutA(4, 6, stride=2)
    fresh.load_state_dict(state)  # the map travels in the state dict and refreshes the gather
    assert torch.equal(fresh(x), y)


@pytest.mark.parametrize("name", ["vgg19", "preresnet164", "densenet40"])
def test_slimming_models_start_with_bn_gamma_one_half(name):
    bns = [m for m in get_model(name).modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(torch.all(bn.weight == 0.5) for bn in bns)


def test_full_size_resnext29_runs_forward():
    model = get_model("resnext29", num_classes=100).eval()  # 8x64d: 5.4 GMACs per image
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_mobilenetv2_has_seven_stages_and_cifar_strides():
    model = get_model("mobilenetv2", image_size=32)  # "auto" -> CIFAR strides
    assert len(model.stages) == 7
    assert [len(s) for s in model.stages] == [1, 2, 3, 4, 3, 3, 1]
    assert model.stages(model.stem(torch.zeros(1, 3, 32, 32))).shape[-2:] == (4, 4)
    depthwise = model.stages[1][0].depthwise.conv
    assert depthwise.groups == depthwise.in_channels == depthwise.out_channels
    assert get_model("mobilenetv2", image_size=224).stem.conv.stride == (2, 2)


def test_mobilenetv2_width_mult_rounds_to_multiples_of_8():
    model = get_model("mobilenetv2", width_mult=0.35)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)
    assert model.classifier[1].in_features == 1280  # the last conv never shrinks


def test_vgg_heads_and_pruned_cfg():
    assert isinstance(get_model("vgg16").classifier, nn.Sequential)  # li head by default
    assert isinstance(get_model("vgg19").classifier, nn.Linear)  # slimming head by default
    cfg = [32, 64, "M", 128, 128, "M", 256, 256, 256, "M", 256, 256, 256, "M", 256, 256, 256]
    pruned = get_model("vgg16", cfg=cfg)  # VGG-16-pruned-A's widths (Li et al.)
    assert [m.out_channels for m in pruned.features if isinstance(m, nn.Conv2d)] == [c for c in cfg if c != "M"]
    assert pruned.classifier[0].in_features == 256
    assert pruned(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("kwargs, message", [({"head": "big"}, "unknown head"), ({"cfg": [64, "X"]}, "cfg entries")])
def test_vgg_bad_arguments_give_clean_errors(kwargs, message):
    with pytest.raises(PruneCliError, match=message):
        get_model("vgg16", **kwargs)


# --- (e) torchvision adapter ----------------------------------------------------------


def test_torchvision_model_gets_num_classes():
    model = get_model("tv:resnet18", num_classes=7)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_unknown_torchvision_model_lists_names():
    with pytest.raises(PruneCliError, match="resnet18") as err:
        get_model("tv:resnet_nonexistent")
    assert "mobilenet_v2" in str(err.value)


def test_torchvision_model_refuses_one_channel_input():
    with pytest.raises(PruneCliError, match="3 input channels"):
        get_model("tv:resnet18", in_channels=1)


# --- (f) user models ------------------------------------------------------------------

USER_CODE = textwrap.dedent(
    """
    import torch.nn as nn

    def adaptive(in_channels, num_classes, width=4):
        return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(width, num_classes))

    def fixed():
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

    def not_a_module(num_classes):
        return "hello"

    def picky(width=4):
        raise ValueError("width must be even")
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_nets.py"
    path.write_text(USER_CODE)
    return path


def test_user_file_factory_receives_what_it_accepts(user_file):
    model = get_model(f"{user_file}:adaptive", in_channels=1, num_classes=3, width=6)
    assert model[0].in_channels == 1 and model[0].out_channels == 6
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


def test_user_file_factory_without_shape_parameters(user_file):
    model = get_model(f"{user_file}:fixed", in_channels=3, num_classes=5)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5)


def test_user_module_factory_on_sys_path(tmp_path, monkeypatch):
    package = tmp_path / "prunecli_test_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("prunecli_test_user_pkg", "prunecli_test_user_pkg.nets"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    model = get_model("prunecli_test_user_pkg.nets:adaptive", in_channels=3, num_classes=4)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 4)


@pytest.mark.parametrize(
    "target, message",
    [
        ("{dir}/missing.py:adaptive", "not found"),
        ("{file}:nothing_here", "has no callable 'nothing_here'"),
        ("{file}:not_a_module", "not a torch.nn.Module"),
        ("{file}:picky", "width must be even"),
        ("prunecli_no_such_package.nets:build", "cannot import module"),
        (":adaptive", "expected path/to/file.py:factory"),
    ],
)
def test_bad_user_model_names_give_clear_errors(user_file, target, message):
    name = target.format(dir=user_file.parent, file=user_file)
    with pytest.raises(PruneCliError, match=message):
        get_model(name)


def test_user_factory_rejects_arguments_it_does_not_take(user_file):
    with pytest.raises(PruneCliError, match="takes no argument 'depth'.*width"):
        get_model(f"{user_file}:adaptive", depth=3)


def test_user_file_that_fails_to_import_is_reported(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(PruneCliError, match="importing .* failed: RuntimeError: boom"):
        get_model(f"{path}:build")


# --- (g) registered names and arguments -----------------------------------------------


def test_unknown_model_lists_valid_names():
    with pytest.raises(PruneCliError, match="did you mean 'resnet56'") as err:
        get_model("resnet57")
    assert "valid:" in str(err.value) and "mobilenetv2" in str(err.value)


def test_unknown_model_argument_names_the_valid_ones():
    with pytest.raises(PruneCliError, match="takes no argument 'width'.*depth, growth_rate, stem_channels"):
        get_model("densenet40", width=2)
    with pytest.raises(PruneCliError, match="its arguments: none"):
        get_model("resnet56", width=2)


def test_invalid_argument_value_gives_a_clean_error():
    with pytest.raises(PruneCliError, match="depth must be 3n \\+ 4"):
        get_model("densenet40", depth=41)
    with pytest.raises(PruneCliError, match="unknown strides"):
        get_model("mobilenetv2", strides="tiny")
