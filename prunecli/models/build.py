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

A checkpoint's spec is untrusted input, so `rebuild` bounds what it may cost before it
allocates anything: the spec's numbers are range-checked (`ModelSpec`), the architecture
is first built on PyTorch's ``meta`` device (shapes, no memory) under a budget of
modules and parameters (prunecli.limits), and the file's tensor shapes are compared with
it; only then is the real model built and the weights copied in. Rebuilding never
downloads: arguments that would fetch weights (torchvision's ``weights=``) are dropped,
as the state dict replaces every value anyway, and a download attempted meanwhile is an
error.
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
from prunecli.limits import MAX_MODULES, MAX_PARAMETERS
from prunecli.models._registry import ModelSpec, get_model, is_user_model, user_code_sha256
from prunecli.models.structure import replay

TRUST_CODE_ENV = "PRUNECLI_TRUST_CODE"

Converter = Callable[..., nn.Module]  # fn(model, **args) -> the converted model
_CONVERTERS: Registry[Converter] = Registry("model converter")


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Register ``fn(model, **args) -> model`` under ``name`` (args must be plain data)."""
    return _CONVERTERS.decorator(name)


def build_model(spec: ModelSpec, *, where: Optional[str] = None) -> nn.Module:
    """The unpruned architecture of ``spec``, freshly initialised, within the build budget."""
    with build_budget(where or f"model {spec.name}"):
        return get_model(spec.name, in_channels=spec.in_channels, num_classes=spec.num_classes, image_size=spec.image_size, **spec.kwargs)


def example_input(spec: ModelSpec, batch: int = 1, device: Optional[torch.device] = None) -> torch.Tensor:
    """Zeros of the model's input shape (for tracing and counting; values do not matter)."""
    return torch.zeros(batch, spec.in_channels, spec.image_size, spec.image_size, device=device)


def code_is_trusted() -> bool:
    return os.environ.get(TRUST_CODE_ENV, "").lower() in ("1", "true", "yes")


# torchvision arguments that fetch weights from the hub (a state dict replaces them on rebuild)
_FETCHING_ARGS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")


class ModelTooLarge(PruneCliError):
    """A model spec whose architecture exceeds the build budget."""


@contextlib.contextmanager
def build_budget(where: str):
    """Count modules and parameters as a model registers them; stop beyond the limits.

    The counting hooks fire as each submodule or parameter is registered, so a spec that
    asks for 300,000 layers stops after `MAX_MODULES` of them rather than after exhausting
    memory. Process-global while active (torch's global registration hooks).
    """
    from torch.nn.modules.module import register_module_module_registration_hook, register_module_parameter_registration_hook

    counts = {"modules": 0, "parameters": 0}

    def on_module(module, name, submodule):
        counts["modules"] += 1
        if counts["modules"] > MAX_MODULES:
            raise ModelTooLarge(f"{where}: refused: its model has more than {MAX_MODULES:,} modules")

    def on_parameter(module, name, param):
        counts["parameters"] += param.numel() if param is not None else 0
        if counts["parameters"] > MAX_PARAMETERS:
            raise ModelTooLarge(f"{where}: refused: its model has more than {MAX_PARAMETERS:,} parameters")

    hooks = (register_module_module_registration_hook(on_module), register_module_parameter_registration_hook(on_parameter))
    try:
        yield counts
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def _no_downloads(where: str):
    """Any hub download attempted while rebuilding is an error, not network access."""
    import torch.hub

    def refuse(url, *args, **kwargs):
        raise CheckpointError(f"{where}: rebuilding its model tried to download {url}; refused (a checkpoint never fetches)")

    saved = torch.hub.download_url_to_file
    torch.hub.download_url_to_file = refuse
    try:
        yield
    finally:
        torch.hub.download_url_to_file = saved


def offline_spec(spec: ModelSpec) -> ModelSpec:
    """``spec`` without arguments that fetch weights (for a model whose weights come from a file)."""
    if not spec.name.startswith("tv:") or not any(k in spec.kwargs for k in _FETCHING_ARGS):
        return spec
    return ModelSpec(spec.name, spec.in_channels, spec.num_classes, spec.image_size, {k: v for k, v in spec.kwargs.items() if k not in _FETCHING_ARGS})


def _shape_problems(reference: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor], *, shrunk: bool) -> list[str]:
    """How ``state_dict`` differs from the shapes of the architecture it claims.

    ``shrunk``: the file holds a compressed model, so a tensor may be smaller than the
    unpruned one in any dimension (pruning only removes), never larger or of other rank.
    """
    problems = []
    unexpected = [k for k in state_dict if k not in reference]
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if not shrunk:
        missing = [k for k in reference if k not in state_dict]
        if missing:
            problems.append(f"missing {_few(missing)}")
    bad = []
    for k, t in state_dict.items():
        ref = reference.get(k)
        if ref is None:
            continue
        shape = tuple(t.shape)
        fits = shape == tuple(ref) if not shrunk else len(shape) == len(ref) and all(a <= b for a, b in zip(shape, ref))
        if not fits:
            bad.append(f"{k} {shape} vs {tuple(ref)}")
    if bad:
        problems.append(f"shape mismatch {_few(bad)}")
    return problems


def _check_against_meta(spec: ModelSpec, converters, structure, state_dict, where: str) -> None:
    """Build the architecture without memory and compare the file's tensor shapes with it."""
    try:
        with torch.device("meta"), _initialisation_skipped():
            model = build_model(spec, where=where)
            model = _convert(model, converters, where)
    except PruneCliError:
        raise
    except Exception:  # a constructor that computes on tensor values cannot run on meta: the real build is still budgeted
        return
    reference = {k: v.shape for k, v in model.state_dict().items()}
    problems = _shape_problems(reference, state_dict, shrunk=bool(structure))
    if problems:
        raise CheckpointError(f"{where}: weights do not fit architecture {spec.name!r}: {'; '.join(problems)}")


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
    converters = list(converters)
    if is_user_model(spec.name):
        if not code_is_trusted():
            raise CheckpointError(
                f"{where}: its model is built by code outside prunecli ({spec.name}); "
                f"importing it runs that code: set {TRUST_CODE_ENV}=1 if you trust it"
            )
        if code_sha256 and user_code_sha256(spec.name) not in (None, code_sha256):
            warn(f"{spec.name} changed since {where} was written")
    for step in converters:
        name = step.get("name")
        if name not in _CONVERTERS:
            raise CheckpointError(f"{where}: {_CONVERTERS.unknown_message(str(name))} (written by a newer prunecli?)")
    if state_dict is not None:
        spec = offline_spec(spec)  # the state dict replaces every weight: nothing to fetch
    try:
        with _no_downloads(where):
            if state_dict is not None:
                _check_against_meta(spec, converters, structure, state_dict, where)
            # every value is about to be overwritten by the state dict: skip the random init
            # (not for user code, whose constructor might compute something from it)
            skip = state_dict is not None and not is_user_model(spec.name)
            with _initialisation_skipped() if skip else contextlib.nullcontext():
                model = build_model(spec, where=where)
    except (ModelTooLarge, CheckpointError):  # already one line naming the file
        raise
    except PruneCliError as e:
        raise CheckpointError(f"{where}: cannot rebuild its model: {e}") from e
    model = _convert(model, converters, where)
    if structure:
        try:
            replay(model, structure, example_input(spec), name=spec.name)
        except PruneCliError as e:
            raise CheckpointError(f"{where}: cannot rebuild its compressed structure: {e}") from e
        except Exception as e:  # a damaged history makes Torch-Pruning fail in its own ways
            raise CheckpointError(f"{where}: cannot rebuild its compressed structure (damaged pruning history: {type(e).__name__})") from None
    if state_dict is not None:
        load_state_strict(model, state_dict, where=where, arch=spec.name)
    return model


def _convert(model: nn.Module, converters: list, where: str) -> nn.Module:
    """Apply the recorded converters in order; arguments a converter cannot use (an edited
    file's) are one CheckpointError line naming ``where``."""
    for step in converters:
        name = step["name"]
        try:
            model = _CONVERTERS.get(name)(model, **dict(step.get("args") or {}))
        except (PruneCliError, TypeError, ValueError, KeyError, AttributeError) as e:
            raise CheckpointError(f"{where}: cannot apply its {name!r} conversion: {str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    return model


def nonfinite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding NaN or Inf."""
    return [k for k, t in state_dict.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


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
    problems = _shape_problems({k: v.shape for k, v in model.state_dict().items()}, state_dict, shrunk=False)
    if problems:
        raise CheckpointError(f"{where}: weights do not fit architecture {arch!r}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
