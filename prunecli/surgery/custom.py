"""Torch-Pruning pruners for prunecli's own parameter-free layers, and post-pruning fix-ups.

Torch-Pruning treats a module it does not know as element-wise (output channel c is
input channel c). That is wrong for the option-A shortcut, which appends zero channels:
without a pruner of its own, pruning a CIFAR ResNet's residual channels leaves shapes
that do not add up (27 vs 32 channels). `ShortcutAPruner` prunes its inputs and outputs
independently and keeps the channel map exact.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch_pruning as tp

from prunecli.models.cifar_resnet import ShortcutA


class ShortcutAPruner(tp.pruner.function.BasePruningFunc):
    TARGET_MODULES = (ShortcutA,)

    def prune_out_channels(self, layer: ShortcutA, idxs: Sequence[int]) -> ShortcutA:
        drop = set(int(i) for i in idxs)
        keep = [j for j in range(layer.out_channels) if j not in drop]
        index = torch.tensor(keep, dtype=torch.long, device=layer.source.device)
        layer.source = layer.source[index]
        layer.gate = layer.gate[index]
        layer.out_channels = len(keep)
        layer.refresh()
        return layer

    def prune_in_channels(self, layer: ShortcutA, idxs: Sequence[int]) -> ShortcutA:
        drop = set(int(i) for i in idxs)
        # new index of every old input channel; a removed input becomes a zero output (-1)
        new_index, n = [], 0
        for i in range(layer.in_channels):
            if i in drop:
                new_index.append(-1)
            else:
                new_index.append(n)
                n += 1
        mapping = torch.tensor(new_index + [-1], dtype=torch.long, device=layer.source.device)
        src = layer.source
        layer.source = torch.where(src >= 0, mapping[src.clamp(min=0)], src)
        layer.in_channels = n
        layer.refresh()
        return layer

    def get_out_channels(self, layer: ShortcutA) -> int:
        return layer.out_channels

    def get_in_channels(self, layer: ShortcutA) -> int:
        return layer.in_channels


CUSTOM_PRUNERS = {ShortcutA: ShortcutAPruner()}


# ---------------------------------------------------------------------------- fix-ups
# Some architectures keep a channel count in a plain attribute that Torch-Pruning cannot
# see (METHODS.md: torchvision's ViT reshapes with ``self.hidden_dim``). After any change
# of structure (prune, compress, replaying a checkpoint's history) these are set again
# from the layers themselves.


def _fix_vision_transformer(model) -> None:
    model.hidden_dim = model.conv_proj.out_channels


def after_structure_change(model: torch.nn.Module) -> None:
    try:
        from torchvision.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover
        return
    for m in model.modules():
        if isinstance(m, VisionTransformer):
            _fix_vision_transformer(m)
