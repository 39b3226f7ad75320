"""Knowledge distillation: a teacher's softened outputs as extra targets for the student.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", NIPS 2014
Deep Learning Workshop, arXiv:1503.02531, section 2. With temperature T, the student is
trained on

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, labels)

The T^2 keeps the soft term's gradients at the same scale as the hard term's when T
changes (the paper's "multiply them by T^2"). Fine-tuning a pruned network with its dense
parent as the teacher is the usual use here (``prunecli finetune --teacher lineage``).

`Distillation` is a Trainer callback (prunecli.engine.trainer, the ``loss`` event): the
teacher runs in eval mode, without gradients, on the student's device and inside the
student's autocast region. It is never wrapped in DDP: under torchrun every rank runs its
own copy on its own batch, as the soft targets of a batch depend on that batch only.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from prunecli.engine.trainer import Callback, FitState
from prunecli.errors import PruneCliError


def _full_precision(logits: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 logits (AMP) as float32: softmax at T > 1 flattens them into rounding."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch (at least float32)."""
    t = float(temperature)
    log_student = F.log_softmax(_full_precision(student_logits) / t, dim=1)
    teacher = F.softmax(_full_precision(teacher_logits) / t, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al.'s loss: ``alpha`` of the soft term, ``1 - alpha`` of the cross-entropy.

    Label smoothing applies to the cross-entropy only; the teacher's targets are soft already.
    """
    hard = F.cross_entropy(_full_precision(student_logits), labels, label_smoothing=label_smoothing)
    return alpha * soft_target_loss(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard


class Distillation(Callback):
    """Adds the teacher's soft targets to every step's loss (see the module docstring).

    The incoming loss (the trainer's cross-entropy, label smoothing included) is the hard
    term, so ``loss`` returns what `distillation_loss` computes. ``sha256`` identifies the
    teacher's file: it is kept in the resume state, and a resumed run refuses a teacher
    that changed since.
    """

    key = "distillation"

    def __init__(self, teacher: nn.Module, *, alpha: float, temperature: float, source: str = "teacher", sha256: Optional[str] = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha {alpha} is outside [0, 1]")
        if not temperature > 0:
            raise ValueError(f"temperature {temperature} must be > 0")
        self.teacher = teacher
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.source = source
        self.sha256 = sha256

    def on_fit_start(self, state: FitState) -> None:
        self.teacher.to(state.device)
        if state.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.teacher.eval()  # BatchNorm statistics and dropout as at test time, and never updated
        self.teacher.requires_grad_(False)

    def loss(self, state: FitState, inputs: torch.Tensor, outputs: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0.0:  # only the hard term: the teacher's forward pass would be wasted
            return loss
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        return self.alpha * soft_target_loss(outputs, teacher_logits, self.temperature) + (1.0 - self.alpha) * loss

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_sha256": self.sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        stored = state.get("teacher_sha256")
        if stored and self.sha256 and stored != self.sha256:
            raise PruneCliError(
                f"--teacher {self.source}: the file changed since this run started (sha256 {self.sha256[:12]}, the run used "
                f"{str(stored)[:12]}); a resumed run needs the teacher it started with (start a new run to change it)"
            )
