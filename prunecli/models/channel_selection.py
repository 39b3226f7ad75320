"""Channel selection in front of a BatchNorm that reads a stream: Network Slimming's structure.

On a pre-activation network (PreResNet, DenseNet) a BatchNorm reads the residual sum or
the concatenation directly, and that stream also feeds the shortcut, the next blocks, or
the next concatenation. Pruning the BatchNorm's channels therefore means, in Torch-
Pruning's dependency graph, pruning the whole stream: every layer on it loses the same
channels ("couple"). Liu et al. (Network Slimming, ICCV 2017, arXiv:1708.06519) prune
only what that BatchNorm feeds: their reference puts a ``channel_selection`` layer
(a 0/1 vector used as an index) after the BatchNorm, so that the next conv reads fewer
inputs while the stream keeps its width.

Here the selection comes *before* the BatchNorm (`SelectedNorm` = `ChannelSelection`, then
the BatchNorm). A BatchNorm acts per channel, so selecting before or after it computes the
same thing; selecting first lets the BatchNorm itself lose the pruned channels, so the
compressed file holds no dead scales. `ChannelSelection` is a routing layer
(prunecli.models.structure): its input channels (the stream) and its output channels
(the BatchNorm and the next conv's inputs) are pruned independently, so the selection's
outputs, the BatchNorm and the conv's inputs form a dependency group of their own, which
the pruning code scores, masks and removes like any other (prunecli.surgery.units).

`insert_channel_selection` is a registered converter (prunecli.models.build): a checkpoint
records ``{"name": "channel-selection", "args": {"norms": [...]}}`` and rebuilds from that
alone. Which BatchNorms read a stream is the model family's knowledge: a model lists them
in a ``stream_norms()`` method (PreActResNet, DenseNet; user models may define it too).
"""

from __future__ import annotations

from typing import Iterable, Mapping, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from prunecli.models.build import register_converter
from prunecli.models.routing import SourceRouting
from prunecli.models.structure import register_routing_layer

CONVERTER = "channel-selection"


@register_routing_layer
class ChannelSelection(SourceRouting):
    """Parameter-free: output channel j is input channel ``source[j]``, or zero where it is -1.

    As built, it selects every input in order (the forward is then the identity). Removing
    output channels drops their entries; removing input channels upstream renumbers the
    sources, and an output whose input is gone becomes a zero channel (as the option-A
    shortcut does), so shapes always fit. ``gate`` (ones, one per output) is what a mask
    zeroes for a pruned output, so that the masked model passes nothing through it either.
    ``starts_unit``: the selection's outputs are a pruning unit of their own.
    """

    starts_unit = True

    def __init__(self, channels: int):
        super().__init__()
        if channels < 1:
            raise ValueError(f"a channel selection needs at least one channel, got {channels}")
        self._init_routing(channels, list(range(channels)))

    def _fast_path(self) -> None:
        src = self.source
        if src.is_meta:  # built without memory to check shapes (prunecli.models.build): nothing to index
            self._identity = True
            return
        self._identity = bool(src.numel() == self.in_channels and torch.equal(src, torch.arange(self.in_channels, device=src.device)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._identity:
            out = x
        else:
            padded = F.pad(x, (0, 0, 0, 0, 0, 1)) if bool((self.source < 0).any()) else x
            out = torch.index_select(padded, 1, self._gather)
        return out * self.gate.view(1, -1, *([1] * (out.dim() - 2))).to(out.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> {self.out_channels}"


class SelectedNorm(nn.Module):
    """``norm(select(x))``: a BatchNorm that reads only the selected channels of its input."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.select = ChannelSelection(norm.num_features)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.select(x))


M = TypeVar("M", bound=nn.Module)


@register_converter(CONVERTER)
def insert_channel_selection(model: M, *, norms: Iterable[str]) -> M:
    """Replace each named BatchNorm of ``model`` by ``SelectedNorm`` around it, in place."""
    modules = dict(model.named_modules())
    for name in norms:
        bn = modules.get(name)
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"channel selection: {name!r} is not a BatchNorm of this model")
        parent_name, _, attr = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        selected = SelectedNorm(bn)
        if bn.running_mean is not None:  # the selection's buffers live where the BatchNorm's do
            selected.select.to(bn.running_mean.device)
        setattr(parent, attr, selected)
    return model


def stream_norms(model: nn.Module) -> list[str]:
    """The BatchNorms of ``model`` that read a residual or concatenated stream (its ``stream_norms()``)."""
    fn = getattr(model, "stream_norms", None)
    return list(fn()) if callable(fn) else []


def renamed(tensors: Mapping[str, torch.Tensor], norms: Iterable[str]) -> dict[str, torch.Tensor]:
    """State-dict (or mask) names after `insert_channel_selection`: ``bn.weight`` -> ``bn.norm.weight``."""
    prefixes = [f"{n}." for n in norms]
    out = {}
    for key, t in tensors.items():
        hit = next((p for p in prefixes if key.startswith(p)), None)
        out[f"{hit}norm.{key[len(hit):]}" if hit else key] = t
    return out
