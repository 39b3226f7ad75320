"""The checkpoint file format: one file per stage, safe to open, enough to rebuild the model.

This module only reads and writes files; turning a checkpoint into a model is
prunecli.models.build (spec -> converters -> structure -> state dict).

A checkpoint is a dict of plain Python types and tensors, so it loads with
``torch.load(..., weights_only=True)``: opening a stranger's file cannot run code.
It holds

* ``format`` / ``version`` -- "prunecli" and `FORMAT_VERSION`;
* ``model`` -- the model spec (registry name, input channels and size, classes, kwargs);
* ``converters`` -- registered layer conversions applied to the fresh model, in order
  (``[{"name", "args"}]``, empty for a plain model; version 2);
* ``structure`` -- Torch-Pruning's pruning history; replayed on a freshly built model it
  reproduces a compressed architecture (None for an unpruned one);
* ``state_dict``, ``masks`` (tensor name -> bool tensor, True = kept);
* ``dataset`` -- the dataset spec (name, classes, input size, normalisation, root);
* ``metrics``, ``lineage`` (one entry per stage, written by `derive`; an entry may note its
  stage's MACs, params and top-1 under ``result``, `with_result`; older files have none), ``resume``
  (optimizer, scheduler, epoch, config and callback states of a resumable stage) and
  ``extra`` (method-specific plain data).

Version 1 files (prunecli 0.1 before the in-memory core) are read and upgraded on load:
they have no converters, and their resume state kept the best-checkpoint record at the
top level rather than with the callback that keeps it.

Files are written atomically: a temporary file in the same folder, fsync, then
``os.replace``; a crash leaves the previous file intact and no truncated one.
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import os
import pickle
import time
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from prunecli import __version__
from prunecli._console import printable
from prunecli.config._base import short_repr
from prunecli.data._registry import DatasetSpec
from prunecli.errors import CheckpointError
from prunecli.limits import MAX_CHECKPOINT_VALUES, TooLarge, check_plain
from prunecli.models._registry import ModelSpec
from prunecli.outputs import atomic_write

FORMAT_NAME = "prunecli"
FORMAT_VERSION = 2


@dataclass
class Checkpoint:
    model: ModelSpec
    state_dict: dict[str, torch.Tensor]
    dataset: Optional[DatasetSpec] = None
    structure: Optional[list] = None
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    resume: Optional[dict[str, Any]] = None
    extra: dict[str, Any] = field(default_factory=dict)
    converters: list[dict[str, Any]] = field(default_factory=list)
    path: Optional[Path] = None  # where it was read from; not stored

    @property
    def stage(self) -> str:
        return self.lineage[-1]["command"] if self.lineage else "unknown"

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "prunecli_version": __version__,
            "model": to_plain(self.model.to_dict()),
            "converters": to_plain(self.converters),
            "structure": to_plain(self.structure),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            # per-module state-dict versions (plain data); some layers need them to load
            "state_dict_metadata": to_plain(dict(getattr(self.state_dict, "_metadata", None) or {})),
            "masks": {k: v.detach().cpu().to(torch.bool) for k, v in self.masks.items()},
            "dataset": to_plain(self.dataset.to_dict()) if self.dataset else None,
            "metrics": to_plain(self.metrics),
            "lineage": to_plain(self.lineage),
            "resume": to_plain(self.resume),
            "extra": to_plain(self.extra),
        }


# ---------------------------------------------------------------------------- saving


def to_plain(obj: Any) -> Any:
    """Convert options/metrics into types `weights_only` loading accepts (no Path, Enum, numpy)."""
    if obj is None or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, enum.Enum):  # before str: str(a str-valued enum member) is "Granularity.channel"
        return to_plain(obj.value)
    for base in (bool, int, float, str):  # exact base types: a str subclass (TorchVersion) is a pickled class
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        # int keys stay int: optimizer state is keyed by parameter index
        return {(k if type(k) in (int, str) else str(to_plain(k))): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return obj.item()
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint: {obj!r}")


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    payload = ckpt.to_payload()
    return atomic_write(Path(path), lambda f: torch.save(payload, f))


# sha256 of files already hashed in this process, keyed by what changes when a file does (device,
# inode, size, modification and change times in ns): every stage hashes its parent for the lineage,
# and a script or recipe deriving several files from one parent would read it again each time
# (tv ResNet-50's 100 MB file: 0.06 s a read)
_HASHES: dict[tuple[int, ...], str] = {}


def sha256_file(path: str | Path) -> str:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _HASHES:
        return _HASHES[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    # remembered only once the file is 2 s old: file times tick at the kernel's clock (a few ms), so a
    # same-size rewrite moments later, or a new file on a freed inode, could share the key (git's "racy" rule)
    if os.stat(path).st_mtime_ns == st.st_mtime_ns and time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        _HASHES[key] = h.hexdigest()
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def lineage_entry(command: str, options: Mapping[str, Any], parent: Optional[Path] = None) -> dict[str, Any]:
    return {
        "command": command,
        "options": to_plain(options),
        "prunecli_version": __version__,
        "torch_version": torch.__version__,
        "time": _now(),
        "parent": str(parent) if parent else None,
        "parent_sha256": sha256_file(parent) if parent else None,
    }


# extra entries that belong to the file that wrote them and are not carried to derived
# files: edge-popup's score tensors (the mask they chose is carried, as masks)
STAGE_LOCAL_EXTRA = ("edgepopup_scores",)

_CARRIED = ("model", "converters", "structure", "masks", "dataset", "extra")


def derive(parent: Optional[Checkpoint], stage: str, options: Mapping[str, Any], **fields: Any) -> Checkpoint:
    """The checkpoint ``stage`` makes from ``parent`` (None: a new model; pass ``model=``).

    The model spec, converters, structure, masks, dataset and extra carry over from the
    parent unless given; metrics and resume state start empty. The lineage gets one
    entry: the command, its resolved options, versions, time, and the parent's file and
    sha256 (the one place lineage is written).
    """
    carried = {k: getattr(parent, k) for k in _CARRIED} if parent is not None else {}
    if parent is not None:
        carried["masks"] = dict(parent.masks)
        carried["extra"] = {k: v for k, v in parent.extra.items() if k not in STAGE_LOCAL_EXTRA}
    values = {**carried, **fields}
    values.setdefault("state_dict", {})
    entry = lineage_entry(stage, options, parent=parent.path if parent is not None else None)
    lineage = (list(parent.lineage) if parent is not None else []) + [entry]
    return Checkpoint(lineage=lineage, **values)


# what a stage may note on its lineage entry (`with_result`), and what `info` reads back
RESULT_KEYS = ("macs_before", "params_before", "macs_after", "params_after", "compressed", "top1", "top5", "best_top1", "best_epoch", "epoch", "epochs")


def with_result(ckpt: Checkpoint, **numbers: Any) -> Checkpoint:
    """``ckpt`` with its last lineage entry noting what that stage measured (``result``).

    A file's ``metrics`` are its own stage's only (a finetuned file no longer says what prune
    removed); the lineage travels with every derived file, so each entry keeps its stage's
    MACs and params before -> after and its top-1, and `prunecli info` can tell the whole
    story from the last file. ``compressed=False`` with ``*_after``: what compress will
    leave (a masked file keeps its shapes). None values are left out; files without
    ``result`` (written before it existed) still load and render.
    """
    unknown = set(numbers) - set(RESULT_KEYS)
    if unknown:
        raise TypeError(f"with_result: unknown keys {sorted(unknown)}")
    if not ckpt.lineage:
        return ckpt
    last = dict(ckpt.lineage[-1])  # a copy: templates share their entries with earlier snapshots
    last["result"] = {**(last.get("result") or {}), **to_plain({k: v for k, v in numbers.items() if v is not None})}
    return replace(ckpt, lineage=[*ckpt.lineage[:-1], last])


def resumed(ckpt: Checkpoint, overrides: Mapping[str, Any]) -> Checkpoint:
    """The template a resumed run writes: the same lineage, its last entry noting the resume.

    A resume continues the stage that wrote ``ckpt`` rather than starting a new one, so it
    adds no lineage entry; it records the epoch it continued from and the options given again.
    """
    lineage = [dict(e) for e in ckpt.lineage]
    if lineage:
        note = {"at_epoch": (ckpt.resume or {}).get("epoch"), "time": _now(), "overrides": to_plain(dict(overrides))}
        lineage[-1]["resumed"] = list(lineage[-1].get("resumed") or []) + [note]
    return replace(ckpt, state_dict={}, lineage=lineage, resume=None, path=None)


# ---------------------------------------------------------------------------- loading


# what a few foreign files start with, to name them in the error
_MAGIC = (
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ", "an xz file"),
    (b"\x7fELF", "an executable"),
    (b"\x80", "a pickle in PyTorch's legacy format, which prunecli never writes"),
    (b"\x93NUMPY", "a NumPy array"),
)
_ZIP = b"PK\x03\x04"
MAX_PICKLE_BYTES = 64 << 20  # the plain-data part (data.pkl): prunecli writes kilobytes


def _describe(head: bytes) -> str:
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "unknown binary data"


def _check_archive(path: Path) -> None:
    """Before torch reads anything: a PyTorch zip archive whose declared sizes fit the file.

    torch.save writes its records uncompressed, so the content can be no larger than the
    file. A compressed entry declaring more is refused here (a 9 MB "zip bomb" would
    otherwise inflate to gigabytes inside torch.load), and so is a plain-data record
    (lineage, options, metrics) beyond `MAX_PICKLE_BYTES`.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    if not head.startswith(_ZIP):
        if len(head) < len(_ZIP) and _ZIP.startswith(head):
            raise CheckpointError(f"{path}: truncated checkpoint ({len(head)} bytes)")
        raise CheckpointError(f"{path}: not a prunecli checkpoint ({_describe(head)})")
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint (its zip directory is missing or damaged)") from None
    declared = sum(e.file_size for e in entries)
    if declared > size:
        raise CheckpointError(
            f"{path}: refused: declares {declared:,} bytes of content in a {size:,}-byte file "
            "(compressed records; PyTorch and prunecli write none)"
        )
    for e in entries:
        if e.filename.endswith("/data.pkl") and e.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"{path}: refused: {e.file_size:,} bytes of plain data (lineage, options, metrics); at most {MAX_PICKLE_BYTES:,}")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; every failure is one CheckpointError line.

    Tensors are memory-mapped, not read: their shapes are checked against the model spec
    (prunecli.models.build) before the weights are copied into a model, so a small file
    cannot make a load allocate more than the model it describes.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file (a device, FIFO or socket), not a checkpoint")
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: empty file, not a checkpoint")
        _check_archive(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {(e.strerror or str(e)).lower()}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{path}: refused to load: it contains pickled objects or code, not only tensors and "
                "plain data (prunecli checkpoints never do; the file was not written by prunecli or was tampered with)"
            ) from None
        raise CheckpointError(f"{path}: not a prunecli checkpoint (unreadable pickle data)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {(e.strerror or str(e)).lower()}") from None
    except MemoryError:
        raise CheckpointError(f"{path}: refused: reading it needs more memory than there is") from None
    except Exception as e:  # torch.load fails in many ways on foreign bytes (KeyError, RuntimeError, EOFError...)
        msg = printable(str(e).splitlines()[0][:200]) if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(e).__name__}: {msg})") from None
    return _from_payload(payload, path)


def _upgrade_v1(payload: dict) -> dict:
    """A version-1 payload in version-2 layout (no converters; best record with its callback)."""
    payload = dict(payload)
    payload["converters"] = []
    resume = payload.get("resume")
    if isinstance(resume, dict) and "callbacks" not in resume:
        resume = dict(resume)
        best = resume.pop("best", None) or {}
        if not isinstance(best, dict):
            best = {}
        resume["callbacks"] = {"best": {"top1": best.get("top1"), "epoch": best.get("epoch")}}
        payload["resume"] = resume
    payload["version"] = FORMAT_VERSION
    return payload


# field -> (types it may have, what to call them); None is always allowed where listed
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((dict,), "a mapping"),
    "converters": ((list,), "a list"),
    "structure": ((list, type(None)), "a list"),
    "state_dict": ((dict,), "a mapping"),
    "state_dict_metadata": ((dict, type(None)), "a mapping"),
    "masks": ((dict, type(None)), "a mapping"),
    "dataset": ((dict, type(None)), "a mapping"),
    "metrics": ((dict, type(None)), "a mapping"),
    "lineage": ((list, type(None)), "a list"),
    "resume": ((dict, type(None)), "a mapping"),
    "extra": ((dict, type(None)), "a mapping"),
}


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged prunecli checkpoint: {printable(why)}")


def _checked_masks(masks: dict, state_dict: dict, path: Path) -> dict[str, torch.Tensor]:
    """Masks name a tensor of the state dict, have its shape, and are boolean (or exactly 0/1)."""
    out = {}
    for name, mask in masks.items():
        if not isinstance(name, str) or not isinstance(mask, torch.Tensor):
            raise _damaged(path, f"masks hold a {type(mask).__name__} for {short(name)}, not a tensor")
        if name not in state_dict:
            raise _damaged(path, f"a mask for {short(name)}, which is not a tensor of the model")
        if tuple(mask.shape) != tuple(state_dict[name].shape):
            raise _damaged(path, f"the mask for {name} has shape {tuple(mask.shape)}, the tensor {tuple(state_dict[name].shape)}")
        if mask.dtype != torch.bool:
            if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
                raise _damaged(path, f"the mask for {name} holds values other than 0 and 1")
            mask = mask != 0
        out[name] = mask
    return out


def short(value: Any) -> str:
    """A value from an untrusted file, quoted for one line of error message."""
    return printable(short_repr(value))


# resume-state field -> the types it may have (None allowed for those listed with NoneType)
_RESUME_TYPES: dict[str, tuple[type, ...]] = {
    "stage": (str,),
    "epoch": (int,),
    "config": (dict,),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "options": (dict, type(None)),
    "scaler": (dict, type(None)),
    "last_eval": (dict, type(None)),
    "callbacks": (dict, type(None)),
    "masks_version": (int, type(None)),
}


def _check_resume(resume: Any, path: Path) -> None:
    """A resume state must have the fields a resumed run reads, of the right types."""
    if resume is None:
        return
    for key, types in _RESUME_TYPES.items():
        value = resume.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise _damaged(path, f"resume state field {key!r} is {short(value)}")
    if resume["stage"] not in ("train", "finetune", "prune", "compress"):  # compress: a block-by-block run's block training
        raise _damaged(path, f"resume state of an unknown stage {short(resume['stage'])}")
    if not 0 <= resume["epoch"] <= 100_000:
        raise _damaged(path, f"resume state at epoch {resume['epoch']}")


def _from_payload(payload: Any, path: Path) -> Checkpoint:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a prunecli checkpoint (no 'format: prunecli' marker)")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise _damaged(path, f"format version {short(version)} is not a number")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this prunecli reads "
            f"({__version__} reads 1 to {FORMAT_VERSION}); upgrade prunecli"
        )
    if version < 1:
        raise _damaged(path, f"format version {version} does not exist")
    try:
        check_plain(payload, max_values=MAX_CHECKPOINT_VALUES, tensors=True)
    except (TooLarge, TypeError) as e:
        raise CheckpointError(f"{path}: refused: its plain data is {e}" if isinstance(e, TooLarge) else f"{path}: damaged prunecli checkpoint: {e}") from None
    for key, (types, what) in _FIELD_TYPES.items():
        if key in payload and not isinstance(payload[key], types):
            raise _damaged(path, f"{key!r} is a {type(payload[key]).__name__}, expected {what}")
    if version == 1:
        payload = _upgrade_v1(payload)
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise _damaged(path, "state_dict is not a mapping of names to tensors")
    lineage = list(payload.get("lineage") or [])
    if not all(isinstance(e, dict) for e in lineage):
        raise _damaged(path, "a lineage entry is not a mapping")
    if not all(isinstance(e.get("command"), str) for e in lineage):
        raise _damaged(path, "a lineage entry names no command")
    if any(t.is_complex() for t in state_dict.values()):
        raise _damaged(path, "complex-valued weights")
    _check_resume(payload.get("resume"), path)
    converters = list(payload.get("converters") or [])
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("args") or {}, dict) for c in converters):
        raise _damaged(path, "a converter entry is not {name, args}")
    try:
        model = ModelSpec.from_dict(payload["model"])
        dataset = DatasetSpec.from_dict(payload["dataset"]) if payload.get("dataset") else None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _damaged(path, f"model or dataset spec: {type(e).__name__} {e}") from None
    masks = _checked_masks(dict(payload.get("masks") or {}), state_dict, path)
    meta = payload.get("state_dict_metadata")
    if meta:
        state_dict = OrderedDict(state_dict)
        state_dict._metadata = OrderedDict(meta)
    return Checkpoint(
        model=model,
        state_dict=state_dict,
        dataset=dataset,
        structure=payload.get("structure"),
        masks=masks,
        metrics=dict(payload.get("metrics") or {}),
        lineage=lineage,
        resume=payload.get("resume"),
        extra=dict(payload.get("extra") or {}),
        converters=converters,
        path=path,
    )
