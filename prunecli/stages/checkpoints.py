"""What every stage does with files: a checkpoint in, a model and its data out.

The one load -> rebuild sequence (the writing side is `prunecli.checkpoint.derive` +
`save_checkpoint`), and the data a checkpoint was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from prunecli.checkpoint import Checkpoint, derive, load_checkpoint, to_plain
from prunecli.data import DataBundle, get_dataset
from prunecli.errors import CheckpointError, OptionError, PruneCliError
from prunecli.models import ModelSpec, rebuild
from prunecli.models.build import nonfinite_tensors
from prunecli.outputs import atomic_write
from prunecli.surgery.masks import apply_masks, carry


def check_finite(ckpt: Checkpoint, *, allow: bool = False) -> list[str]:
    """The tensors of ``ckpt`` that hold NaN or Inf; an error unless ``allow``.

    Non-finite weights make every later number meaningless (accuracy at chance, a loss of
    nan, a compress check of "nan"), so they stop a command unless the user asks to look.
    """
    bad = nonfinite_tensors(ckpt.state_dict)
    if bad and not allow:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CheckpointError(
            f"{ckpt.path}: weights hold NaN or Inf ({bad[0]}{more}; a diverged run or an edited file); "
            "pass --allow-nonfinite to load it anyway"
        )
    return bad


def rebuild_model(ckpt: Checkpoint, *, allow_nonfinite: bool = False) -> nn.Module:
    """The checkpoint's model: spec -> converters -> structure -> weights (prunecli.models.build)."""
    check_finite(ckpt, allow=allow_nonfinite)
    return rebuild(
        ckpt.model,
        converters=ckpt.converters,
        structure=ckpt.structure,
        state_dict=ckpt.state_dict,
        where=str(ckpt.path or "checkpoint"),
        code_sha256=ckpt.extra.get("model_code_sha256"),
    )


def load_model(path: Path, *, device: Optional[torch.device] = None, allow_nonfinite: bool = False) -> tuple[Checkpoint, nn.Module]:
    """Read ``path`` and rebuild its model (on ``device``, masks applied, in eval mode)."""
    ckpt = load_checkpoint(path)
    model = rebuild_model(ckpt, allow_nonfinite=allow_nonfinite).eval()
    if device is not None:
        model.to(device)
    apply_masks(model, ckpt.masks, where=str(path))
    return ckpt, model


def derive_compressed(
    parent: Checkpoint, stage: str, options: dict, model: nn.Module, history: list, kept: dict, *, metrics: dict, extra: dict
) -> Checkpoint:
    """The checkpoint of ``model``, which a removal (``history``, ``kept``) made from ``parent``'s.

    The structure grows by the removal's history, so the file rebuilds the smaller model;
    the parent's masks (weight-level ones, which keep shapes) are re-indexed into the
    smaller tensors and applied.
    """
    masks = carry(parent.masks, kept)
    apply_masks(model, masks)
    return derive(
        parent,
        stage,
        options,
        state_dict=model.state_dict(),
        structure=list(parent.structure or []) + history,
        masks=masks,
        metrics=metrics,
        extra=extra,
    )


def check_data_fits_model(bundle: DataBundle, spec: ModelSpec, where: str) -> None:
    """The dataset's input shape and classes must be what the model was built for."""
    d = bundle.spec
    if (d.num_classes, d.in_channels, d.image_size) != (spec.num_classes, spec.in_channels, spec.image_size):
        raise PruneCliError(
            f"{where}: model takes {spec.in_channels}x{spec.image_size}x{spec.image_size} inputs and "
            f"{spec.num_classes} classes; dataset {d.name} has {d.in_channels}x{d.image_size}x{d.image_size} "
            f"and {d.num_classes}"
        )


def data_for_checkpoint(
    ckpt: Checkpoint, *, dataset: Optional[str], data: Optional[str], download: bool = False, seed: int = 0
) -> DataBundle:
    """The checkpoint's own dataset (or ``dataset``), read from ``data`` or the recorded root."""
    spec = ckpt.dataset
    name = dataset or (spec.name if spec else None)
    if name is None:
        raise OptionError(f"{ckpt.path}: records no dataset; pass {{dataset}}")
    same = spec is not None and spec.name == name
    root = data or (spec.root if same and spec.root else None)
    opts = spec.options if same and spec else {}
    bundle = get_dataset(
        name,
        root=Path(root) if root else None,
        download=download,
        image_size=ckpt.model.image_size,
        num_classes=opts.get("num_classes") if opts else (ckpt.model.num_classes if name == "synthetic" else None),
        seed=seed,
    )
    check_data_fits_model(bundle, ckpt.model, str(ckpt.path))
    return bundle


def side_paths(output: Path) -> dict[str, Path]:
    """What a training stage writes next to its checkpoint."""
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return {
        "best": output.with_name(f"{stem}.best{output.suffix or '.pt'}"),
        "metrics": output.with_name(f"{stem}.metrics.jsonl"),
        "config": output.with_name(f"{stem}.config.yaml"),
    }


# decisions about one invocation, not options of the run: a reused config must not repeat them
_ONE_OFF = ("overwrite", "allow-nonfinite", "resume")


def write_config(path: Path, command: str, options: dict) -> None:
    """The resolved options next to an output, as a file ``--config`` reads back (without one-off flags)."""
    import yaml

    body = yaml.safe_dump(to_plain({k: v for k, v in options.items() if k not in _ONE_OFF}), sort_keys=False)
    text = f"# resolved options of `prunecli {command}`; reuse with --config\n{body}"
    atomic_write(path, lambda f: f.write(text.encode()))


SHUFFLED_LABELS = "shuffled_labels"  # extra: {"seed": S}, the label permutation the weights were trained on


def shuffled_label_seed(ckpt: Checkpoint) -> Optional[int]:
    """The seed of the label permutation ``ckpt``'s weights were last trained on (None: true labels).

    ``--shuffle-labels`` draws one permutation at the first stage that uses it and records
    its seed; later stages of the lineage that shuffle reuse it, so pretraining, the score
    stage and fine-tuning all see the same labels (seed 000 meant to; it never shuffled).
    """
    record = ckpt.extra.get(SHUFFLED_LABELS)
    if isinstance(record, dict) and isinstance(record.get("seed"), int) and not isinstance(record.get("seed"), bool):
        return int(record["seed"])
    return None
