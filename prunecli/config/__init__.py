"""Typed stage configs: one dataclass per command owns its defaults, choices and checks.

The command line (prunecli.cli), ``--config`` files and recipe stages all read options
through these classes; nothing here imports torch. See `_base` for the machinery.
"""

from __future__ import annotations

from prunecli.config._base import OptionSpec, StageConfig, option_specs
from prunecli.config.compress import CompressConfig
from prunecli.config.evaluate import EvaluateConfig
from prunecli.config.export import ExportConfig, ExportFormat
from prunecli.config.inspect import InfoConfig, ListConfig
from prunecli.config.profile import ProfileConfig
from prunecli.config.prune import Granularity, Protect, PruneConfig, Scope, Selection
from prunecli.config.sensitivity import SensitivityConfig
from prunecli.config.train import FinetuneConfig, Optimizer, Schedule, TrainConfig, TrainingOptions

STAGE_CONFIGS: dict[str, type[StageConfig]] = {
    c.command: c
    for c in (TrainConfig, PruneConfig, CompressConfig, FinetuneConfig, EvaluateConfig, InfoConfig, ListConfig, SensitivityConfig, ExportConfig, ProfileConfig)
}


def config_for(command: str) -> type[StageConfig]:
    return STAGE_CONFIGS[command]


def flag_for(name: str) -> str:
    """The command-line flag of a config field (the same flag in every command that has it)."""
    for cls in STAGE_CONFIGS.values():
        for s in option_specs(cls):
            if s.name == name:
                return s.flags[0]
    return "--" + name.replace("_", "-")


__all__ = [
    "CompressConfig",
    "EvaluateConfig",
    "ExportConfig",
    "ExportFormat",
    "FinetuneConfig",
    "Granularity",
    "InfoConfig",
    "ListConfig",
    "OptionSpec",
    "ProfileConfig",
    "Optimizer",
    "Protect",
    "PruneConfig",
    "STAGE_CONFIGS",
    "Schedule",
    "Scope",
    "Selection",
    "SensitivityConfig",
    "StageConfig",
    "TrainConfig",
    "TrainingOptions",
    "config_for",
    "flag_for",
    "option_specs",
]
