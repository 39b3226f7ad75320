"""BatchNorm folding of a checkpoint: what ``compress --fold-bn`` and ``export`` do to a file's model.

`fold_checkpoint(ckpt, model)` folds every BatchNorm that directly follows a conv
(prunecli.models.folding) into ``model`` and returns the checkpoint of the folded model:
the fold is appended to its converters (``fold-batchnorm`` with the folded pairs), so the
file rebuilds from itself, before or after compression (converters run before the replay
of the pruning history; prunecli.models.folding says why that order works). Before it
returns, the result is checked twice on the probe batch:

* the folded model against the unfolded one (they differ by float rounding only);
* the checkpoint, rebuilt from scratch the way every command will rebuild it (spec ->
  converters -> structure -> state dict), against the folded model.

Either failing is a `PruneCliError` and nothing is returned, so a caller writes nothing.

The caller adds the lineage entry (``derive``): this function changes the model, not the
history of the file. MACs and parameter counts change a little (a BatchNorm's scale and
shift go, a conv bias comes), so a caller that reports them counts the folded model.

Masks: a folded BatchNorm's tensors no longer exist, so masks on them go; where a mask
zeroed both its scale and its shift (a pruned channel), the conv's new bias is masked there
instead (the folded channel is zero, and stays so). Masks on conv weights carry over as they
are (folding scales whole filters; a zero stays zero).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from prunecli.checkpoint import Checkpoint
from prunecli.errors import PruneCliError
from prunecli.models import example_input
from prunecli.models.folding import CONVERTER, fold_pairs, foldable_pairs, rewire_history
from prunecli.surgery.equivalence import difference, outputs, probe_batch
from prunecli.surgery.masks import apply_masks

# BatchNorm tensors of the state dict; all of them leave with the BatchNorm
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def fold_checkpoint(ckpt: Checkpoint, model: nn.Module, *, verify: bool = True, where: Optional[str] = None) -> tuple[Checkpoint, nn.Module, int]:
    """(the folded checkpoint, ``model`` folded in place, how many BatchNorms were folded).

    ``model`` is ``ckpt``'s model as rebuilt (masks applied). With nothing to fold the
    checkpoint comes back unchanged and the count is 0. ``verify``: rebuild the result
    and compare (module docstring); leave it on unless the caller checks the file itself.
    ``where``: the file errors name (default: the checkpoint's path; a result not yet
    written has none, so compress passes its input's).
    """
    spec = ckpt.model
    where = where or str(ckpt.path or "checkpoint")
    example = example_input(spec, device=_device_of(model))
    pairs = foldable_pairs(model, example, name=spec.name)
    if not pairs:
        return ckpt, model, 0
    probe = probe_batch(spec, device=_device_of(model))
    expected = outputs(model, probe)
    fold_pairs(model, pairs=pairs)
    masks = _folded_masks(ckpt.masks, pairs)
    apply_masks(model, masks, where=where)
    diff, same = difference(expected, outputs(model, probe))
    if not same:
        raise PruneCliError(f"{where}: folding its BatchNorms changed the outputs (max |diff| {diff:.3g} on the probe batch); nothing written")
    extra = dict(ckpt.extra)
    extra["fold_bn"] = {"folded": len(pairs), "max_abs_diff": diff}
    folded = replace(
        ckpt,
        converters=list(ckpt.converters) + [{"name": CONVERTER, "args": {"pairs": [list(p) for p in pairs]}}],
        structure=rewire_history(copy.deepcopy(ckpt.structure), pairs),
        state_dict=model.state_dict(),  # as derive_compressed does: saving copies it to the CPU
        masks=masks,
        extra=extra,
    )
    if verify:
        _check_rebuilds(folded, model, probe, where)
    return folded, model, len(pairs)


def _device_of(model: nn.Module) -> Optional[torch.device]:
    p = next(model.parameters(), None)
    return p.device if p is not None else None


def _folded_masks(masks: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """The masks of the folded model (module docstring)."""
    out = {k: v for k, v in masks.items() if not any(k == f"{bn}.{t}" for _, bn in pairs for t in _BN_TENSORS)}
    for conv, bn in pairs:
        scale, shift = masks.get(f"{bn}.weight"), masks.get(f"{bn}.bias")
        if scale is None or shift is None:
            continue
        dead = ~scale & ~shift  # the channel's output was identically zero
        if bool(dead.any()):
            old = out.get(f"{conv}.bias")
            out[f"{conv}.bias"] = ~dead if old is None else old & ~dead
    return out


def _check_rebuilds(folded: Checkpoint, model: nn.Module, probe: torch.Tensor, where: str) -> None:
    """The folded checkpoint, rebuilt as every command rebuilds it, computes what ``model`` does."""
    from prunecli.stages.checkpoints import rebuild_model

    try:
        rebuilt = rebuild_model(folded, allow_nonfinite=True).to(probe.device)
    except PruneCliError as e:
        raise PruneCliError(f"{where}: the BatchNorm-folded checkpoint would not rebuild ({e}); nothing written") from e
    apply_masks(rebuilt, folded.masks, where=where)
    diff, same = difference(outputs(model, probe), outputs(rebuilt, probe))
    if not same:
        raise PruneCliError(f"{where}: the BatchNorm-folded checkpoint rebuilds into another function (max |diff| {diff:.3g}); nothing written")
