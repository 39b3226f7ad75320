"""Routing layers that pass input channels to outputs by a source map: what they share.

A routing layer (prunecli.models.structure) is parameter-free and moves channels. Both of
prunecli's own, the option-A shortcut (prunecli.models.cifar_resnet) and Network Slimming's
channel selection (prunecli.models.channel_selection), say it the same way: output channel
j carries input channel ``source[j]``, or is a zero channel where ``source[j]`` is -1, and is
multiplied by ``gate[j]`` (ones; what a mask zeroes). `SourceRouting` holds that map and the
pruning it implies: removing output channels drops their entries, and removing input
channels upstream renumbers the sources, a removed input becoming a zero output. Its
subclasses build the initial map and write the forward (with ``_gather``: the source with
-1 replaced by C_in, the zero channel the forward appends).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class SourceRouting(nn.Module):
    """``source``/``gate`` buffers and the routing-layer protocol on them (module docstring)."""

    maskable_buffers = ("gate",)

    def _init_routing(self, in_channels: int, source: list[int]) -> None:
        self.in_channels = in_channels
        self.out_channels = len(source)
        # index data, made on the CPU whatever the default device: under torch.device("meta")
        # (prunecli.models.build's shape check) torch.cat/where on it would have no values to
        # compute with, and PyTorch's meta versions of them import torch._dynamo (1.7 s)
        self.register_buffer("source", torch.tensor(source, dtype=torch.int64, device="cpu"))
        self.register_buffer("gate", torch.ones(self.out_channels))
        self.register_buffer("_gather", torch.empty(0, dtype=torch.int64), persistent=False)
        self.refresh()

    def _fast_path(self) -> None:
        """Subclasses: recompute the forward's shortcut flag from ``source`` (called by `refresh`)."""

    def refresh(self) -> None:
        """Recompute the forward's fast-path flag and gather index from ``source``."""
        self._fast_path()
        src = self.source
        # the zero channel is appended as input channel C_in by the forward's padding
        self._gather = torch.where(src >= 0, src, torch.full_like(src, self.in_channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the widths come from replaying the pruning history; the loaded source says which inputs
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.refresh()

    def prune_out_channels(self, idxs) -> None:
        drop = {int(i) for i in idxs}
        index = torch.tensor([j for j in range(self.out_channels) if j not in drop], dtype=torch.long, device=self.source.device)
        self.source = self.source[index]
        self.gate = self.gate[index]
        self.out_channels = len(index)
        self.refresh()

    def prune_in_channels(self, idxs) -> None:
        drop = {int(i) for i in idxs}
        # new index of every old input channel; a removed input becomes a zero output (-1)
        new_index, n = [], 0
        for i in range(self.in_channels):
            if i in drop:
                new_index.append(-1)
            else:
                new_index.append(n)
                n += 1
        mapping = torch.tensor(new_index + [-1], dtype=torch.long, device=self.source.device)
        self.source = torch.where(self.source >= 0, mapping[self.source.clamp(min=0)], self.source)
        self.in_channels = n
        self.refresh()

    def channel_alive(self, local: torch.Tensor) -> torch.Tensor:
        """For output channels ``local``: does the channel carry data (an input, not masked)?"""
        local = local.to(self.source.device)
        return ((self.source[local] >= 0) & (self.gate[local] != 0)).cpu()
