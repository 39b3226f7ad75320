"""Model registry: `register_model`, `list_models`, `get_model`, and `ModelSpec`.

A registered factory is a function named after the CLI name (``conv4``, ``resnet56``)
with the signature ``fn(*, in_channels, num_classes, image_size, **kwargs) -> nn.Module``;
its docstring's first line cites the paper and is what ``prunecli list models`` shows.

Two more kinds of names resolve here without registration:

* ``tv:NAME`` -- any torchvision classification model, built with ``weights=None``
  unless ``weights=...`` is passed in the model arguments;
* ``path/to/file.py:factory`` or ``pkg.module:factory`` -- a user's own model. The
  factory receives whichever of ``in_channels``/``num_classes``/``image_size`` its
  signature accepts, plus the model arguments. Checkpoints that name user code are
  only rebuilt when the user says they trust it (see ``prunecli.checkpoint``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from prunecli._registry import Registry
from prunecli.errors import PruneCliError
from prunecli.limits import MAX_CLASSES, MAX_IMAGE_SIZE, MAX_IN_CHANNELS

_MODELS: Registry[Callable[..., Any]] = Registry("model")


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn`` under its own name; duplicates raise."""
    return _MODELS.register(fn.__name__, fn)


def list_models() -> list[str]:
    _import_families()
    return _MODELS.names()


def model_description(name: str) -> str:
    _import_families()
    doc = inspect.getdoc(_MODELS.get(name)) or ""
    return doc.splitlines()[0] if doc else ""


def is_user_model(name: str) -> bool:
    """True for ``file.py:factory`` / ``pkg.module:factory`` (code outside prunecli)."""
    return ":" in name and not name.startswith("tv:")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the unpruned architecture (plain types only)."""

    name: str
    in_channels: int = 3
    num_classes: int = 10
    image_size: int = 32
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        for key, value, top in (
            ("in_channels", self.in_channels, MAX_IN_CHANNELS),
            ("num_classes", self.num_classes, MAX_CLASSES),
            ("image_size", self.image_size, MAX_IMAGE_SIZE),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
                raise ValueError(f"{key} {value!r} is outside 1..{top:,}")
        if not isinstance(self.name, str) or not 0 < len(self.name) <= 4096:
            raise ValueError("the model name is not a string of at most 4,096 characters")
        for key, value in self.kwargs.items():
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"model argument {str(key)[:40]!r} is not a name")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        if not isinstance(d, dict):
            raise TypeError("the model spec is not a mapping")
        return cls(
            name=str(d["name"]),
            in_channels=_int(d["in_channels"]),
            num_classes=_int(d["num_classes"]),
            image_size=_int(d["image_size"]),
            kwargs=dict(d.get("kwargs") or {}),
        )


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value


def get_model(name: str, *, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, **kwargs: Any):
    """Build a model by name. Raises PruneCliError for unknown names or bad arguments."""
    if name.startswith("tv:"):
        from prunecli.models.tv import torchvision_model

        return torchvision_model(name[3:], in_channels, num_classes, kwargs)
    if is_user_model(name):
        factory = load_user_factory(name)
        return _call_factory(name, factory, in_channels, num_classes, image_size, kwargs, user=True)
    _import_families()
    factory = _MODELS.get(name)
    return _call_factory(name, factory, in_channels, num_classes, image_size, kwargs, user=False)


def _call_factory(name, factory, in_channels, num_classes, image_size, kwargs, *, user: bool):
    import torch.nn as nn

    given = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size}
    params = inspect.signature(factory).parameters
    takes_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in given.items() if k in params or (takes_var_kw and not user)}
    unknown = [k for k in kwargs if k not in params and not takes_var_kw]
    if unknown:
        valid = [k for k in params if k not in given and params[k].kind is not inspect.Parameter.VAR_KEYWORD]
        raise PruneCliError(
            f"model {name!r} takes no argument {unknown[0]!r}; its arguments: {', '.join(valid) or 'none'}"
        )
    try:
        model = factory(**args, **kwargs)
    except (TypeError, ValueError) as e:
        raise PruneCliError(f"cannot build model {name!r}: {e}") from e
    if not isinstance(model, nn.Module):
        raise PruneCliError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def user_code_path(name: str) -> Path | None:
    """The file a ``file.py:factory`` name points at (None for ``pkg.module:factory``)."""
    target = name.rsplit(":", 1)[0]
    return Path(target) if target.endswith(".py") else None


def user_code_sha256(name: str) -> str | None:
    path = user_code_path(name)
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_user_factory(name: str) -> Callable[..., Any]:
    target, _, attr = name.rpartition(":")
    if not target or not attr:
        raise PruneCliError(f"model {name!r}: expected path/to/file.py:factory or pkg.module:factory")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise PruneCliError(f"model {name!r}: file {path} not found")
        mod_name = "prunecli_user_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        if mod_name in sys.modules:
            module = sys.modules[mod_name]
        else:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise PruneCliError(f"model {name!r}: cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as e:  # user code: report, do not crash with its traceback
                del sys.modules[mod_name]
                raise PruneCliError(f"model {name!r}: importing {path} failed: {type(e).__name__}: {e}") from e
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise PruneCliError(f"model {name!r}: cannot import module {target!r}: {e}") from e
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise PruneCliError(f"model {name!r}: {target} has no callable {attr!r}")
    return factory


_FAMILIES = (
    "convnets",
    "vgg",
    "cifar_resnet",
    "resnet50",
    "preresnet",
    "densenet",
    "resnext",
    "mobilenetv2",
)


def _import_families() -> None:
    for fam in _FAMILIES:
        importlib.import_module(f"prunecli.models.{fam}")
