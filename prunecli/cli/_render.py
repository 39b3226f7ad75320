"""Rich tables and numbers in human units, shared by evaluate, info, prune and compress."""

from __future__ import annotations


def human(n: float | int | None, unit: str = "") -> str:
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def distinct_labels(paths: list[str]) -> list[str]:
    """Names that tell the files apart: the file name, with as many parent folders as it takes.

    Never shortened: what differs between two names is often at the end
    ("final_fpgm_global_40.pt" and "final_fpgm_global_50.pt"), so tables wrap a long name
    rather than cut it. The same file given twice keeps the same label.
    """
    from pathlib import PurePath

    parts = [PurePath(p).parts for p in paths]
    depth = [1] * len(paths)

    def label(i: int) -> str:
        return str(PurePath(*parts[i][-depth[i]:])) if parts[i] else str(paths[i])

    clashing = True
    while clashing:  # each round adds a folder to both names of a clash: ends within the deepest path
        clashing = False
        for i in range(len(paths)):
            for j in range(i + 1, len(paths)):
                if parts[i] != parts[j] and label(i) == label(j):
                    for k in (i, j):
                        if depth[k] < len(parts[k]):
                            depth[k] += 1
                            clashing = True
    return [label(i) for i in range(len(paths))]


def layer_widths_table(title: str, columns: list[str], layer_lists: list[list]):
    """One row per conv/linear layer; one width column per checkpoint (side by side).

    A cell is "in -> out", then how many output channels are alive when masks or zeros
    killed some, then the share of the layer's weights that are zero when there are any
    (weight-level pruning shows only there). The caption says so.
    """
    from rich.table import Table

    table = Table(
        title=title,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        caption="alive: output channels with a kept, non-zero weight; % zero: share of the layer's weights that are zero (masked or pruned)",
        caption_justify="left",
    )
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    table.add_column("kind")
    for col in columns:
        table.add_column(f"{col}\nin -> out", justify="right")
    names = [layer.name for layer in layer_lists[0]]
    lookup = [{layer.name: layer for layer in layers} for layers in layer_lists]
    for i, name in enumerate(names, start=1):
        first = lookup[0][name]
        cells = []
        for lk in lookup:
            layer = lk.get(name)
            if layer is None:
                cells.append("-")
                continue
            alive = f", {layer.alive_out} alive" if layer.alive_out != layer.out_width else ""
            zero = f", {_percent(layer.sparsity)} zero" if layer.sparsity > 0 else ""
            cells.append(f"{layer.in_width} -> {layer.out_width}{alive}{zero}")
        kind = f"{first.kind} {first.kernel}".strip() + (f" g{first.groups}" if first.groups > 1 else "")
        table.add_row(str(i), name, kind, *cells)
    return table


def _percent(fraction: float) -> str:
    """A share, never rounded to a misleading 0% or 100%."""
    if 0 < fraction < 0.005:
        return "<1%"
    if 0.995 <= fraction < 1:
        return ">99%"
    return f"{fraction:.0%}"
