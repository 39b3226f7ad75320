"""Rebuilding a compressed architecture: replay Torch-Pruning's pruning history."""

from __future__ import annotations

import torch

from prunecli.errors import CheckpointError


def example_input(spec, batch: int = 1) -> torch.Tensor:
    return torch.zeros(batch, spec.in_channels, spec.image_size, spec.image_size)


def build_graph(model: torch.nn.Module, spec):
    """A Torch-Pruning dependency graph of ``model``; restores the model's train/eval mode."""
    import torch_pruning as tp

    was_training = model.training
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input(spec), verbose=False)
    finally:
        model.train(was_training)  # build_dependency leaves the model in eval mode
    return graph


def replay_structure(model: torch.nn.Module, history: list, spec, *, where: str) -> None:
    """Shrink a freshly built ``model`` exactly as recorded in ``history``."""
    graph = build_graph(model, spec)
    try:
        graph.load_pruning_history(history)
    except Exception as e:  # a history from another architecture: a module name or index that is not there
        raise CheckpointError(
            f"{where}: its pruning structure does not fit architecture {spec.name!r} "
            f"({type(e).__name__}: {e})"
        ) from None
