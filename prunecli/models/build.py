"""Building a model, the one pipeline every stage uses:

    spec -> converters -> replay of structural changes -> state dict

* the *spec* (`ModelSpec`: registry name + constructor arguments) builds the unpruned
  architecture;
* *converters* swap layers for the variants a method trains (score layers, channel
  selection layers, gates); each is registered by name with `register_converter` and
  recorded in the checkpoint as ``{"name", "args"}``, so a file never holds code;
* the *structure* is Torch-Pruning's pruning history, replayed on the fresh model
  (prunecli.models.structure) to reproduce a compressed architecture;
* the *state dict* is loaded strictly: every name and shape must fit.

A spec that names user code (``file.py:factory``) is only built when the user says they
trust it (``PRUNECLI_TRUST_CODE=1``): building imports and runs that code.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterable, Mapping, Optional

import torch
from torch import nn

from prunecli._console import warn
from prunecli._registry import Registry
from prunecli.errors import CheckpointError, PruneCliError
from prunecli.models._registry import ModelSpec, get_model, is_user_model, user_code_sha256
from prunecli.models.structure import replay

TRUST_CODE_ENV = "PRUNECLI_TRUST_CODE"

Converter = Callable[..., nn.Module]  # fn(model, **args) -> the converted model
_CONVERTERS: Registry[Converter] = Registry("model converter")


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Register ``fn(model, **args) -> model`` under ``name`` (args must be plain data)."""
    return _CONVERTERS.decorator(name)


def build_model(spec: ModelSpec) -> nn.Module:
    """The unpruned architecture of ``spec``, freshly initialised."""
    return get_model(spec.name, in_channels=spec.in_channels, num_classes=spec.num_classes, image_size=spec.image_size, **spec.kwargs)


def example_input(spec: ModelSpec, batch: int = 1, device: Optional[torch.device] = None) -> torch.Tensor:
    """Zeros of the model's input shape (for tracing and counting; values do not matter)."""
    return torch.zeros(batch, spec.in_channels, spec.image_size, spec.image_size, device=device)


def code_is_trusted() -> bool:
    return os.environ.get(TRUST_CODE_ENV, "").lower() in ("1", "true", "yes")


def rebuild(
    spec: ModelSpec,
    *,
    converters: Iterable[Mapping[str, Any]] = (),
    structure: Optional[list] = None,
    state_dict: Optional[Mapping[str, torch.Tensor]] = None,
    where: str = "checkpoint",
    code_sha256: Optional[str] = None,
) -> nn.Module:
    """Run the pipeline; every failure is one CheckpointError line naming ``where``."""
    if is_user_model(spec.name):
        if not code_is_trusted():
            raise CheckpointError(
                f"{where}: its model is built by code outside prunecli ({spec.name}); "
                f"importing it runs that code: set {TRUST_CODE_ENV}=1 if you trust it"
            )
        if code_sha256 and user_code_sha256(spec.name) not in (None, code_sha256):
            warn(f"{spec.name} changed since {where} was written")
    try:
        # every value is about to be overwritten by the state dict: skip the random init
        # (not for user code, whose constructor might compute something from it)
        skip = state_dict is not None and not is_user_model(spec.name)
        with _initialisation_skipped() if skip else contextlib.nullcontext():
            model = build_model(spec)
    except PruneCliError as e:
        raise CheckpointError(f"{where}: cannot rebuild its model: {e}") from e
    for step in converters:
        name, args = step.get("name"), dict(step.get("args") or {})
        if name not in _CONVERTERS:
            raise CheckpointError(f"{where}: {_CONVERTERS.unknown_message(str(name))} (written by a newer prunecli?)")
        model = _CONVERTERS.get(name)(model, **args)
    if structure:
        try:
            replay(model, structure, example_input(spec), name=spec.name)
        except PruneCliError as e:
            raise CheckpointError(f"{where}: cannot rebuild its compressed structure: {e}") from e
    if state_dict is not None:
        load_state_strict(model, state_dict, where=where, arch=spec.name)
    return model


_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_",
)


def _untouched(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def _initialisation_skipped():
    """``torch.nn.init`` functions leave tensors as allocated inside.

    Only for prunecli's and torchvision's models, whose every parameter and persistent
    buffer a strict state-dict load then overwrites (`load_state_strict` refuses a state
    dict that misses one). Until then the values are whatever the allocator returned;
    the one forward pass that sees them, a structure replay's trace, reads only shapes.
    Random init of ResNet-50 costs about 0.15 s on this project's CPU (filling zeros
    instead costs as much: it is the first touch of the memory that is slow). The CLI
    builds one model at a time; a library caller building models in other threads
    meanwhile would get uninitialised weights too.
    """
    saved = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}
    try:
        for name in saved:
            setattr(nn.init, name, _untouched)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def load_state_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, where: str, arch: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit architecture {arch!r}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
