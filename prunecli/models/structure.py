"""How a built model's structure is traced and changed: Torch-Pruning's dependency graph.

* `trace` builds Torch-Pruning's DependencyGraph with prunecli's layer rules, turning its
  failures into one-line errors and its hangs (Swin, MaxViT) into a timeout.
* `replay` shrinks a freshly built model as a recorded pruning history says: that is how a
  compressed checkpoint rebuilds (prunecli.models.build).
* Layer rules, registered by the model families next to their layers, so that no other
  part of prunecli names a model:

  - a *routing layer* is a parameter-free module of prunecli's own that moves channels
    (the option-A shortcut appends zero channels). Torch-Pruning treats an unknown
    module as element-wise (output channel c is input channel c), which is wrong for
    these. A class registered with `register_routing_layer` provides ``in_channels``,
    ``out_channels``, ``prune_out_channels(idxs)``, ``prune_in_channels(idxs)`` (edit
    itself in place), ``channel_alive(local_idxs) -> bool tensor`` (do these outputs
    carry data?) and may list ``maskable_buffers`` a mask may zero (a channel gate);
  - a *fix-up* re-derives an attribute Torch-Pruning cannot see after any structural
    change (torchvision's ViT reshapes with ``self.hidden_dim``); registered by the
    class's qualified name, so registering imports nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from typing import Callable, Iterator

import torch
from torch import nn

from prunecli.errors import PruneCliError

# what a user should know when Torch-Pruning fails on a model family (METHODS.md)
_KNOWN_LIMITS = {
    "shufflenet": (
        " (a known Torch-Pruning 1.6.1 limitation: its index mapping fails on ShuffleNetV2's channel shuffle,"
        " a view + transpose of the channels; channels cannot be removed, weight-level masks still work)"
    ),
}

TRACE_TIMEOUT_S = 60  # a trace of ResNet-50 takes 0.1 s; Swin never finishes

_ROUTING_LAYERS: list[type[nn.Module]] = []
_FIXUPS: dict[str, Callable[[nn.Module], None]] = {}


def register_routing_layer(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: ``cls`` prunes its own channel map (see the module docstring)."""
    for attr in ("prune_out_channels", "prune_in_channels", "channel_alive"):
        if not callable(getattr(cls, attr, None)):
            raise TypeError(f"routing layer {cls.__name__} lacks {attr}()")
    if cls not in _ROUTING_LAYERS:
        _ROUTING_LAYERS.append(cls)
    return cls


def routing_layer_types() -> tuple[type[nn.Module], ...]:
    return tuple(_ROUTING_LAYERS)


def register_fixup(qualified_name: str, fn: Callable[[nn.Module], None]) -> None:
    """After any structural change, call ``fn(module)`` on every module of that class."""
    _FIXUPS[qualified_name] = fn


def after_structure_change(model: nn.Module) -> None:
    if not _FIXUPS:
        return
    for m in model.modules():
        for cls in type(m).__mro__:
            fn = _FIXUPS.get(f"{cls.__module__}.{cls.__qualname__}")
            if fn is not None:
                fn(m)
                break


def _torch_pruning_pruners() -> dict:
    """Torch-Pruning pruning functions for the registered routing layers."""
    import torch_pruning as tp

    class _Routing(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            layer.prune_out_channels([int(i) for i in idxs])
            return layer

        def prune_in_channels(self, layer, idxs):
            layer.prune_in_channels([int(i) for i in idxs])
            return layer

        def get_out_channels(self, layer):
            return layer.out_channels

        def get_in_channels(self, layer):
            return layer.in_channels

    return {cls: _Routing() for cls in _ROUTING_LAYERS}


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise PruneCliError if the block runs longer than ``seconds`` (main thread, Unix)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise PruneCliError(f"{what} did not finish within {seconds:.0f}s (Torch-Pruning hangs on some architectures, e.g. Swin and MaxViT)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (TorchScript's start with a newline)."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


def trace(model: nn.Module, example_input: torch.Tensor, *, name: str = "model"):
    """Trace ``model`` into a Torch-Pruning DependencyGraph with prunecli's layer rules.

    The model's training flag is restored (``build_dependency`` leaves it in eval mode).
    """
    import torch_pruning as tp

    was_training = model.training
    try:
        # Torch-Pruning warns on stderr while tracing (recursion depth, unwrapped parameters);
        # its failures become our one-line errors instead
        with deadline(TRACE_TIMEOUT_S, f"tracing {name} for its dependency graph"), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_input, customized_pruners=_torch_pruning_pruners(), verbose=False
            )
    except PruneCliError:
        raise
    except Exception as e:
        hint = next((h for key, h in _KNOWN_LIMITS.items() if key in name.lower()), "")
        raise PruneCliError(f"Torch-Pruning cannot trace {name}: {type(e).__name__}: {first_line(e)}{hint}") from e
    finally:
        model.train(was_training)


def replay(model: nn.Module, history: list, example_input: torch.Tensor, *, name: str) -> None:
    """Shrink a freshly built ``model`` exactly as recorded in ``history`` (PruneCliError if it does not fit)."""
    graph = trace(model, example_input, name=name)
    try:
        graph.load_pruning_history([list(step) for step in history])
    except Exception as e:  # a history from another architecture: a module name or index that is not there
        raise PruneCliError(f"its pruning structure does not fit architecture {name!r} ({type(e).__name__}: {e})") from e
    after_structure_change(model)
