"""A checkpoint's lineage as readable steps: what each stage did, what it changed, top-1.

The lineage (prunecli.checkpoint) holds one entry per stage with the command's resolved
options; since `with_result` each entry also notes what its stage measured (MACs and
params before -> after, top-1). `steps` turns that into plain data that `prunecli info`
prints one line per stage and ``info --json`` returns under ``"steps"``.

Files written before entries noted results still render: their last stage's numbers come
from the file's ``metrics`` (a compressed file also carries the prune's predicted MACs
there), and MACs that no stage changed are filled in from the neighbouring stages and
from the file itself. What cannot be known is shown as unknown, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prunecli.checkpoint import Checkpoint

# commands that train and evaluate on the test set at the end of every epoch
_TRAINING = ("train", "finetune")


def steps(ckpt: Checkpoint, macs: int, params: int) -> list[dict[str, Any]]:
    """One dict per lineage entry, oldest first.

    ``macs`` / ``params``: the file's own, as counted now (the last step's result).
    Keys: index, command, settings, parent (file name), parent_sha256, time, resumed
    (times), macs_before/macs_after, params_before/params_after (ints or None),
    after_compress (True when *_after is what compress will leave, the file itself
    keeping its shapes), changes (whether the stage changed the architecture), top1,
    best_top1, best_epoch.
    """
    lineage = ckpt.lineage
    results = [dict(e.get("result") or {}) if isinstance(e.get("result"), dict) else {} for e in lineage]
    _from_old_metrics(lineage, results, ckpt.metrics or {})
    out = []
    for i, (entry, res) in enumerate(zip(lineage, results), start=1):
        options = entry.get("options") if isinstance(entry.get("options"), dict) else {}
        command = str(entry.get("command"))
        changes = _changes_architecture(command, options, res)
        resumed = entry.get("resumed")
        out.append(
            {
                "index": i,
                "command": command,
                "settings": settings(command, options, ckpt.extra if i == _last_prune(lineage) else None, entry),
                "parent": Path(str(entry["parent"])).name if entry.get("parent") else None,
                "parent_sha256": entry.get("parent_sha256"),
                "time": entry.get("time"),
                "resumed": len(resumed) if isinstance(resumed, list) else 0,
                "changes": changes,
                "after_compress": res.get("compressed") is False and res.get("macs_after") is not None,
                "macs_before": as_int(res.get("macs_before")),
                "macs_after": as_int(res.get("macs_after")),
                "params_before": as_int(res.get("params_before")),
                "params_after": as_int(res.get("params_after")),
                "top1": as_number(res.get("top1")),
                "best_top1": as_number(res.get("best_top1")),
                "best_epoch": as_int(res.get("best_epoch")),
            }
        )
    _fill_sizes(out, macs, params)
    return out


def _from_old_metrics(lineage: list[dict], results: list[dict], metrics: dict) -> None:
    """For files whose entries note no results: what the file's metrics say, put on the stage that measured it."""
    if not lineage or any(results):
        return
    last = len(lineage) - 1
    command = lineage[last].get("command")
    options = lineage[last].get("options") if isinstance(lineage[last].get("options"), dict) else {}
    if metrics.get("top1") is not None:
        # a compress carries its parent's metrics: the top-1 is the last training stage's
        own = command in _TRAINING or (command == "prune" and _epochs(options)) or (command == "compress" and options.get("block-by-block"))
        at = last if own else next((i for i in range(last, -1, -1) if lineage[i].get("command") in _TRAINING or (lineage[i].get("command") == "prune" and _epochs(lineage[i].get("options") or {}))), None)
        if at is not None:
            results[at].update({k: metrics.get(k) for k in ("top1", "best_top1", "best_epoch") if metrics.get(k) is not None})
    if metrics.get("macs_after_compress") is not None:  # a masked prune's prediction, carried by a later compress
        at = _last_prune(lineage)
        if at is not None:
            results[at - 1].update(
                macs_before=metrics.get("macs_before"), macs_after=metrics["macs_after_compress"], params_after=metrics.get("params_after_compress"), compressed=False
            )
    if metrics.get("macs_before_compress") is not None and command in ("compress", "prune"):
        results[last].update(macs_before=metrics["macs_before_compress"], macs_after=metrics.get("macs"), params_after=metrics.get("params"), compressed=True)


def _last_prune(lineage: list[dict]) -> Optional[int]:
    """1-based index of the last prune entry (the one the file's extra["prune"] describes), or None."""
    return next((i + 1 for i in range(len(lineage) - 1, -1, -1) if lineage[i].get("command") == "prune"), None)


def _changes_architecture(command: str, options: dict, res: dict) -> bool:
    if res.get("compressed") is True:
        return True
    return command == "compress" or (command == "prune" and bool(options.get("compress")))


def _fill_sizes(out: list[dict], macs: int, params: int) -> None:
    """MACs and params of the model each stage left, where a neighbour or the file itself says.

    A stage that changes no shapes (train, finetune, a masked prune) leaves what it got;
    the last stage left this file. Filled forward from what stages noted, then backward
    from the file.
    """
    for key in ("macs", "params"):
        before, after = f"{key}_before", f"{key}_after"
        left = [s[after] if s["changes"] else None for s in out]  # what the physical model was after each step
        got = [s[before] for s in out]
        for i, s in enumerate(out):  # forward
            if got[i] is None and i > 0:
                got[i] = left[i - 1]
            if not s["changes"]:
                left[i] = got[i]
        if out:
            left[-1] = left[-1] if left[-1] is not None else (macs if key == "macs" else params)
        for i in range(len(out) - 1, -1, -1):  # backward
            if not out[i]["changes"]:
                if got[i] is None:
                    got[i] = left[i]
                if left[i] is None:
                    left[i] = got[i]
            if i > 0 and left[i - 1] is None:
                left[i - 1] = got[i]
        for i, s in enumerate(out):
            s[before] = got[i]
            if s["changes"]:
                s[after] = left[i]
            elif not s["after_compress"]:
                s[after] = got[i]


def settings(command: str, options: dict, extra: Optional[dict], entry: dict) -> str:
    """The options that say what a stage did, in words: "geomedian, rate 0.4, layerwise channels"."""
    o = options
    parts: list[str] = []
    if command == "train":
        model = str(o.get("model") or "?")
        args = o.get("model-arg") or []
        parts.append(f"{model}({', '.join(map(str, args))})" if args else model)
        if o.get("dataset"):
            parts[-1] += f" on {o['dataset']}"
        parts.append(_epochs_lr(o))
        if o.get("arch-from"):
            parts.append(f"architecture of {Path(str(o['arch-from'])).name}" + (f", budget {o['budget']}" if o.get("budget") else ""))
        if o.get("sparsity-bn"):
            parts.append(f"L1 on BN scales {as_number(o['sparsity-bn']):g}" if as_number(o["sparsity-bn"]) is not None else "L1 on BN scales")
        if o.get("init"):
            parts.append(f"init {o['init']}")
    elif command == "finetune":
        parts.append(_epochs_lr(o))
    elif command == "prune":
        record = (extra or {}).get("prune") if isinstance((extra or {}).get("prune"), dict) else {}
        parts.append(str(o.get("method") or record.get("method") or "?"))
        parts.append(_rate(o, record))
        scope, granularity = o.get("scope") or record.get("scope"), o.get("granularity") or record.get("granularity")
        if scope or granularity:
            parts.append(" ".join(str(x) for x in (scope, f"{granularity}s" if granularity else None) if x))
        if _epochs(o):
            parts.append(f"{_epochs(o)} epoch{'' if _epochs(o) == 1 else 's'} while training" + (f", lr {as_number(o['lr']):g}" if as_number(o.get("lr")) is not None else ""))
        if o.get("compress"):
            parts.append("--compress")
    elif command == "compress":
        if o.get("block-by-block"):
            method = o.get("method") or "sensitivity pruner"
            rate = f" rate {as_number(o['rate']):g}" if as_number(o.get("rate")) is not None else ""
            done = entry.get("blocks_done")
            blocks = f", {len(done)}/{entry.get('blocks')} blocks" if isinstance(done, list) and entry.get("blocks") else ""
            parts.append(f"block by block: {method}{rate}{blocks}")
        else:
            parts.append("masked channels removed")
    teacher = entry.get("teacher")
    if isinstance(teacher, dict) and teacher.get("path"):
        parts.append(f"distilled from {Path(str(teacher['path'])).name}")
    return ", ".join(p for p in parts if p)


def _rate(o: dict, record: dict) -> str:
    if o.get("from-sensitivity"):
        return f"rates from {Path(str(o['from-sensitivity'])).name} (max drop {o.get('max-drop')})"
    if as_number(o.get("target-macs")) is not None:
        used = as_number(record.get("rate"))
        return f"target MACs -{as_number(o['target-macs']):.0%}" + (f" (rate {used:.3g})" if used is not None else "")
    parts = []
    if as_number(o.get("rate")) is not None:
        parts.append(f"rate {as_number(o['rate']):g}")
    if o.get("layer-rates") or o.get("layer-rate"):
        parts.append("per-layer rates")
    return " + ".join(parts) or "rate ?"


def _epochs(o: dict) -> int:
    e = o.get("epochs")
    return e if isinstance(e, int) and not isinstance(e, bool) else 0


def _epochs_lr(o: dict) -> str:
    n = _epochs(o)
    text = f"{n} epoch{'' if n == 1 else 's'}"
    if as_number(o.get("lr")) is not None:
        text += f", lr {as_number(o['lr']):g}"
    return text


def as_int(v: Any) -> Optional[int]:
    """A number from a file as an int; None for anything else (a file's values may be any plain data)."""
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def as_number(v: Any) -> Optional[float]:
    """A number from a file as a float; None for anything else."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
