"""Rebuilding a compressed architecture: replay Torch-Pruning's pruning history."""

from __future__ import annotations

import torch

from prunecli.errors import CheckpointError, PruneCliError


def example_input(spec, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, spec.in_channels, spec.image_size, spec.image_size)


def replay_structure(model: torch.nn.Module, history: list, spec, *, where: str) -> None:
    """Shrink a freshly built ``model`` exactly as recorded in ``history``."""
    from prunecli.surgery.units import build_graph

    try:
        graph = build_graph(model, example_input(spec), name=spec.name)
    except PruneCliError as e:
        raise CheckpointError(f"{where}: cannot rebuild its compressed structure: {e}") from None
    from prunecli.surgery.custom import after_structure_change

    try:
        graph.load_pruning_history([list(step) for step in history])
        after_structure_change(model)
    except Exception as e:  # a history from another architecture: a module name or index that is not there
        raise CheckpointError(
            f"{where}: its pruning structure does not fit architecture {spec.name!r} "
            f"({type(e).__name__}: {e})"
        ) from None
