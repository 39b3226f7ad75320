"""BatchNorm folding: a BatchNorm that directly follows a conv becomes part of the conv.

In eval mode a BatchNorm is a per-channel affine map, ``y = (x - mean) / sqrt(var + eps) *
gamma + beta``; applied to a conv's output it equals a conv with scaled filters and a
bias:

    scale = gamma / sqrt(var + eps)         (one value per output channel)
    W'    = W * scale                        (each filter row scaled)
    b'    = (b - mean) * scale + beta        (b = 0 for a conv without bias)

The folded network computes the same function with one layer fewer per pair (and, on CPU
eager PyTorch, one memory pass over every activation fewer). The arithmetic is done in
float64 and rounded once, so the folded outputs differ from the unfolded ones by float
rounding only.

**Which BatchNorms fold** is read from the computation, not from module order: the model is
traced into Torch-Pruning's dependency graph (prunecli.models.structure.trace, the same
trace the pruning uses), and a BatchNorm folds into a conv when, in that graph,

* the BatchNorm's only input is the conv's output, and the conv's output goes nowhere
  else (a conv whose output also feeds a shortcut or a concatenation keeps its BatchNorm:
  folding would change what the other reader sees);
* each of them runs exactly once per forward pass (a module called twice would fold for
  both calls);
* the conv is an ordinary ``Conv1d/2d/3d`` (transposed convs keep their BatchNorm: their
  filters are laid out by input channel) or a ``Linear`` whose output is ``(N, C)`` (the
  BatchNorm1d of a classifier head);
* the BatchNorm keeps running statistics (``track_running_stats=False`` normalises by the
  batch even in eval mode, which no fixed conv can reproduce).

Limits: anything the trace records between the two (a functional ReLU, a ``clone``, a
reshape) stops the fold, which is the safe side; a BatchNorm *before* a conv (the
pre-activation ``BN -> ReLU -> conv`` of PreResNet and DenseNet) does not fold, as the
ReLU sits in between; those networks keep the BatchNorms that read their residual stream.

**Recorded as a converter.** `fold_batchnorm` replaces each folded BatchNorm by a
`FoldedBatchNorm` (an ``nn.Identity`` that remembers where it came from) and gives the conv
a bias. A checkpoint records the fold as the registered converter ``fold-batchnorm`` with
the folded pairs (``{"pairs": [[conv, bn], ...]}``), so it rebuilds from itself
(prunecli.models.build: spec -> converters -> structure -> state dict). Converters run
*before* the replay of a compressed model's pruning history, so a model folded after
compression is rebuilt as: the unpruned architecture, folded (its convs get full-width
biases, its BatchNorms become identities), then shrunk by the history. That works because
folding changes no channel coupling: a BatchNorm maps channel c to channel c, so without
it the same dependency groups hold and Torch-Pruning prunes each conv's new bias with its
filters; and prunecli's pruning histories are rooted at convs, linear layers and channel
selections, never at a BatchNorm (`rewire_history` maps one that is, should a foreign file
hold it). prunecli.stages.fold checks every folded checkpoint by rebuilding it.

**Inference only.** A folded model has no BatchNorm left to normalise with, so training it
is not the training it was tuned for; prunecli refuses to train one
(`inference_only_reason`, checked by the Trainer) and says to fine-tune before folding.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, TypeVar

import torch
from torch import nn

from prunecli.config._base import short_repr
from prunecli.errors import PruneCliError
from prunecli.models.build import register_converter

CONVERTER = "fold-batchnorm"

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class FoldedBatchNorm(nn.Identity):
    """Where a BatchNorm was before it was folded into ``conv`` (the identity in the forward)."""

    def __init__(self, conv: str = "", num_features: int = 0):
        super().__init__()
        self.conv = conv
        self.num_features = num_features

    def extra_repr(self) -> str:
        return f"folded into {self.conv}" if self.conv else ""


def inference_only_reason(model: nn.Module) -> Optional[str]:
    """One line saying why ``model`` must not be trained (BatchNorm folded), or None."""
    folded = sum(1 for m in model.modules() if isinstance(m, FoldedBatchNorm))
    if not folded:
        return None
    return (
        f"this model is for inference only: {folded} BatchNorm layer{'s are' if folded != 1 else ' is'} folded into "
        "the convs before them (compress --fold-bn), so it has no normalisation left to train with; "
        "fine-tune the checkpoint from before folding, then fold again"
    )


def _foldable_layer(module: nn.Module) -> bool:
    return isinstance(module, _CONV_TYPES) or isinstance(module, nn.Linear)


def foldable_pairs(model: nn.Module, example_input: torch.Tensor, *, name: str = "model") -> list[tuple[str, str]]:
    """(conv, BatchNorm) module names whose BatchNorm folds into the conv (see the module docstring).

    Traces ``model`` into Torch-Pruning's dependency graph; the model's training flag is kept.
    """
    from prunecli.models.structure import trace

    names = {m: n for n, m in model.named_modules()}
    candidates = {m for m in model.modules() if isinstance(m, _BN_TYPES) or _foldable_layer(m)}
    calls: dict[nn.Module, int] = {}
    out_dims: dict[nn.Module, int] = {}

    def count(module, inputs, output):
        calls[module] = calls.get(module, 0) + 1
        if isinstance(output, torch.Tensor):
            out_dims[module] = output.dim()

    dg = trace(model, example_input, name=name)  # first: its failures are one-line errors
    # a forward pass of its own: Torch-Pruning's trace calls the first layer twice
    hooks = [m.register_forward_hook(count) for m in candidates]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    pairs = []
    for bn, node in dg.module2node.items():
        if not isinstance(bn, _BN_TYPES) or bn not in names or calls.get(bn) != 1:
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue
        inputs = _unique(node.inputs)
        if len(inputs) != 1:
            continue
        conv = inputs[0].module
        if not isinstance(conv, nn.Module) or conv not in names or not _foldable_layer(conv) or calls.get(conv) != 1:
            continue
        if _unique(inputs[0].outputs) != [node]:
            continue  # the conv's output is read elsewhere too
        if isinstance(conv, nn.Linear) and out_dims.get(conv) != 2:
            continue  # BatchNorm1d normalises dim 1; a Linear acts on the last dim
        channels = conv.out_channels if isinstance(conv, _CONV_TYPES) else conv.out_features
        if channels != bn.num_features:
            continue
        pairs.append((names[conv], names[bn]))
    order = {n: i for i, n in enumerate(names.values())}
    return sorted(pairs, key=lambda p: order[p[0]])


def _unique(nodes: Iterable) -> list:
    seen, out = set(), []
    for n in nodes:
        if id(n) not in seen:
            seen.add(id(n))
            out.append(n)
    return out


@torch.no_grad()
def fold_pair(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval-mode statistics) into ``conv``'s weight and bias, in place."""
    weight = conv.weight
    w64 = weight.detach().to(torch.float64)
    mean = bn.running_mean.detach().to(torch.float64)
    var = bn.running_var.detach().to(torch.float64)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.detach().to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)
    new_weight = (w64 * scale.view(-1, *([1] * (w64.dim() - 1)))).to(weight.dtype)
    new_bias = ((bias - mean) * scale + beta).to(weight.dtype)
    weight.copy_(new_weight)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias, requires_grad=weight.requires_grad)
    else:
        conv.bias.copy_(new_bias)


M = TypeVar("M", bound=nn.Module)


@register_converter(CONVERTER)
def fold_pairs(model: M, *, pairs: Sequence[Sequence[str]]) -> M:
    """Fold each named (conv, BatchNorm) pair of ``model`` in place; the BatchNorm becomes a `FoldedBatchNorm`.

    The registered converter: on a freshly built model (a rebuild) the values folded are
    placeholders that the checkpoint's state dict then replaces; what matters there is the
    structure it leaves (conv biases, no BatchNorms).
    """
    # the pairs come from a file: what does not fit is one line naming it, not an internal error
    if not isinstance(pairs, (list, tuple)):
        raise PruneCliError(f"BatchNorm folding: its pairs are a {type(pairs).__name__}, not a list (a damaged checkpoint?)")
    modules = dict(model.named_modules())
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise PruneCliError(f"BatchNorm folding: {short_repr(pair)} is not a [conv, batchnorm] pair (a damaged checkpoint?)")
        conv_name, bn_name = (str(p) for p in pair)
        conv, bn = modules.get(conv_name), modules.get(bn_name)
        if not _foldable_layer(conv):
            raise PruneCliError(f"BatchNorm folding: {short_repr(conv_name)} is not a conv or linear layer of this model")
        if not isinstance(bn, _BN_TYPES) or bn.running_mean is None:
            raise PruneCliError(f"BatchNorm folding: {short_repr(bn_name)} is not a BatchNorm with running statistics of this model")
        fold_pair(conv, bn)
        parent_name, _, attr = bn_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, FoldedBatchNorm(conv_name, bn.num_features))
        modules[bn_name] = None  # folded: a second pair naming it is an error above
    return model


def fold_batchnorm(model: nn.Module, example_input: torch.Tensor, *, name: str = "model") -> int:
    """Fold every BatchNorm that directly follows a conv into it (module docstring); returns how many.

    In place; the result equals the unfolded model in eval mode (float rounding aside).
    """
    pairs = foldable_pairs(model, example_input, name=name)
    fold_pairs(model, pairs=pairs)
    return len(pairs)


def rewire_history(history: Optional[list], pairs: Sequence[Sequence[str]]) -> Optional[list]:
    """A pruning history whose steps rooted at a folded BatchNorm are rooted at its conv instead.

    A BatchNorm maps channel c to channel c, so pruning its channels and pruning the conv's
    output channels are the same dependency group with the same indices.
    """
    if not history:
        return history
    conv_of = {str(bn): str(conv) for conv, bn in pairs}
    out = []
    for step in history:
        root, is_out, idxs = step
        if root in conv_of:
            root, is_out = conv_of[root], True
        out.append([root, is_out, idxs])
    return out
