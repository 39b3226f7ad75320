"""Options of the commands that run training epochs: `train` and `finetune`.

`TrainingOptions` is what the Trainer (prunecli.engine.trainer) reads: optimisation,
schedule and runtime. `TrainConfig` adds the model, the data and the outputs of
``prunecli train``; `FinetuneConfig` the data and outputs of ``prunecli finetune`` (the
model comes from the checkpoint).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Optional

from prunecli.config._base import MAX_BATCH, MAX_SEED, PANEL_DATA, PANEL_MODEL, PANEL_OPT, PANEL_OUT, PANEL_RUN, StageConfig, allow_nonfinite_option, option, overwrite_option
from prunecli.errors import OptionError
from prunecli.limits import MAX_CLASSES, MAX_IMAGE_SIZE

MAX_EPOCHS = 100_000


class Optimizer(str, enum.Enum):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"


class Schedule(str, enum.Enum):
    constant = "constant"
    step = "step"
    multistep = "multistep"
    cosine = "cosine"


class Init(str, enum.Enum):
    """Weight initialisations of ``train --init`` (hidden-networks' and seed 000's set)."""

    kaiming_normal = "kaiming-normal"  # He et al. 2015, fan_in, ReLU gain
    kaiming_uniform = "kaiming-uniform"
    xavier_normal = "xavier-normal"  # Glorot & Bengio 2010
    xavier_uniform = "xavier-uniform"
    signed_constant = "signed-constant"  # +-(ReLU gain / sqrt(fan_in)), random signs (Ramanujan et al.)
    unsigned_constant = "unsigned-constant"  # +(ReLU gain / sqrt(fan_in))


class Budget(str, enum.Enum):
    """How long a scratch run of a compressed architecture trains (Liu et al., arXiv:1810.05270)."""

    epochs = "epochs"  # Scratch-E: as many epochs as asked
    compute = "compute"  # Scratch-B: as much computation as the dense model's epochs (at most 2x the epochs)


@dataclass(kw_only=True)
class TrainingOptions(StageConfig):
    """Optimisation and runtime options of every stage that trains."""

    # SGD with momentum 0.9 and weight decay 1e-4, as in the papers' CIFAR recipes, but lr
    # 0.01 rather than their 0.1: the BatchNorm-free conv nets (conv2-8, lenet) diverge at
    # 0.1 from He-normal init. Paper recipes set their own lr.
    # at most 100,000: a bound that catches a typo (--epochs 1e30 from a script) without limiting a real run
    epochs: int = option(15, help="Epochs to train (0 writes the model as initialised).", panel=PANEL_OPT, min=0, max=MAX_EPOCHS)
    batch_size: int = option(128, help="Batch size (the global batch under torchrun).", panel=PANEL_RUN, flags=("-b",), min=1, max=MAX_BATCH)
    optimizer: Optimizer = option(Optimizer.sgd, help="Optimizer.", panel=PANEL_OPT)
    # upper bounds: past them training only diverges (and past 3.4e38 the optimizer's float32 overflows)
    lr: float = option(0.01, help="Base learning rate.", panel=PANEL_OPT, min=0.0, max=1000.0)
    momentum: float = option(0.9, help="SGD momentum.", panel=PANEL_OPT, min=0.0, max=1.0)
    nesterov: bool = option(False, help="Nesterov momentum (SGD).", panel=PANEL_OPT)
    weight_decay: float = option(1e-4, help="Weight decay.", panel=PANEL_OPT, flags=("--wd",), min=0.0, max=1.0)
    # per-iteration cosine decay to 0 over the run: no milestones to choose for short runs
    schedule: Schedule = option(Schedule.cosine, help="Learning-rate schedule (per iteration).", panel=PANEL_OPT)
    step_size: int = option(30, help="Epochs between decays (step schedule).", panel=PANEL_OPT, min=1, max=MAX_EPOCHS)
    # empty: 50% and 75% of the run, the papers' 80/120 of 160 epochs
    milestones: list[int] = option(
        default_factory=list, help="Epochs of the multistep decays, e.g. 80,120 (default: 50% and 75% of the run).", panel=PANEL_OPT
    )
    gamma: float = option(0.1, help="Decay factor (step, multistep).", panel=PANEL_OPT, min=0.0, max=1000.0)
    # --lr-warmup-epochs: prune's --warmup-epochs is the learned-score warm-up (epochs before any pruning)
    lr_warmup_epochs: float = option(0.0, help="Linear learning-rate warm-up length in epochs.", panel=PANEL_OPT, min=0.0, max=MAX_EPOCHS)
    label_smoothing: float = option(0.0, help="Label smoothing.", panel=PANEL_OPT, min=0.0, max=1.0)
    shuffle_labels: bool = option(
        False, help="Train on randomly permuted labels (expressivity test), seeded.", panel=PANEL_OPT, negatable=False
    )
    device: str = option("auto", help="auto, cpu, cuda or cuda:N (auto: this rank's GPU if any).", panel=PANEL_RUN)
    # None: on with CUDA (bf16 where supported), off on CPU where it is slower
    amp: Optional[bool] = option(None, help="Mixed precision (default: on with CUDA, off on CPU).", panel=PANEL_RUN)
    channels_last: Optional[bool] = option(None, help="channels_last memory format (default: on with CUDA).", panel=PANEL_RUN)
    # in-memory datasets need no workers; image folders decode JPEGs in these processes
    workers: int = option(4, help="DataLoader workers for image-folder datasets.", panel=PANEL_RUN, min=0)
    # torch.manual_seed takes any 64-bit value; the data order derives from it (prunecli.data.loaders)
    seed: int = option(0, help="Seed of every random choice; on CPU a run is reproducible.", panel=PANEL_RUN, min=0, max=MAX_SEED)
    # 0: off. The paper uses 1e-4 for VGG and 1e-5 for ResNet-164 / DenseNet-40
    sparsity_bn: float = option(
        0.0, help="Network Slimming: L1 penalty LAMBDA on every BatchNorm scale (adds LAMBDA*sign(gamma) to its gradient).", panel=PANEL_OPT, min=0.0, max=1.0, metavar="LAMBDA"
    )
    # None: the whole training split; a smoke run of a recipe trains one batch per epoch
    steps_per_epoch: Optional[int] = option(
        None, help="Train at most N batches per epoch (quick checks, recipe smoke runs).", panel=PANEL_RUN, min=1
    )
    eval_every: int = option(1, help="Epochs between test evaluations (the last epoch is always evaluated).", panel=PANEL_RUN, min=1)
    resume: Optional[str] = option(
        None, help="Continue an interrupted run from this checkpoint (its options; flags given override).", panel=PANEL_RUN, path=True
    )
    output: Optional[str] = option(
        None, help="Checkpoint to write (its path is the only thing printed on stdout).", panel=PANEL_OUT, flags=("-o",), path=True
    )
    overwrite: bool = overwrite_option()
    allow_nonfinite: bool = allow_nonfinite_option()

    def validate(self) -> None:
        super().validate()
        if any(m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            raise OptionError(f"{{milestones}} {','.join(map(str, self.milestones))}: epochs must be >= 1 and increasing")

    def resolved_milestones(self) -> list[int]:
        return list(self.milestones) or [int(self.epochs * 0.5), int(self.epochs * 0.75)]


@dataclass(kw_only=True)
class TrainConfig(TrainingOptions):
    """``prunecli train``: a model from scratch on a dataset."""

    command = "train"

    model: str = option("conv4", help="Model name (prunecli list models), tv:NAME, or file.py:factory.", panel=PANEL_MODEL, flags=("-m",))
    model_args: dict[str, Any] = option(
        default_factory=dict, help="Model constructor argument KEY=VALUE (repeatable).", panel=PANEL_MODEL, key="model-arg"
    )
    dataset: str = option("digits", help="Dataset name (prunecli list datasets).", panel=PANEL_DATA)  # the embedded offline default
    data: Optional[str] = option(
        None, help="Dataset root folder (CIFAR/MNIST in torchvision's layout; train/ and val/ for image folders).", panel=PANEL_DATA, path=True
    )
    download: bool = option(False, help="Download CIFAR/MNIST into --data when online.", panel=PANEL_DATA, negatable=False)
    image_size: Optional[int] = option(
        None, help="Resize images to this size (default: the dataset's).", panel=PANEL_DATA, min=1, max=MAX_IMAGE_SIZE
    )
    num_classes: Optional[int] = option(None, help="Classes of the synthetic dataset.", panel=PANEL_DATA, min=2, max=MAX_CLASSES)
    # None: the model's own initialisation (each zoo model documents its own)
    init: Optional[Init] = option(
        None,
        help="Initialise every conv and linear weight (biases to 0): kaiming-normal, kaiming-uniform, xavier-normal, "
        "xavier-uniform, signed-constant, unsigned-constant (hidden-networks' initialisations). Default: the model's own.",
        panel=PANEL_MODEL,
    )
    # None: the model's own initialisation (gamma = 1); Network Slimming starts from 0.5
    bn_init: Optional[float] = option(None, help="Initialise every BatchNorm scale to this value (Network Slimming: 0.5).", panel=PANEL_MODEL, min=0.0, max=10.0)
    # None: nothing kept. Lottery tickets rewind to the initialisation (0) or an early epoch
    save_rewind: Optional[int] = option(
        None, help="Keep the weights of epoch K (0: the initialisation) in the checkpoint, for prune --rounds --rewind.", panel=PANEL_OUT, min=0, max=MAX_EPOCHS
    )
    # Liu et al.'s scratch baselines (prunecli.stages.scratch): the architecture, dataset and
    # data root come from this checkpoint, the weights from a fresh initialisation
    arch_from: Optional[str] = option(
        None,
        help="Train the compressed architecture of this checkpoint from a fresh init (Rethinking's scratch baselines; "
        "its data by default; its weight-level masks stay enforced).",
        panel=PANEL_MODEL,
        path=True,
    )
    # None: epochs (Scratch-E) when --arch-from is given
    budget: Optional[Budget] = option(
        None,
        help="With --arch-from (default: epochs):\n\n"
        "epochs: Scratch-E, train --epochs epochs.\n\n"
        "compute: Scratch-B, train --epochs x (dense MACs / pruned MACs) epochs, at most 2x --epochs.",
        panel=PANEL_OPT,
    )

    def validate(self) -> None:
        super().validate()
        check_scratch_options(self)


# what --arch-from decides: the architecture (and with it the input size and classes) is the file's
SCRATCH_ARCH_FIELDS = ("model", "model_args", "image_size", "num_classes")


def check_scratch_options(cfg: TrainConfig) -> None:
    """``budget`` only with ``arch_from``; with it, no option that would choose another architecture.

    A field left at its default counts as not given (a config cannot tell ``--model conv4``
    from the default).
    """
    if cfg.arch_from is None:
        if cfg.budget is not None:
            raise OptionError(f"{{budget}} {cfg.budget.value}: a scratch budget needs {{arch_from}} (the compressed checkpoint to train anew)")
        return
    if not str(cfg.arch_from).strip():
        raise OptionError("{arch_from} is empty: give a compressed checkpoint")
    for name in SCRATCH_ARCH_FIELDS:
        if getattr(cfg, name) != type(cfg).spec(name).default:
            raise OptionError(f"{{{name}}} cannot be given with {{arch_from}}: the architecture, input size and classes come from {cfg.arch_from}")


@dataclass(kw_only=True)
class FinetuneConfig(TrainingOptions):
    """``prunecli finetune``: retrain a checkpoint on its dataset (or another one that fits)."""

    command = "finetune"

    # a pruned network recovers in fewer epochs than it took to train (Li et al.: 40 of 160)
    epochs: int = option(20, help="Epochs to train (0 writes the model as initialised).", panel=PANEL_OPT, min=0, max=MAX_EPOCHS)
    dataset: Optional[str] = option(None, help="Dataset name (default: the checkpoint's).", panel=PANEL_DATA)
    data: Optional[str] = option(None, help="Dataset root folder (default: the one the checkpoint records).", panel=PANEL_DATA, path=True)
    download: bool = option(False, help="Download CIFAR/MNIST into --data when online.", panel=PANEL_DATA, negatable=False)
    # knowledge distillation (Hinton et al., arXiv:1503.02531; prunecli.engine.distill). None: off
    teacher: Optional[str] = option(
        None,
        help="Distil from this checkpoint, or 'lineage': the dense one the first prune/compress was applied to.",
        panel=PANEL_OPT,
        path=True,
    )
    # 0.9: most of the weight on the soft targets, as in the common KD recipes (Hinton et al.
    # found a considerably lower weight on the hard term best)
    kd_alpha: float = option(0.9, help="Distillation: weight of the soft-target term (1 - it weighs the cross-entropy).", panel=PANEL_OPT, min=0.0, max=1.0)
    # 4: the usual setting for 10-100 classes (Hinton et al. tried 1-20); past 100 the soft targets are uniform
    kd_temperature: float = option(4.0, help="Distillation: softmax temperature T (> 0).", panel=PANEL_OPT, min=0.0, max=100.0)

    def validate(self) -> None:
        super().validate()
        check_distillation_options(self)


def check_distillation_options(cfg: Any) -> None:
    """``kd_alpha`` / ``kd_temperature`` mean something only with a ``teacher``; T must be > 0.

    For any config with these three fields (finetune, and the stages that reuse them).
    """
    if not cfg.kd_temperature > 0:
        raise OptionError(f"{{kd_temperature}} {cfg.kd_temperature:g}: must be > 0")
    if cfg.teacher is None:
        changed = [name for name in ("kd_alpha", "kd_temperature") if getattr(cfg, name) != type(cfg).spec(name).default]
        if changed:
            raise OptionError(f"{{{changed[0]}}} {getattr(cfg, changed[0]):g}: distillation options need {{teacher}} (a checkpoint, or 'lineage')")
    elif not str(cfg.teacher).strip():
        raise OptionError("{teacher} is empty: give a checkpoint, or 'lineage'")


def check_global_batch(cfg: TrainingOptions, processes: int) -> None:
    if cfg.batch_size % processes:
        raise OptionError(f"{{batch_size}} {cfg.batch_size} is the global batch; it must divide by {processes} processes")
