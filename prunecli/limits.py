"""Bounds on untrusted input: what a checkpoint or a config file may hold before we walk it.

A checkpoint or YAML file from a stranger is data, but data can still be hostile: YAML
aliases ("billion laughs") and pickle's shared references make a 1 KB file stand for a
structure of 10^9 values, which any walk over it (validation, printing, an error message
quoting it) would expand. `check_plain` walks such a structure with a budget, counting
a shared value every time it is reached, and stops at the first bound exceeded, so the
cost of looking at untrusted data is bounded by the bounds below, not by the data.

The bounds are far above anything prunecli writes: a ResNet-50 checkpoint's plain data
(lineage, options, metrics, pruning history, optimizer bookkeeping) is about 10^4 values
and its longest string a file path.
"""

from __future__ import annotations

from typing import Any

MAX_CONFIG_BYTES = 1 << 20  # a YAML config of options: a few hundred bytes in practice
MAX_CONFIG_VALUES = 100_000
MAX_CHECKPOINT_VALUES = 2_000_000  # pruning history of a large model: ~10^5 channel indices
MAX_DEPTH = 64
MAX_STRING = 65_536  # characters; paths are at most 4,096
MAX_INT_BITS = 128  # seeds are 64-bit; nothing prunecli stores is larger

# A model spec (from the command line or a checkpoint) beyond these is refused before any
# model is built. ImageNet-21k has 21,841 classes; classification inputs are <= 600 px.
MAX_CLASSES = 100_000
MAX_IN_CHANNELS = 1_024
MAX_IMAGE_SIZE = 1_024
# Building a model: at most this many modules and parameters (counted as they are
# registered, before the next allocation). ViT-H/14, the largest torchvision classifier,
# has 632M parameters and ~400 modules.
MAX_MODULES = 50_000
MAX_PARAMETERS = 2_000_000_000


class TooLarge(ValueError):
    """Untrusted data beyond a bound (the message says which)."""


def check_plain(obj: Any, *, max_values: int, tensors: bool = False) -> None:
    """Raise `TooLarge` (or TypeError for a foreign type) unless ``obj`` is bounded plain data.

    Plain data: None, bool, int, float, str, bytes, and lists, tuples and dicts of them
    (and tensors, where ``tensors``), nested at most `MAX_DEPTH` deep. Every value reached
    counts, shared ones each time, so the walk costs at most ``max_values`` steps.
    """
    tensor_type: Any = ()
    if tensors:
        import torch  # only here: config files are checked without torch

        tensor_type = torch.Tensor
    stack: list[tuple[Any, int]] = [(obj, 0)]
    seen = 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise TooLarge(f"more than {max_values:,} values (counting shared references each time)")
        if depth > MAX_DEPTH:
            raise TooLarge(f"nested more than {MAX_DEPTH} levels deep")
        if value is None or isinstance(value, (bool, float)):
            continue
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise TooLarge(f"an integer of {value.bit_length():,} bits")
        elif isinstance(value, (str, bytes)):
            if len(value) > MAX_STRING:
                raise TooLarge(f"a {'string' if isinstance(value, str) else 'byte string'} of {len(value):,} characters (at most {MAX_STRING:,})")
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, tensor_type):
            continue
        else:
            raise TypeError(f"holds a {type(value).__name__}, not plain data")
