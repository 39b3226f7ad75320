"""``tv:NAME``: any torchvision classification model, and the fix-ups its pruning needs."""

from __future__ import annotations

import difflib
import warnings

from torch import nn

from prunecli.errors import PruneCliError
from prunecli.models.residual import ResidualLayout, register_residual_block
from prunecli.models.structure import register_fixup


def torchvision_model(name: str, in_channels: int, num_classes: int, kwargs: dict) -> nn.Module:
    """torchvision's ``name`` with ``weights=None`` and ``num_classes`` (or the given ImageNet weights)."""
    import torchvision

    valid = torchvision.models.list_models(module=torchvision.models)
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean 'tv:{close[0]}'?)" if close else ""
        raise PruneCliError(f"unknown model 'tv:{name}'{hint}; torchvision classification models: {', '.join(valid)}")
    if in_channels != 3:
        raise PruneCliError(
            f"tv:{name} expects 3 input channels, the dataset has {in_channels}; "
            "use a 3-channel dataset or one of prunecli's own models"
        )
    kwargs = dict(kwargs)
    weights = kwargs.pop("weights", None)
    if weights is not None and num_classes != 1000:
        raise PruneCliError(f"tv:{name} with weights={weights} has 1000 classes, the dataset has {num_classes}")
    try:
        with warnings.catch_warnings():
            # e.g. GoogLeNet's FutureWarning about its default init: nothing a prunecli user can act on
            warnings.simplefilter("ignore", FutureWarning)
            if weights is not None:
                return torchvision.models.get_model(name, weights=weights, **kwargs)
            return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise PruneCliError(f"cannot build tv:{name}: {e}") from e


def _vision_transformer_hidden_dim(vit: nn.Module) -> None:
    # ViT reshapes its tokens with self.hidden_dim, a plain int Torch-Pruning cannot see
    # (METHODS.md): after heads are pruned it must follow the patch embedding's width
    vit.hidden_dim = vit.conv_proj.out_channels


register_fixup("torchvision.models.vision_transformer.VisionTransformer", _vision_transformer_hidden_dim)

# torchvision's ResNet blocks (also the zoo's resnet50); its ResNeXt/Wide-ResNet bottlenecks
# are the same class, with the grouped 3x3 conv in conv2
register_residual_block(
    "torchvision.models.resnet.BasicBlock", ResidualLayout(branch_end="bn2", inner=("bn1",), shortcut="downsample")
)
register_residual_block(
    "torchvision.models.resnet.Bottleneck",
    ResidualLayout(branch_end="bn3", inner=("bn1", "bn2"), shortcut="downsample", grouped=("conv2", "bn2")),
)
