"""Per-layer widths and sparsity of the conv and linear layers, in module order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from prunecli.models.layers import prunable_layers


@dataclass(frozen=True)
class LayerInfo:
    index: int  # 1-based among conv/linear layers, in module order (Li et al. number layers this way)
    name: str
    kind: str  # "conv" | "linear"
    in_width: int  # input channels / features
    out_width: int  # output channels / features
    kernel: str  # "3x3", "" for linear
    groups: int
    params: int  # weight + bias elements
    alive_out: int  # output channels with any kept (mask) and non-zero weight
    sparsity: float  # fraction of weight entries that are zero


@torch.no_grad()
def layer_table(model: nn.Module, masks: Optional[dict[str, torch.Tensor]] = None) -> list[LayerInfo]:
    masks = masks or {}
    rows = []
    for i, (name, m) in enumerate(prunable_layers(model), start=1):
        w = m.weight.detach()
        mask = masks.get(f"{name}.weight")
        kept = w if mask is None else w * mask.to(w.device, w.dtype)
        per_out = kept.reshape(kept.shape[0], -1).abs().sum(1) if kept.dim() > 1 else kept.abs()
        is_conv = isinstance(m, nn.modules.conv._ConvNd)
        rows.append(
            LayerInfo(
                index=i,
                name=name,
                kind="conv" if is_conv else "linear",
                in_width=m.in_channels if is_conv else m.in_features,
                out_width=m.out_channels if is_conv else m.out_features,
                kernel="x".join(str(k) for k in m.kernel_size) if is_conv else "",
                groups=m.groups if is_conv else 1,
                params=sum(p.numel() for p in m.parameters(recurse=False)),
                alive_out=int((per_out != 0).sum().item()),
                sparsity=float((kept == 0).sum().item()) / max(1, kept.numel()),
            )
        )
    return rows
