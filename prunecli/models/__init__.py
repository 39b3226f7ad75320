"""Model zoo and model building.

`_registry` names the models (registered, ``tv:NAME``, user code); `build` is the one
pipeline that turns a spec (+ converters, structure, weights) into a module; `structure`
traces and replays structural changes; `layers` lists the prunable layers.
"""

from prunecli.models._registry import (
    ModelSpec,
    get_model,
    is_user_model,
    list_models,
    model_description,
    register_model,
)
from prunecli.models.build import build_model, example_input, rebuild, register_converter
from prunecli.models import channel_selection as _channel_selection  # noqa: F401  registers its converter
from prunecli.models import folding as _folding  # noqa: F401  registers its converter (BatchNorm folding)
from prunecli.models import tv as _tv  # noqa: F401  registers torchvision's pruning fix-ups (imports no torchvision)
from prunecli.models import residual as _residual  # noqa: F401  registers the drop-blocks converter

__all__ = [
    "ModelSpec",
    "build_model",
    "example_input",
    "get_model",
    "is_user_model",
    "list_models",
    "model_description",
    "rebuild",
    "register_converter",
    "register_model",
]
