"""Residual blocks: where a block's branch ends, and dropping a block whose branch is dead.

Sparse Structure Selection (prunecli.algorithms.sss) gates the output of a residual
block's branch, its inner channels or the groups of its grouped convolution, and
``compress`` removes a block whose branch can only output zeros. Both need to know what
a block is made of, which is the model family's knowledge: a family registers its block
classes with `register_residual_block` and a `ResidualLayout` (attribute names), so that
no other part of prunecli names a model. Registration is by the class's qualified name,
so registering torchvision's blocks imports nothing (prunecli.models.tv).

A block computes ``relu(branch(x) + shortcut(x))`` and its branch ends in a BatchNorm
(``branch_end``). When that BatchNorm's scale and shift are both zero, the branch outputs
zeros and the block computes ``relu(shortcut(x))``. With an identity shortcut that is
``relu(x)``, which is ``x`` itself in the networks registered here, because every block
reads the output of a ReLU (or of a max pool over one): the block can be replaced by
``nn.Identity``. ``compress`` checks this on a probe batch like every other removal.

A block whose shortcut changes the shape (a strided or widening block: a projection or
option-A shortcut) is never dropped: removing it would leave the next block without the
input shape it was built for.

`drop_blocks` is a registered converter (prunecli.models.build): a checkpoint records
``{"name": "drop-blocks", "args": {"blocks": [...]}}`` and rebuilds the shallower network
from the file alone. Converters run before the replay of a recorded channel removal, so a
file that is already channel-compressed cannot drop blocks afterwards (the history names
the layers of the full network); ``compress`` says so and keeps such blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, TypeVar, Union

import torch
from torch import nn

from prunecli.errors import PruneCliError
from prunecli.models.build import register_converter

DROP_BLOCKS = "drop-blocks"


@dataclass(frozen=True)
class ResidualLayout:
    """Attribute names inside one residual block class.

    ``branch_end``: the BatchNorm whose output is the branch's output (added to the
    shortcut). ``inner``: the BatchNorms inside the branch whose channels may be gated one
    by one. ``grouped``: (conv, BatchNorm) of a grouped convolution, whose output channels
    form ``conv.groups`` groups (only when that conv has more than one group).
    ``shortcut``: the shortcut module; None or ``nn.Identity`` means identity.
    """

    branch_end: str
    inner: tuple[str, ...]
    shortcut: str
    grouped: Optional[tuple[str, str]] = None


_LAYOUTS: dict[str, ResidualLayout] = {}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_residual_block(cls: Union[type[nn.Module], str], layout: ResidualLayout) -> None:
    """Declare ``cls`` (a class or its qualified name) a residual block laid out as ``layout``."""
    _LAYOUTS[cls if isinstance(cls, str) else _qualified(cls)] = layout


def layout_of(module: nn.Module) -> Optional[ResidualLayout]:
    return _LAYOUTS.get(_qualified(type(module)))


@dataclass(eq=False)
class ResidualBlock:
    """One residual block of a model: its module name, the module and its layout."""

    name: str
    module: nn.Module
    layout: ResidualLayout

    def child(self, attr: str) -> Optional[nn.Module]:
        return getattr(self.module, attr, None)

    def path(self, attr: str) -> str:
        """The model-level module name of one of the block's attributes."""
        return f"{self.name}.{attr}" if self.name else attr

    @property
    def branch_end(self) -> nn.Module:
        return getattr(self.module, self.layout.branch_end)

    @property
    def downsamples(self) -> bool:
        """Whether the shortcut changes the shape (the block cannot be replaced by the identity)."""
        return not _is_identity(self.child(self.layout.shortcut))

    @property
    def groups(self) -> int:
        """Groups of the block's grouped convolution (1: none)."""
        if self.layout.grouped is None:
            return 1
        conv = self.child(self.layout.grouped[0])
        return int(getattr(conv, "groups", 1) or 1)

    def branch_is_dead(self) -> bool:
        """The branch can only output zeros: its last BatchNorm's scale and shift are all zero."""
        bn = self.branch_end
        weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
        if weight is None or bias is None:
            return False
        return not bool(weight.detach().any()) and not bool(bias.detach().any())


def _is_identity(module: Optional[nn.Module]) -> bool:
    return module is None or isinstance(module, nn.Identity)


def residual_blocks(model: nn.Module) -> list[ResidualBlock]:
    """Every registered residual block of ``model`` whose branch ends in an affine BatchNorm, in module order."""
    out = []
    for name, module in model.named_modules():
        layout = layout_of(module)
        end = getattr(module, layout.branch_end, None) if layout is not None else None
        if isinstance(end, nn.modules.batchnorm._BatchNorm) and end.affine:
            out.append(ResidualBlock(name, module, layout))
    return out


def dead_blocks(model: nn.Module) -> tuple[list[str], list[str]]:
    """(blocks whose branch is dead and that can be dropped, dead ones whose shortcut downsamples)."""
    droppable, downsampling = [], []
    for block in residual_blocks(model):
        if block.branch_is_dead():
            (downsampling if block.downsamples else droppable).append(block.name)
    return droppable, downsampling


M = TypeVar("M", bound=nn.Module)


@register_converter(DROP_BLOCKS)
def drop_blocks(model: M, *, blocks: Iterable[str]) -> M:
    """Replace each named residual block (identity shortcut) by ``nn.Identity``, in place."""
    modules = dict(model.named_modules())
    for name in blocks:
        module = modules.get(name) if isinstance(name, str) and name else None
        layout = layout_of(module) if module is not None else None
        if layout is None:
            raise PruneCliError(f"{name!r} is not a residual block of this model")
        if ResidualBlock(name, module, layout).downsamples:
            raise PruneCliError(f"block {name} changes the shape through its shortcut and cannot be dropped")
        parent_name, _, attr = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, nn.Identity())
    return model


def without_blocks(tensors: dict[str, torch.Tensor], blocks: Iterable[str]) -> dict[str, torch.Tensor]:
    """``tensors`` (a state dict or masks) without the entries of the named blocks."""
    prefixes = tuple(f"{b}." for b in blocks)
    return {k: v for k, v in tensors.items() if not k.startswith(prefixes)}
