"""MACs and parameter counts through ptflops (pytorch backend).

"MACs" in prunecli are multiply-accumulates of convolution, linear and attention
layers -- the quantity the pruning papers tabulate (METHODS.md); BatchNorm, activation
and pooling operations are left out so that the numbers compare with the papers'.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Complexity:
    macs: int
    params: int


def _ptflops():
    """ptflops, imported without pulling in torchvision when nothing has imported it yet.

    ptflops imports ``torchvision.ops`` only to count its DeformConv2d (0.5 s of a CIFAR
    model's ``prunecli prune`` start-up): a model can hold one only after torchvision is
    imported, so until then it is hidden, and the counter is registered once it is there.
    """
    import sys

    if "ptflops" not in sys.modules and "torchvision" not in sys.modules:
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # `import torchvision` raises ImportError
        try:
            import ptflops  # noqa: F401
        finally:
            del sys.modules["torchvision"]
    import ptflops
    from ptflops import pytorch_ops

    tv_ops = sys.modules.get("torchvision.ops")
    if tv_ops is not None and getattr(tv_ops, "DeformConv2d", None) not in pytorch_ops.MODULES_MAPPING:
        pytorch_ops.MODULES_MAPPING[tv_ops.DeformConv2d] = pytorch_ops.deformable_conv_flops_counter_hook
    return ptflops


def _ignored_module_types() -> list[type]:
    from ptflops.pytorch_ops import MODULES_MAPPING

    counted = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)
    return [t for t in MODULES_MAPPING if not issubclass(t, counted)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_complexity(model: nn.Module, input_shape: tuple[int, ...]) -> Complexity:
    """MACs for one input of ``input_shape`` (C, H, W) and the parameter count.

    The model is counted on the CPU in eval mode on a copy-free basis: its training
    flag and device are restored afterwards.
    """
    ptflops = _ptflops()
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def constructor(shape):
        return {"x": torch.zeros(1, *shape, device=device)}

    # ptflops prints its own warnings to stdout; stdout belongs to the caller (paths/JSON).
    with contextlib.redirect_stdout(io.StringIO()):
        macs, _ = ptflops.get_model_complexity_info(
            _PositionalWrapper(model),
            tuple(input_shape),
            as_strings=False,
            print_per_layer_stat=False,
            input_constructor=constructor,
            backend="pytorch",
            ignore_modules=_ignored_module_types(),
            backend_specific_config={"count_functional": False},
        )
    model.train(was_training)
    return Complexity(macs=int(macs or 0), params=count_params(model))


@torch.no_grad()
def run_counted(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, Complexity]:
    """``model(inputs)`` (eval mode) and the model's complexity per input, from that one forward pass.

    The checks that run a model anyway (compress's masked == compressed probe) count its
    MACs on the way instead of a second pass: ptflops' counts grow linearly with the batch
    (every conv/linear counter multiplies by it), so the total over ``len(inputs)`` inputs
    divided by that is exactly `count_complexity`'s number. Unlike `count_complexity`, an
    error of the forward pass propagates (the caller is checking that the model runs).
    """
    ptflops = _ptflops()
    was_training = model.training
    wrapper = _PositionalWrapper(model)
    shape = tuple(inputs.shape[1:])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ptflops prints; stdout belongs to the caller
            macs, _ = ptflops.get_model_complexity_info(
                wrapper,
                shape,
                as_strings=False,
                print_per_layer_stat=False,
                input_constructor=lambda _shape: {"x": inputs},
                backend="pytorch",
                ignore_modules=_ignored_module_types(),
                backend_specific_config={"count_functional": False},
            )
    finally:
        model.train(was_training)
    if wrapper.error is not None:  # ptflops prints the exception and returns None: raise it instead
        raise wrapper.error
    # the input goes in as a keyword, so ptflops counts a batch of 1: the total is for all inputs
    total = int(macs or 0)
    return wrapper.output, Complexity(macs=total // max(1, len(inputs)), params=count_params(model))


class _PositionalWrapper(nn.Module):
    """ptflops calls ``model(**constructor(shape))``; models take one positional input.

    The output and any error of the forward pass are kept (ptflops discards the one and
    prints the other).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.output = None
        self.error: Optional[BaseException] = None

    def forward(self, x):
        try:
            self.output = self.model(x)
        except Exception as e:
            self.error = e
            raise
        return self.output


def conv_linear_params(model: nn.Module) -> int:
    """Parameters of the conv and linear layers only (weights and biases).

    The count Li et al. (2017) print: their params columns leave BatchNorm out (with it,
    ResNet-110's 1,727,962 would read 1.73e6, not the paper's 1.72e6).
    """
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters(recurse=False))
