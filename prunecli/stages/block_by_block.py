"""`compress --block-by-block`: choose, remove and recover one block at a time; resumable.

For each block of the network in forward order (prunecli.surgery.blocks: ResNet stages,
VGG layers, MobileNetV2 groups, ...):

1. plan: the method chooses the channels to remove among the block's pruning units only
   (the other units are skipped), at ``--rate``, on the network as the earlier blocks left it;
2. remove: the channels leave the model physically through their dependency groups, and
   the smaller model is checked against the masked one on a probe batch (the removal
   must not change what the network computes: max |diff| is reported);
3. recover: ``--unit-finetune-epochs E`` epochs of training (SGD at ``--lr``, x0.1 at half
   the epochs, as the Sensitivity Pruner fine-tunes a unit), then top-1 on the test split;
4. save: the output file is replaced atomically by a valid prunecli checkpoint of the
   network so far. Its ``extra["block_by_block"]`` says which blocks are done (and with
   what options), and while a block trains, the file also holds the trainer's state
   after every epoch.

``compress --resume OUT`` continues at the first unfinished block (inside its training,
when an epoch of it is saved). Each block's training is seeded by ``--seed`` plus the
block's index, so a resumed run ends with the same network as an uninterrupted one (CPU).

The checkpoint is a compressed one: its structure is the base's plus every block's removal
history, so it rebuilds from the file alone; its lineage has one ``compress`` entry.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from prunecli._console import log
from prunecli.checkpoint import Checkpoint, derive, load_checkpoint, save_checkpoint, with_result
from prunecli.config import CompressConfig, FinetuneConfig, PruneConfig
from prunecli.criteria import Criterion, criterion_class, get_criterion, hyperparameters
from prunecli.data import DataBundle
from prunecli.engine.callbacks import KillDuringEpoch
from prunecli.engine.distributed import resolve_device
from prunecli.engine.trainer import FitState, Trainer
from prunecli.errors import CheckpointError, OptionError, PruneCliError
from prunecli.metrics.complexity import count_complexity
from prunecli.metrics.latency import measure_latencies
from prunecli.models import example_input
from prunecli.outputs import claim_output
from prunecli.config.prune import Selection
from prunecli.stages.checkpoints import data_for_checkpoint, load_model, rebuild_model
from prunecli.surgery.blocks import Block, find_blocks
from prunecli.surgery.equivalence import difference, outputs, probe_batch
from prunecli.surgery.masks import apply_masks, carry
from prunecli.surgery.plan import Plan, UnitPlan
from prunecli.surgery.pruner import Pruner

SENSITIVITY = "sensitivity"  # the Sensitivity Pruner (prunecli.algorithms.sensitivity_pruner), not a criterion
KILL_AFTER_BLOCK_ENV = "PRUNECLI_KILL_AFTER_BLOCK"  # testing hook: SIGKILL once block N (1-based) is saved
STATE = "block_by_block"
# options that define what a block-by-block run removes: a resume cannot change them
_FIXED = ("method", "rate", "scope", "units", "unit_finetune_epochs", "unit_epochs", "layersort", "snip_on", "lr", "momentum",
          "weight_decay", "steps_per_epoch", "calib_batches", "seed", "dataset", "batch_size")


@dataclass
class BlockRow:
    """One block's line of the report."""

    block: str
    units: int  # pruning units the block owns
    channels_before: int
    channels_after: int
    macs: int  # of the whole network after this block
    params: int
    top1: Optional[float]
    seconds: float
    max_abs_diff: float
    strategy_top1: Optional[float] = None  # sensitivity: the best epoch's top-1 with the hard indicator

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class BlockReport:
    output: Path
    method: str
    rate: float
    rows: list[BlockRow]
    macs_before: int  # the original network
    macs_after: int
    params_before: int
    params_after: int
    latency_ms_before: Optional[float] = None
    latency_ms_after: Optional[float] = None
    latency_batch_size: int = 0
    max_abs_diff: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "method": self.method,
            "rate": self.rate,
            "blocks": [r.to_json() for r in self.rows],
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "latency_ms_before": self.latency_ms_before,
            "latency_ms_after": self.latency_ms_after,
            "latency_batch_size": self.latency_batch_size,
            "max_abs_diff": self.max_abs_diff,
            "notes": self.notes,
        }


def _criterion(cfg: CompressConfig) -> Optional[Criterion]:
    if cfg.method == SENSITIVITY:
        if not cfg.unit_epochs:
            raise OptionError("{method} sensitivity learns its strategy while training: give {unit_epochs} N (the reference: 8)")
        return None
    if cfg.unit_epochs:
        raise OptionError("{unit_epochs} trains the Sensitivity Pruner's strategy: it needs {method} sensitivity (use {unit_finetune_epochs})")
    try:
        cls = criterion_class(cfg.method)
    except PruneCliError as e:
        raise OptionError(f"{{method}} {e}") from None
    if cls.learned:
        raise OptionError(f"{{method}} {cfg.method} learns its mask while training: run prune --method {cfg.method} --epochs N, then compress")
    if "channel" not in cls.granularities:
        raise OptionError(f"{{method}} {cfg.method} scores single weights: block-by-block compression removes channels")
    hparams = {"seed": cfg.seed} if "seed" in hyperparameters(cls) else {}
    return get_criterion(cfg.method, **hparams)


def compress_blocks(source: Path, cfg: CompressConfig, *, output: Path) -> BlockReport:
    """Compress ``source`` block by block into ``output`` (see the module docstring)."""
    criterion = _criterion(cfg)
    with claim_output(Path(output), overwrite=cfg.overwrite):
        base, model = load_model(Path(source), device=resolve_device(cfg.device), allow_nonfinite=cfg.allow_nonfinite)
        run = _Run(cfg, criterion, base, model, Path(output))
        return run.go()


def resume_blocks(path: Path, overrides: Mapping[str, Any], *, output: Optional[Path] = None) -> BlockReport:
    """``compress --resume``: continue a block-by-block run at its first unfinished block."""
    ckpt = load_checkpoint(Path(path))
    state = ckpt.extra.get(STATE)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or not isinstance(state.get("base"), dict):
        raise CheckpointError(f"{path}: not a block-by-block compress run (nothing to resume)")
    try:
        before = CompressConfig.from_options(state["config"])
        # --max-blocks applies to one invocation: a resume without it runs to the last block
        cfg = CompressConfig.from_options({**state["config"], "max_blocks": None, **overrides})
    except OptionError as e:
        raise CheckpointError(f"{path}: its block-by-block state holds invalid options ({e})") from None
    for name in _FIXED:
        if getattr(cfg, name) != getattr(before, name):
            raise OptionError(f"{{{name}}} {getattr(cfg, name)!r}: {path} continues a run of {name} {getattr(before, name)!r}; a resumed run keeps it")
    criterion = _criterion(cfg)
    output = Path(output or path)
    overwrite = bool(CompressConfig.check_options(overrides).get("overwrite", False))
    with claim_output(output, overwrite=overwrite, resumes=Path(path)):
        model = rebuild_model(ckpt, allow_nonfinite=cfg.allow_nonfinite).to(resolve_device(cfg.device))
        apply_masks(model, ckpt.masks, where=str(path))
        run = _Run(cfg, criterion, None, model, output, resumed_from=ckpt)
        return run.go()


class _Run:
    """One block-by-block run (fresh or resumed): the loop over blocks and what it saves."""

    def __init__(self, cfg: CompressConfig, criterion: Criterion, base: Optional[Checkpoint], model: torch.nn.Module, output: Path, *, resumed_from: Optional[Checkpoint] = None):
        self.cfg, self.criterion, self.model, self.output = cfg, criterion, model, output
        self.device = resolve_device(cfg.device)
        if resumed_from is not None:
            self.ckpt = replace(resumed_from, path=None)
            self.state = dict(resumed_from.extra[STATE])
            self.spec = resumed_from.model
        else:
            assert base is not None
            self.spec = base.model
            self.state = {"config": cfg.to_dict(), "base": {"structure_steps": len(base.structure or [])}, "blocks": None, "done": 0, "rows": []}
            extra = dict(base.extra)
            extra.pop("rewind", None)  # rewind weights have the uncompressed shapes
            self.ckpt = derive(base, "compress", cfg.to_options(), state_dict={}, extra=extra, metrics={})
            self.ckpt = replace(self.ckpt, path=None)
        self.example = example_input(self.spec, device=self.device)
        self.shape = tuple(self.example.shape[1:])
        self._bundle: Optional[DataBundle] = None

    # -- data

    def bundle(self) -> Optional[DataBundle]:
        """The dataset for training and top-1, or None when the checkpoint records none and none is given."""
        if self._bundle is None and (self.ckpt.dataset is not None or self.cfg.dataset is not None):
            self._bundle = data_for_checkpoint(self.ckpt, dataset=self.cfg.dataset, data=self.cfg.data, seed=self.cfg.seed)
        return self._bundle

    def calibration(self):
        if self.criterion is None or not self.criterion.needs_data:
            return None
        from prunecli.stages.prune import calibration_batches

        pcfg = PruneConfig(method=self.cfg.method, rate=self.cfg.rate, dataset=self.cfg.dataset, data=self.cfg.data, seed=self.cfg.seed,
                           batch_size=self.cfg.batch_size, workers=self.cfg.workers, calib_batches=self.cfg.calib_batches)
        return calibration_batches(self.ckpt, pcfg, self.device)

    # -- the loop

    def go(self) -> BlockReport:
        cfg = self.cfg
        if "original" not in self.state:
            dense = count_complexity(self.model, self.shape)
            self.state["original"] = {"macs": dense.macs, "params": dense.params}
        pruner = self._pruner()
        if self.state.get("blocks") is None:
            blocks = find_blocks(self.model, pruner.units, cfg.units)
            if not blocks:
                raise OptionError(f"{{units}} {cfg.units}: no block of {self.spec.name} owns a whole pruning unit")
            self.state["blocks"] = [_block_to_plain(b) for b in blocks]
        blocks = [_block_from_plain(b) for b in self.state["blocks"]]
        reference = copy.deepcopy(self.model) if self.state["done"] == 0 and not self.ckpt.resume else None
        self._reference = reference
        total = len(blocks)
        end = total if self.cfg.max_blocks is None else min(total, self.cfg.max_blocks)  # --max-blocks: stop early, resumable
        for k in range(int(self.state["done"]), end):
            self._block(k, blocks[k])
            kill = os.environ.get(KILL_AFTER_BLOCK_ENV, "")
            if kill.strip().isdigit() and int(kill) == k + 1:
                import signal

                os.kill(os.getpid(), signal.SIGKILL)
        return self._finish(reference)

    def _pruner(self) -> Pruner:
        calibration = self.calibration() if self.criterion is not None else None
        return Pruner(self.model, self.criterion, example_input=self.example, calibration=calibration, name=self.spec.name)

    def _resume_phase(self, k: int) -> Optional[str]:
        """Where a resumed run stopped inside block ``k``: "strategy" (SP), "finetune", or None."""
        r = self.ckpt.resume
        if r is None or int(r.get("block", -1)) != k:
            return None
        return str(r.get("phase") or "finetune")

    def _block(self, k: int, block: Block) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        phase = self._resume_phase(k)
        row = self.state.get("current") if phase == "finetune" else None
        if phase != "finetune":
            pruner = self._pruner()
            owned = [u for u in pruner.units if block.owns(u)]
            before = sum(u.channels for u in owned)
            if cfg.method == SENSITIVITY:
                plan, extra_row = self._sensitivity_plan(k, block, pruner, resume=self.ckpt.resume if phase == "strategy" else None)
            else:
                outside = sorted({n for u in pruner.units if not block.owns(u) for n in u.producer_names})
                pruner.selection = Selection(rate=cfg.rate, scope=cfg.scope, skip=outside, protect="output", count_rule=self.criterion.count_rule)
                if getattr(self.criterion, "reconstructs", False):
                    # ThiNet / CP: targets from the starting network, inputs from the network as the
                    # earlier blocks left it; the next layers' weights are refitted in place
                    from prunecli.algorithms import get_algorithm

                    plan, extra_row = get_algorithm("reconstruction").plan(pruner, self._original()), {}
                else:
                    plan, extra_row = pruner.plan(), {}
            self.ckpt = replace(self.ckpt, resume=None)
            diff = 0.0
            if plan.pruned:
                probe = probe_batch(self.spec, device=self.device)
                masked = pruner.mask(plan)
                diff, same = difference(outputs(self.model, probe), outputs(masked.compressed, probe))
                if not same:
                    raise PruneCliError(f"block {block.name}: the compressed model differs from the masked one (max |diff| {diff:.3g}); {self.output} keeps block {k}")
                self.model = masked.compressed
                # the structure grows by this removal; weight-level masks of the base shrink with it
                self.ckpt = replace(
                    self.ckpt,
                    structure=list(self.ckpt.structure or []) + masked.history,
                    masks=carry(self.ckpt.masks, masked.kept),
                )
                apply_masks(self.model, self.ckpt.masks)
            after = before - sum(len(p.prune) for p in plan.pruned)
            row = {"block": block.name, "units": len(owned), "channels_before": before, "channels_after": after, "max_abs_diff": diff,
                   "t0": time.perf_counter() - t0, **extra_row}  # seconds spent choosing and removing
            self.state["current"] = row
        top1, trained_seconds = self._recover(k, block)
        c = count_complexity(self.model, self.shape)
        seconds = float(row.get("t0", 0.0)) + trained_seconds
        done = BlockRow(block=row["block"], units=row["units"], channels_before=row["channels_before"], channels_after=row["channels_after"],
                        macs=c.macs, params=c.params, top1=top1, seconds=round(seconds, 3), max_abs_diff=row["max_abs_diff"],
                        strategy_top1=row.get("strategy_top1"))
        self.state["rows"] = list(self.state["rows"]) + [done.to_json()]
        self.state["done"] = k + 1
        self.state.pop("current", None)
        self._save(resume=None, metrics={"macs": c.macs, "params": c.params, **({"top1": top1} if top1 is not None else {})})
        top = f", top-1 {top1:.2f}%" if top1 is not None else ""
        log(f"block {k + 1}/{len(self.state['blocks'])} {block.name}: channels {done.channels_before} -> {done.channels_after}, "
            f"MACs {c.macs / max(1, self.state['original']['macs']):.1%} of the original{top} ({seconds:.1f}s)")

    def _sensitivity_plan(self, k: int, block: Block, pruner: Pruner, *, resume: Optional[dict]) -> tuple[Plan, dict]:
        """The Sensitivity Pruner on block ``k``: train its strategy (resumable), then the channels its indicator drops."""
        from prunecli.algorithms.sensitivity_pruner import SPConfig, Snip, block_layers, train_block

        cfg = self.cfg
        bundle = self.bundle()
        if bundle is None:
            raise OptionError("{method} sensitivity learns from data: the checkpoint records no dataset; pass {dataset}")
        layers = block_layers(pruner.units, block.owns, pruner.output_layer)
        if not layers:
            return Plan("channel", []), {}
        if cfg.snip_on == "reinit":
            net, net_units, net_output = self._snip_reference()
        else:
            net, net_units, net_output = self.model, pruner.units, pruner.output_layer
        snip = Snip(net, net_units, net_output, [l.root for l in layers], keep=1.0 - cfg.rate, layersort=cfg.layersort, reinit=cfg.snip_on == "reinit")
        sp = SPConfig(rate=cfg.rate, epochs=cfg.unit_epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                      weight_decay=cfg.weight_decay, layersort=cfg.layersort, steps_per_epoch=cfg.steps_per_epoch, seed=cfg.seed + k, workers=cfg.workers)

        def save(sp_state: dict) -> None:
            self._save(resume={"stage": "compress", "block": k, "phase": "strategy", "epoch": int(sp_state["epoch"]), "config": cfg.to_dict(),
                               "optimizer": sp_state["optimizer"], "scheduler": {}, "sp": sp_state})

        result = train_block(self.model, layers, snip, bundle, sp, device=self.device, resume=(resume or {}).get("sp"), save=save, log=log)
        log(f"block {k + 1} {block.name}: sensitivity pruner time: " + ", ".join(f"{k_} {v:.1f}s" for k_, v in result.seconds.items()))
        plans = []
        for layer in layers:
            kept = result.kept[layer.root]
            if not bool(kept.any()):  # a layer never loses every channel: keep its most-voted one
                kept = torch.zeros_like(kept)
                kept[int(torch.argmax(result.votes[layer.root]))] = True
            plans.append(UnitPlan(layer.unit, "prune", rate=cfg.rate, prune=torch.nonzero(~kept).flatten()))
        return Plan("channel", plans, rate=cfg.rate), {"strategy_top1": result.best_top1, "sp_seconds": result.seconds}

    def _snip_reference(self):
        """The run's starting architecture (fresh weights) for ``--snip-on reinit``, traced once."""
        if getattr(self, "_snip", None) is None:
            from prunecli.algorithms.sensitivity_pruner import snip_network
            from prunecli.models import rebuild

            steps = int(self.state["base"]["structure_steps"])
            ref = rebuild(self.spec, converters=self.ckpt.converters, structure=list(self.ckpt.structure or [])[:steps], where="the starting architecture")
            net = snip_network(ref).to(self.device)
            p = Pruner(net, example_input=self.example, name=self.spec.name)
            self._snip = (net, p.units, p.output_layer)
        return self._snip

    def _recover(self, k: int, block: Block) -> tuple[Optional[float], float]:
        """Train the block's result ``--unit-finetune-epochs`` epochs (resumable), then top-1."""
        cfg = self.cfg
        bundle = self.bundle()
        if bundle is None:
            if cfg.unit_finetune_epochs:
                raise OptionError(f"{{unit_finetune_epochs}}: {self.ckpt.lineage[0].get('parent') if self.ckpt.lineage else 'the checkpoint'} records no dataset; pass {{dataset}}")
            return None, 0.0
        epochs = cfg.unit_finetune_epochs
        tcfg = FinetuneConfig(
            epochs=epochs,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            device=cfg.device,
            seed=cfg.seed + k,  # each block's data order is its own, and the same on resume
            steps_per_epoch=cfg.steps_per_epoch,
            workers=cfg.workers,
            schedule="multistep" if epochs >= 2 else "constant",
            milestones=[epochs // 2] if epochs >= 2 else [],
            eval_every=max(1, epochs),
        )
        resume = None
        if self.ckpt.resume is not None and int(self.ckpt.resume.get("block", -1)) == k:
            resume = {key: v for key, v in self.ckpt.resume.items() if key not in ("block", "stage", "config", "phase")}

        def save(state: FitState) -> None:
            if state.epoch < epochs:  # a finished block is saved by the loop, with its row
                self.ckpt = replace(self.ckpt, resume=None)
                self._save(resume={"stage": "compress", "block": k, "phase": "finetune", "config": cfg.to_dict(), **state.resume_state()}, model=state.model)

        callbacks = [cb for cb in (KillDuringEpoch.from_env(),) if cb is not None]
        t0 = time.perf_counter()
        state = Trainer(tcfg, device=self.device).fit(
            self.model, bundle, callbacks, masks=self.ckpt.masks, save=save if epochs else None, resume=resume, label=f"[bold]block {k + 1}[/bold] {block.name}"
        )
        self.ckpt = replace(self.ckpt, resume=None)
        return (state.last_eval.top1 if state.last_eval is not None else None), time.perf_counter() - t0

    def _save(self, *, resume: Optional[dict], metrics: Optional[dict] = None, model: Optional[torch.nn.Module] = None) -> None:
        extra = dict(self.ckpt.extra)
        extra[STATE] = dict(self.state)
        # the lineage's compress entry names the blocks done so far (of how many)
        lineage = [dict(e) for e in self.ckpt.lineage]
        if lineage:
            lineage[-1]["blocks_done"] = [r["block"] for r in self.state["rows"]]
            lineage[-1]["blocks"] = len(self.state.get("blocks") or [])
        self.ckpt = replace(
            self.ckpt,
            lineage=lineage,
            state_dict=(model or self.model).state_dict(),
            extra=extra,
            resume=resume,
            metrics={**self.ckpt.metrics, **(metrics or {})},
        )
        save_checkpoint(self.ckpt, self.output)

    def _finish(self, reference: Optional[torch.nn.Module]) -> BlockReport:
        cfg = self.cfg
        rows = [BlockRow(**r) for r in self.state["rows"]]
        after = count_complexity(self.model, self.shape)
        original = self.state["original"]
        report = BlockReport(
            output=self.output,
            method=cfg.method,
            rate=cfg.rate,
            rows=rows,
            macs_before=original["macs"],
            macs_after=after.macs,
            params_before=original["params"],
            params_after=after.params,
            latency_batch_size=cfg.batch_size,
            max_abs_diff=max((r.max_abs_diff for r in rows), default=0.0),
        )
        self.state["complete"] = int(self.state["done"]) >= len(self.state["blocks"])
        if not self.state["complete"]:
            report.notes.append(
                f"--max-blocks: {self.state['done']} of {len(self.state['blocks'])} blocks done; "
                f"`prunecli compress --resume {self.output}` (with a larger --max-blocks, or none) continues"
            )
        metrics = {"macs": after.macs, "params": after.params, "macs_before_compress": original["macs"], "max_abs_diff": report.max_abs_diff}
        if rows and rows[-1].top1 is not None:
            metrics["top1"] = rows[-1].top1
        self.ckpt = with_result(
            self.ckpt, macs_before=original["macs"], params_before=original.get("params"), macs_after=after.macs, params_after=after.params,
            compressed=True, top1=metrics.get("top1"),
        )
        self._save(resume=None, metrics=metrics)
        if cfg.latency:
            dense = reference if reference is not None else getattr(self, "_reference", None) or self._parent()
            if dense is None:
                report.notes.append("latency not measured: the run was resumed and its parent checkpoint is gone or changed")
            else:
                lb, la = measure_latencies([dense.eval(), self.model.eval()], self.shape, batch_size=cfg.batch_size, device=self.device, repeats=cfg.repeats, threads=cfg.threads)
                report.latency_ms_before, report.latency_ms_after = lb.median_ms, la.median_ms
        return report

    def _original(self) -> torch.nn.Module:
        """The starting network with its weights (the reconstruction methods' targets)."""
        if getattr(self, "_reference", None) is None:
            self._reference = self._parent()
            if self._reference is None:
                raise PruneCliError(f"{self.cfg.method} reconstructs against the starting network: its file (the lineage's parent) is gone or changed")
        return self._reference

    def _parent(self) -> Optional[torch.nn.Module]:
        """A resumed run's starting network, from the parent file its lineage names (if unchanged)."""
        from prunecli.checkpoint import sha256_file

        entry = self.ckpt.lineage[-1] if self.ckpt.lineage else {}
        parent = entry.get("parent")
        if not parent or not Path(parent).is_file() or sha256_file(Path(parent)) != entry.get("parent_sha256"):
            return None
        return load_model(Path(parent), device=self.device)[1]


def _block_to_plain(b: Block) -> dict[str, Any]:
    return {"name": b.name, "prefixes": list(b.prefixes), "globs": list(b.globs), "unit_root": b.unit_root}


def _block_from_plain(d: Mapping[str, Any]) -> Block:
    try:
        return Block(name=str(d["name"]), prefixes=[str(p) for p in d.get("prefixes") or []], globs=[str(g) for g in d.get("globs") or []],
                     unit_root=None if d.get("unit_root") is None else str(d["unit_root"]))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"damaged block-by-block state ({type(e).__name__})") from None

