"""Running a recipe: its stages in order, one run directory, resumable.

A run directory holds ``<stage>.pt`` for every stage that writes a checkpoint (with
train's and finetune's side files), ``run.json`` (what each stage ran with: resolved
options, the sha256 of its inputs and of its output, wall time), ``recipe.yaml`` (the
file as run), and the reports (prunecli.recipes.report).

Re-running the same command skips every stage whose output exists and whose options and
input checkpoints (by sha256) are unchanged, continues a train or finetune stage that was
interrupted (its checkpoint holds the last complete epoch: `prunecli.stages.train.resume`,
bit-identical on CPU), and runs the rest. ``start`` (``--from STAGE``) re-runs that stage
and every later one.

``smoke=True`` proves the wiring in seconds: every stage runs as written but on
synthetic 16x16 data with at most 10 classes (an ImageNet head of 1,000 would make the
synthetic test split 1,000 images), at most 2 epochs of 1 batch of 8, 1 calibration
batch, on the CPU and without latency timing (`smoke_options`); a block-by-block compress
does its first two blocks only (``--max-blocks 2``: the second already sees the smaller
network).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from prunecli._console import log
from prunecli.checkpoint import load_checkpoint, sha256_file
from prunecli.errors import CheckpointError
from prunecli.outputs import atomic_write, claim_output
from prunecli.recipes.schema import Recipe, RecipeError, Stage

STATE_FILE = "run.json"
SMOKE_IMAGE_SIZE = 16  # the smallest input every zoo model accepts (VGG and conv8 pool 4 times)
SMOKE_BATCH = 8
SMOKE_CLASSES = 10
SMOKE_EPOCHS = 2  # at most: two epochs exercise the epoch loop, the schedule and resume


@dataclass
class StageRun:
    stage: str
    command: str
    output: Optional[Path]
    seconds: float
    skipped: bool
    resumed: bool = False


@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    smoke: bool
    stages: list[StageRun] = field(default_factory=list)
    evaluations: dict[str, list] = field(default_factory=dict)  # evaluate stage -> its reports

    def output(self, stage: str) -> Path:
        return self.run_dir / f"{stage}.pt"


def smoke_options(stage: Stage, classes: dict[str, int]) -> dict[str, Any]:
    """``stage``'s options for a smoke run (see the module docstring).

    ``classes``: the number of classes of the recipe's train stages' datasets, by stage
    name, so a smoke model has the real model's head.
    """
    o = dict(stage.options)
    if stage.command == "train" and stage.inputs:  # a scratch baseline: its architecture and data come from its input
        o.pop("dataset", None)
        o.pop("data", None)
        o.pop("download", None)
    elif stage.command == "train":
        o.update({"dataset": "synthetic", "image-size": SMOKE_IMAGE_SIZE, "num-classes": max(2, min(classes.get(stage.name, 10), SMOKE_CLASSES))})
        o.pop("data", None)
        o.pop("download", None)
        args = dict(stage.config().model_args)
        for fetching in ("weights", "weights_backbone"):  # no downloads in a smoke run
            args.pop(fetching, None)
        o["model-arg"] = args
    trains = stage.command in ("train", "finetune") or (stage.command == "prune" and int(stage.config().epochs) > 0)
    if stage.command == "prune":
        o.update({"calib-batches": 1, "batch-size": SMOKE_BATCH, "device": "cpu", "workers": 0})
    if trains:
        o.update({"epochs": min(int(stage.config().epochs), SMOKE_EPOCHS), "steps-per-epoch": 1, "batch-size": SMOKE_BATCH})
        o.update({"device": "cpu", "workers": 0, "amp": False, "channels-last": False, "eval-every": 1, "milestones": None})
        o.pop("lr-warmup-epochs", None)
    if stage.command in ("finetune", "prune", "evaluate"):
        o.pop("dataset", None)
        o.pop("data", None)
        o.pop("download", None)
    if stage.command == "prune" and trains:
        cfg = stage.config()
        if cfg.rounds:
            o["rounds"] = min(cfg.rounds, SMOKE_EPOCHS)
        if cfg.prune_epochs:
            o["prune-epochs"] = min(cfg.prune_epochs, o["epochs"])
        o["reselect-every"] = 1
        if cfg.warmup_epochs:  # edge-popup's warm-up: one smoke epoch dense, the next one pruned
            o["warmup-epochs"] = min(cfg.warmup_epochs, o["epochs"] - 1)
    if stage.command in ("compress", "evaluate"):
        o.update({"latency": False, "device": "cpu"})
    if stage.command == "compress" and stage.config().block_by_block:  # one short epoch per block, on the smoke data
        cfg = stage.config()
        o.update({"unit-epochs": min(cfg.unit_epochs, 1), "unit-finetune-epochs": min(cfg.unit_finetune_epochs, 1), "steps-per-epoch": 1,
                  "batch-size": SMOKE_BATCH, "workers": 0, "calib-batches": 1, "max-blocks": 2})  # two blocks: the second sees the smaller net
        o.pop("dataset", None)
        o.pop("data", None)
    if stage.command == "evaluate":
        o.update({"workers": 0, "batch-size": 64})
    return o


def train_classes(recipe: Recipe) -> dict[str, int]:
    """Classes of each train stage's dataset (declared by the dataset registry or the options)."""
    from prunecli.data import dataset_shape

    out = {}
    for s in recipe.stages:
        if s.command == "train":
            cfg = s.config()
            declared = dataset_shape(cfg.dataset)
            out[s.name] = cfg.num_classes or (declared[2] if declared and declared[2] else 10)
    return out


def _read_state(run_dir: Path) -> dict[str, Any]:
    path = run_dir / STATE_FILE
    if not path.is_file():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged record only costs re-running stages
    if not isinstance(state, dict):
        return {}
    stages = state.get("stages")
    state["stages"] = {k: v for k, v in stages.items() if isinstance(v, dict)} if isinstance(stages, dict) else {}
    return state


def _write_state(run_dir: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=1, sort_keys=True, default=str)
    atomic_write(run_dir / STATE_FILE, lambda f: f.write(text.encode()))


def run_recipe(recipe: Recipe, run_dir: Path, *, smoke: bool = False, start: Optional[str] = None) -> RunResult:
    """Run ``recipe`` in ``run_dir`` (see the module docstring); returns what each stage did."""
    if start is not None and not any(s.name == start for s in recipe.stages):
        raise RecipeError(f"{recipe.path}: --from {start}: no such stage; stages: {', '.join(s.name for s in recipe.stages)}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(f"{run_dir}: exists and is not a folder")
    state = _read_state(run_dir)
    if isinstance(state.get("smoke"), bool) and state["smoke"] != smoke:
        raise RecipeError(
            f"{run_dir} holds a {'smoke' if state.get('smoke') else 'full'} run of this recipe; "
            f"use another -o for a {'smoke' if smoke else 'full'} run"
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipeError(f"{run_dir}: cannot create the run directory: {(e.strerror or str(e)).lower()}") from None
    with claim_output(run_dir / STATE_FILE, overwrite=True):  # one runner per run directory
        shutil.copyfile(recipe.path, run_dir / "recipe.yaml") if recipe.path.resolve() != (run_dir / "recipe.yaml").resolve() else None
        state.update(recipe=recipe.name, recipe_sha256=sha256_file(recipe.path), smoke=smoke, variables=recipe.variables)
        records: dict[str, Any] = state.setdefault("stages", {})
        classes = train_classes(recipe)
        result = RunResult(recipe, run_dir, smoke)
        rerun = False
        for stage in recipe.stages:
            rerun = rerun or stage.name == start
            options = smoke_options(stage, classes) if smoke else dict(stage.options)
            result.stages.append(_run_stage(stage, options, result, records, force=rerun, state=state))
        _write_state(run_dir, state)
    return result


def _inputs_sha(stage: Stage, result: RunResult) -> list[str]:
    return [sha256_file(result.output(name)) for name in stage.inputs]


def _run_stage(stage: Stage, options: dict[str, Any], result: RunResult, records: dict, *, force: bool, state: dict) -> StageRun:
    run_dir = result.run_dir
    output = result.output(stage.name) if stage.writes_checkpoint else None
    for name in stage.inputs:
        if not result.output(name).is_file():
            raise RecipeError(f"{result.recipe.path}: stage {stage.name!r}: its input {name}.pt is missing from {run_dir}")
    inputs_sha = _inputs_sha(stage, result)
    if stage.source is not None and not result.smoke:
        inputs_sha = [sha256_file(Path(stage.source).expanduser())] if Path(stage.source).expanduser().is_file() else ["missing"]
    plain_options = json.loads(json.dumps(options, default=str))
    record = records.get(stage.name) or {}
    same = record.get("options") == plain_options and record.get("inputs_sha256") == inputs_sha
    if not force and same and output is not None and output.is_file() and record.get("output_sha256") == sha256_file(output):
        log(f"[bold]{stage.name}[/bold]: up to date ({output.name}); skipped")
        return StageRun(stage.name, stage.command, output, float(record.get("seconds") or 0.0), skipped=True)

    resumable = not force and same and record.get("started") and output is not None and _interrupted(output, stage)
    if not resumable and output is not None:
        # a checkpoint left from other options or inputs must not be "continued" later: it goes
        # before the record says this stage started with the new ones
        for stale in (output, *_side_files(output)):
            stale.unlink(missing_ok=True)
    records[stage.name] = {"options": plain_options, "inputs_sha256": inputs_sha, "started": True}
    _write_state(run_dir, state)
    log(f"[bold]{stage.name}[/bold]: prunecli {stage.command}{' (continuing the interrupted run)' if resumable else ''}")
    started = time.perf_counter()
    reports = _execute(stage, options, result, output, resume=bool(resumable))
    seconds = float(record.get("seconds") or 0.0) * bool(resumable) + time.perf_counter() - started
    if stage.command == "evaluate":
        result.evaluations[stage.name] = reports
    records[stage.name] = {
        "options": plain_options,
        "inputs_sha256": inputs_sha,
        "output_sha256": sha256_file(output) if output is not None else None,
        "seconds": round(seconds, 3),
    }
    _write_state(run_dir, state)
    return StageRun(stage.name, stage.command, output, seconds, skipped=False, resumed=bool(resumable))


def _side_files(output: Path) -> list[Path]:
    from prunecli.stages.checkpoints import side_paths

    return list(side_paths(output).values())


def _import(stage: Stage, source: Path, output: Path, result: RunResult) -> None:
    """A train stage's ``from:``: copy an existing checkpoint in, if it is the architecture the stage trains."""
    from prunecli.data import dataset_shape

    ckpt = load_checkpoint(source)
    cfg = stage.config()
    where = f"{result.recipe.path}: stage {stage.name!r}: from {source}"
    if ckpt.model.name != cfg.model:
        raise RecipeError(f"{where}: its model is {ckpt.model.name!r}, the stage trains {cfg.model!r}")
    declared = dataset_shape(cfg.dataset) or (None, None, None)
    want = {
        "input channels": declared[0],
        "image size": cfg.image_size or declared[1],
        "classes": cfg.num_classes or declared[2],
    }
    have = {"input channels": ckpt.model.in_channels, "image size": ckpt.model.image_size, "classes": ckpt.model.num_classes}
    args = {k: v for k, v in cfg.model_args.items() if k not in ("weights", "weights_backbone")}
    kwargs = {k: v for k, v in ckpt.model.kwargs.items() if k not in ("weights", "weights_backbone")}
    for key, value in want.items():
        if value is not None and have[key] != value:
            raise RecipeError(f"{where}: its {key} is {have[key]}, the stage trains {value}")
    if args != kwargs:
        raise RecipeError(f"{where}: its model arguments are {kwargs}, the stage trains {args}")
    data = source.read_bytes()
    atomic_write(output, lambda f: f.write(data))
    log(f"{stage.name}: started from {source} (not trained here)")


def _interrupted(output: Path, stage: Stage) -> bool:
    """Whether ``output`` is a train/finetune/prune --epochs checkpoint with epochs still to run,
    or a block-by-block compress with blocks still to do."""
    if stage.command not in ("train", "finetune", "prune", "compress") or not output.is_file():
        return False
    try:
        ckpt = load_checkpoint(output)
    except CheckpointError:
        return False
    if stage.command == "compress":
        state = ckpt.extra.get("block_by_block")
        return isinstance(state, dict) and not state.get("complete")
    resume = ckpt.resume
    cfg = stage.config()
    total = cfg.total_epochs() if stage.command == "prune" else cfg.epochs
    return isinstance(resume, dict) and resume.get("stage") == stage.command and int(resume.get("epoch") or 0) < int(total)


def _execute(stage: Stage, options: dict[str, Any], result: RunResult, output: Optional[Path], *, resume: bool):
    """Run one stage through the same functions the commands call."""
    from prunecli.config import STAGE_CONFIGS

    inputs = [result.output(name) for name in stage.inputs]
    if stage.source is not None and not result.smoke:
        return _import(stage, Path(stage.source).expanduser(), output, result)
    cfg_cls = STAGE_CONFIGS[stage.command]
    fixed = {"output": str(output), "overwrite": True} if output is not None else {}
    if stage.command == "train" and inputs:  # a scratch baseline of an earlier stage's architecture
        fixed["arch-from"] = str(inputs[0])
    try:
        cfg = cfg_cls.from_options({**options, **fixed})
    except Exception as e:  # smoke overrides or --set values the recipe's own check did not see
        raise RecipeError(f"{result.recipe.path}: stage {stage.name!r}: {e}") from None
    if stage.command in ("train", "finetune"):
        from prunecli.stages import train as training

        if resume:
            return training.resume(output, {}, output=output)
        if stage.command == "train":
            return training.train(cfg, output=output)
        return training.finetune(inputs[0], cfg, output=output)
    if stage.command == "prune":
        from prunecli.stages.prune import prune_checkpoint
        from prunecli.stages.while_training import prune_while_training, resume_pruning

        if resume:
            return resume_pruning(output, {}, output=output)
        if cfg.training:
            return prune_while_training(inputs[0], cfg, output=output)
        return prune_checkpoint(inputs[0], cfg, output=output)
    if stage.command == "compress":
        from prunecli.stages.block_by_block import compress_blocks, resume_blocks
        from prunecli.stages.compress import compress_checkpoint

        if cfg.block_by_block:  # the Sensitivity Pruner and friends: resumable at the first unfinished block
            return resume_blocks(output, {}, output=output) if resume else compress_blocks(inputs[0], cfg, output=output)
        return compress_checkpoint(inputs[0], cfg, output=output)
    if stage.command == "evaluate":
        from prunecli.stages.evaluate import evaluate_checkpoints

        return evaluate_checkpoints(inputs, cfg)
    raise RecipeError(f"{result.recipe.path}: stage {stage.name!r}: command {stage.command!r} cannot run in a recipe")


def collect_rows(result: RunResult, *, device: str = "auto"):
    """Every checkpoint of the run evaluated side by side (`evaluate`), as report rows."""
    from prunecli.config import EvaluateConfig
    from prunecli.recipes.report import Row
    from prunecli.stages.evaluate import evaluate_checkpoints

    runs = [r for r in result.stages if r.output is not None]
    if not runs:
        return []
    cfg = EvaluateConfig(latency=not result.smoke, device="cpu" if result.smoke else device, layers=False, workers=0 if result.smoke else 4)
    log(f"measuring {len(runs)} checkpoint(s): test accuracy, MACs, params{', latency' if cfg.latency else ''}")
    reports = evaluate_checkpoints([r.output for r in runs], cfg)
    from prunecli.metrics.complexity import conv_linear_params
    from prunecli.stages.checkpoints import load_model

    counted = {r.stage: conv_linear_params(load_model(r.output)[1]) for r in runs}
    return [
        Row(
            stage=r.stage,
            command=r.command,
            checkpoint=str(r.output),
            top1=rep.top1,
            top5=rep.top5,
            macs=rep.macs,
            params=rep.params,
            conv_linear_params=counted[r.stage],
            latency_ms=rep.latency_ms,
            seconds=round(r.seconds, 3),
        )
        for r, rep in zip(runs, reports)
    ]
