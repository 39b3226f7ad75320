"""Rich tables on stderr, shared by evaluate, info and (later) prune/compress."""

from __future__ import annotations


def human(n: float | int | None, unit: str = "") -> str:
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


def layer_widths_table(title: str, columns: list[str], layer_lists: list[list]):
    """One row per conv/linear layer; one width column per checkpoint (side by side)."""
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("layer")
    table.add_column("kind")
    for col in columns:
        table.add_column(f"{col}\nin -> out", justify="right")
    table.add_column("sparsity", justify="right")
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
            alive = f" ({layer.alive_out} alive)" if layer.alive_out != layer.out_width else ""
            cells.append(f"{layer.in_width} -> {layer.out_width}{alive}")
        kind = f"{first.kind} {first.kernel}".strip() + (f" g{first.groups}" if first.groups > 1 else "")
        sparsity = " / ".join(f"{lk[name].sparsity:.0%}" if name in lk else "-" for lk in lookup)
        table.add_row(str(i), name, kind, *cells, sparsity)
    return table
