"""Evaluating one model many times with one part changed: replay what runs before that part.

A sensitivity sweep (prunecli.stages.sensitivity) evaluates the same test batches hundreds
of times, each time with one unit's channels masked. Every module whose call ends before
the first layer of that unit starts computes exactly what it computed for the unpruned
model. `PrefixCache` records the outputs of those modules for every batch during the
baseline evaluation, and later evaluations replay them: the module's forward returns a
copy of its recorded output (a copy, because a caller may modify it in place, as an
in-place ReLU after a BatchNorm does) instead of computing it. On ResNet-56 a unit in the
last stage skips two thirds of the network, the stem's unit nothing; about half on average.

Which modules come before which is read from one forward pass on the first batch, by the
order of the module calls, not by their names: only modules called once per forward, with
a tensor output, are replayed, and of those the outermost (a whole stage rather than its
blocks). Replaying is exact only on the same batches in the same order, so each batch's
input is compared with the recorded one (by a checksum) and a mismatch is an error rather
than a wrong number. The recorded outputs take memory: when they would exceed the budget,
the cache stays off and every evaluation runs the whole model. A module that reads another
module's parameters directly (tied weights) is not seen by the call order: turn replaying
off (``sensitivity --no-replay``) for such a model.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator, Optional

import torch
import torch.nn as nn

from prunecli.errors import PruneCliError

# 2 GiB of recorded activations: ResNet-56 on digits needs ~0.1 GB, ImageNet splits far more
DEFAULT_BUDGET_BYTES = 2 << 30


class PrefixCache:
    """Replays the outputs of the modules that run before a changed part (module docstring)."""

    def __init__(self, model: nn.Module, *, budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.model = model
        self.budget_bytes = budget_bytes
        self.enabled = False
        self.note = ""
        self._names = {m: n for n, m in model.named_modules() if n}
        self._modules = {n: m for m, n in self._names.items()}
        self._start: dict[str, int] = {}
        self._end: dict[str, int] = {}
        self._caller: dict[str, Optional[str]] = {}
        self._calls: dict[str, int] = {}
        self._tensor_out: set[str] = set()
        self._per_sample_bytes: dict[str, int] = {}
        self._prefix: dict[object, list[str]] = {}  # key (a unit) -> outermost modules replayed for it
        self._outputs: dict[str, list[torch.Tensor]] = {}
        self._checks: list[float] = []
        self._batch = -1

    # -- planning: which modules end before each part starts

    @torch.no_grad()
    def plan(self, parts: dict[object, list[str]], example: torch.Tensor, samples: int) -> None:
        """``parts``: key -> names of the modules a change touches. ``samples``: images per evaluation.

        One forward pass on ``example`` orders the calls; the cache turns on if the outputs to
        record fit the budget.
        """
        stack: list[str] = []
        seq = [0]

        def pre(module, args):
            name = self._names[module]
            self._calls[name] = self._calls.get(name, 0) + 1
            self._start.setdefault(name, seq[0])
            self._caller.setdefault(name, stack[-1] if stack else None)
            seq[0] += 1
            stack.append(name)

        def post(module, args, output):
            name = stack.pop()
            self._end[name] = seq[0]
            seq[0] += 1
            if isinstance(output, torch.Tensor) and output.shape[:1] == example.shape[:1]:
                self._tensor_out.add(name)
                self._per_sample_bytes[name] = output[0].numel() * output.element_size()

        hooks = []
        for m in self._names:
            hooks.append(m.register_forward_pre_hook(pre))
            hooks.append(m.register_forward_hook(post))
        was = self.model.training
        try:
            self.model.eval()
            self.model(example)
        finally:
            for h in hooks:
                h.remove()
            self.model.train(was)
        replayable = {n for n in self._tensor_out if self._calls.get(n) == 1}
        needed: set[str] = set()
        for key, touched in parts.items():
            starts = [self._start[n] for n in touched if n in self._start]
            if not starts:
                self._prefix[key] = []
                continue
            first = min(starts)
            done = {n for n in replayable if self._end[n] < first}
            # outermost: a module whose caller is replayed too is replayed with it
            self._prefix[key] = sorted((n for n in done if self._caller.get(n) not in done), key=lambda n: self._start[n])
            needed.update(self._prefix[key])
        size = sum(self._per_sample_bytes[n] for n in needed) * samples
        if not needed:
            self.note = "nothing runs before the swept layers: every evaluation runs the whole model"
        elif size > self.budget_bytes:
            self.note = f"replaying the layers before each swept one would take {size / 2**30:.1f} GiB (budget {self.budget_bytes / 2**30:.1f}): every evaluation runs the whole model"
        else:
            self.enabled = True
            self._outputs = {n: [] for n in needed}

    def replayed(self, key: object) -> list[str]:
        """The outermost modules replayed for ``key`` (empty when the cache is off)."""
        return list(self._prefix.get(key, [])) if self.enabled else []

    # -- recording and replaying

    def batches(self, batches: Iterable) -> Iterator:
        """``batches``, counting them (and, when replaying, checking each is the recorded one)."""
        self._batch = -1
        for x, y in batches:
            self._batch += 1
            yield x, y

    @contextlib.contextmanager
    def recording(self, batches: Iterable) -> Iterator[Iterable]:
        """Yields the batches to evaluate the unchanged model on; records what later runs replay."""
        if not self.enabled:
            yield batches
            return
        hooks = [self._modules[n].register_forward_hook(self._keep) for n in self._outputs]
        for out in self._outputs.values():
            out.clear()
        self._checks = []

        def counted():
            for x, y in self.batches(batches):
                self._checks.append(_checksum(x))
                yield x, y

        try:
            yield counted()
        finally:
            for h in hooks:
                h.remove()

    def _keep(self, module, args, output) -> None:
        self._outputs[self._names[module]].append(output.detach().clone())

    @contextlib.contextmanager
    def replaying(self, key: object, batches: Iterable) -> Iterator[Iterable]:
        """Yields the batches to evaluate the model on with ``key``'s part changed."""
        names = self.replayed(key)
        if not names:
            yield batches
            return
        for n in names:
            self._modules[n].forward = self._replay(n)  # an instance attribute shadows the class's forward

        def checked():
            for i, (x, y) in enumerate(self.batches(batches)):
                if i >= len(self._checks) or _checksum(x) != self._checks[i]:
                    raise PruneCliError("internal: the evaluation batches changed between passes; rerun with --no-replay")
                yield x, y

        try:
            yield checked()
        finally:
            for n in names:
                del self._modules[n].forward

    def _replay(self, name: str):
        outputs = self._outputs[name]

        def forward(*args, **kwargs):
            return outputs[self._batch].clone()

        return forward


def _checksum(x: torch.Tensor) -> float:
    return float(x.detach().double().sum().item())
