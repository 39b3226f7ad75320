"""The checkpoint file: one per stage, safe to open, enough to rebuild the model.

A checkpoint is a dict of plain Python types and tensors, so it loads with
``torch.load(..., weights_only=True)``: opening a stranger's file cannot run code.
It holds

* ``format`` / ``version`` -- "prunecli" and `FORMAT_VERSION`;
* ``model`` -- the model spec (registry name, input channels and size, classes, kwargs);
* ``structure`` -- Torch-Pruning's pruning history; replayed on a freshly built model it
  reproduces a compressed architecture (None for an unpruned one);
* ``state_dict``, ``masks`` (parameter name -> bool tensor, True = kept);
* ``dataset`` -- the dataset spec (name, classes, input size, normalisation, root);
* ``metrics``, ``lineage`` (one entry per stage), ``resume`` (optimizer, scheduler,
  epoch, config of a resumable stage) and ``extra`` (method-specific plain data).

Files are written atomically: a temporary file in the same folder, fsync, then
``os.replace``; a crash leaves the previous file intact and no truncated one.
"""

from __future__ import annotations

import datetime as _dt
import enum
import hashlib
import os
import pickle
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from prunecli import __version__
from prunecli.data._registry import DatasetSpec
from prunecli.errors import CheckpointError, PruneCliError
from prunecli.models._registry import ModelSpec, build_model, is_user_model, user_code_sha256

FORMAT_NAME = "prunecli"
FORMAT_VERSION = 1
TRUST_CODE_ENV = "PRUNECLI_TRUST_CODE"


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
    for base in (bool, int, float, str):  # exact base types: a str subclass (TorchVersion) is a pickled class
        if isinstance(obj, base):
            return base(obj)
    if isinstance(obj, enum.Enum):
        return to_plain(obj.value)
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


def atomic_write(path: Path, write) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    payload = ckpt.to_payload()
    return atomic_write(Path(path), lambda f: torch.save(payload, f))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def lineage_entry(command: str, options: dict[str, Any], parent: Optional[Path] = None) -> dict[str, Any]:
    return {
        "command": command,
        "options": to_plain(options),
        "prunecli_version": __version__,
        "torch_version": torch.__version__,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "parent": str(parent) if parent else None,
        "parent_sha256": sha256_file(parent) if parent else None,
    }


# ---------------------------------------------------------------------------- loading


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and validate a checkpoint; every failure is one CheckpointError line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                f"{path}: refused to load: it contains pickled objects or code, not only tensors and "
                "plain data (prunecli checkpoints never do; the file was not written by prunecli or was tampered with)"
            ) from None
        raise CheckpointError(f"{path}: not a prunecli checkpoint (unreadable pickle data)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # torch.load fails in many ways on foreign bytes (KeyError, RuntimeError, EOFError...)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if zipfile.is_zipfile(path) or isinstance(e, EOFError) or "zip archive" in msg:
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({msg})") from None
        raise CheckpointError(f"{path}: not a prunecli checkpoint ({type(e).__name__}: {msg})") from None
    return _from_payload(payload, path)


def _from_payload(payload: Any, path: Path) -> Checkpoint:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a prunecli checkpoint (no 'format: prunecli' marker)")
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this prunecli "
            f"({__version__}, format {FORMAT_VERSION}); upgrade prunecli"
        )
    try:
        model = ModelSpec.from_dict(payload["model"])
        dataset = DatasetSpec.from_dict(payload["dataset"]) if payload.get("dataset") else None
        state_dict = payload["state_dict"]
        if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise TypeError("state_dict is not a dict of tensors")
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged prunecli checkpoint ({e})") from None
    meta = payload.get("state_dict_metadata")
    if meta:
        state_dict = OrderedDict(state_dict)
        state_dict._metadata = OrderedDict(meta)
    return Checkpoint(
        model=model,
        state_dict=state_dict,
        dataset=dataset,
        structure=payload.get("structure"),
        masks=dict(payload.get("masks") or {}),
        metrics=dict(payload.get("metrics") or {}),
        lineage=list(payload.get("lineage") or []),
        resume=payload.get("resume"),
        extra=dict(payload.get("extra") or {}),
        path=path,
    )


def code_is_trusted() -> bool:
    return os.environ.get(TRUST_CODE_ENV, "").lower() in ("1", "true", "yes")


def rebuild_model(ckpt: Checkpoint) -> torch.nn.Module:
    """Build the architecture from the spec, replay the pruning structure, load the weights."""
    where = ckpt.path or "checkpoint"
    spec = ckpt.model
    if is_user_model(spec.name):
        if not code_is_trusted():
            raise CheckpointError(
                f"{where}: its model is built by code outside prunecli ({spec.name}); "
                f"importing it runs that code: set {TRUST_CODE_ENV}=1 if you trust it"
            )
        recorded = ckpt.extra.get("model_code_sha256")
        if recorded and user_code_sha256(spec.name) not in (None, recorded):
            from prunecli._console import warn

            warn(f"{spec.name} changed since {where} was written")
    try:
        model = build_model(spec)
    except PruneCliError as e:
        raise CheckpointError(f"{where}: cannot rebuild its model: {e}") from None
    if ckpt.structure:
        from prunecli.models.structure import replay_structure

        replay_structure(model, ckpt.structure, spec, where=str(where))
    load_state_strict(model, ckpt.state_dict, where=str(where), arch=spec.name)
    return model


def load_state_strict(model: torch.nn.Module, state_dict: dict, *, where: str, arch: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"{where}: weights do not fit architecture {arch!r}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _few(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
