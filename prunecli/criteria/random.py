"""Random pruning, the baseline of Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019, arXiv:1810.05270.

Seeded and reproducible: each unit (or parameter) draws from its own torch.Generator seeded
by a BLAKE2 digest of (seed, unit root name / parameter name), which is stable across runs
and processes, unlike Python's salted hash(), and independent of the order of scoring.
"""

from __future__ import annotations

import hashlib

import torch

from prunecli.criteria._registry import Criterion, register_criterion


def stream_seed(seed: int, key: str) -> int:
    """A 63-bit generator seed for (seed, key), the same in every process."""
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def uniform(seed: int, key: str, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(stream_seed(seed, key))
    return torch.rand(shape, generator=generator, dtype=torch.float64)


@register_criterion("random")
class Random(Criterion):
    """Random channels or weights (baseline; see Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019, arXiv:1810.05270).

    Scores are uniform in [0, 1), drawn per unit (channel) or per parameter (weight) from a
    stream seeded by ``seed`` and the unit's root / the parameter's name.
    """

    granularities = ("channel", "weight")
    global_normalizer = None

    def __init__(self, *, seed: int = 0):
        super().__init__()
        self.seed = int(seed)

    def channel_scores(self, unit) -> torch.Tensor:
        return uniform(self.seed, f"unit:{unit.root}", unit.channels)

    def weight_scores(self, name, param) -> torch.Tensor:
        return uniform(self.seed, f"param:{name}", param.shape).to(param.device)
