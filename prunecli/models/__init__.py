"""Model zoo. See `_registry` for the naming rules (registered, ``tv:NAME``, user code)."""

from prunecli.models._registry import (
    ModelSpec,
    build_model,
    get_model,
    is_user_model,
    list_models,
    model_description,
    register_model,
)

__all__ = ["ModelSpec", "build_model", "get_model", "is_user_model", "list_models", "model_description", "register_model"]
