"""Options of the commands that only report: ``prunecli info`` and ``prunecli list``."""

from __future__ import annotations

from dataclasses import dataclass

from prunecli.config._base import PANEL_OUT, StageConfig, option


@dataclass(kw_only=True)
class InfoConfig(StageConfig):
    """``prunecli info``: what a checkpoint is and where it came from."""

    command = "info"

    layers: bool = option(
        False, help="List the conv/linear layers by name (the names --layer-rate/--skip match).", panel=PANEL_OUT, negatable=False
    )
    json: bool = option(False, help="Print one JSON object on stdout instead of tables.", panel=PANEL_OUT, negatable=False)


@dataclass(kw_only=True)
class ListConfig(StageConfig):
    """``prunecli list``: the registered models, datasets or methods."""

    command = "list"

    json: bool = option(False, help="Print one JSON object on stdout instead of tables.", panel=PANEL_OUT, negatable=False)
