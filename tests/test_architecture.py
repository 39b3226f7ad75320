"""The package's shape: no import cycle between sub-packages (lazy imports included), no
private Typer imports, and a surgery/ that names no model."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "prunecli"


def _node(module: str) -> str:
    """prunecli.surgery.units -> surgery; prunecli.checkpoint -> checkpoint; prunecli -> (root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _imports() -> dict[str, set[str]]:
    """Sub-package -> the sub-packages its modules import, at any depth (functions included)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("prunecli", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        src = _node(module)
        edges = graph.setdefault(src, set())
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import"
                targets = [node.module or ""]
                # `from prunecli import x` imports the sub-package x, not the root
                if node.module == "prunecli":
                    targets = [f"prunecli.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if t == "prunecli" or t.startswith("prunecli."):
                    dst = _node(t)
                    if dst != src and not (dst == "__version__" or t == "prunecli.__version__"):
                        edges.add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_no_import_cycle_between_subpackages():
    graph = _imports()
    assert {"cli", "config", "models", "surgery", "criteria", "algorithms", "engine", "stages", "checkpoint"} <= set(graph)
    cycle = _cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_layers_point_one_way():
    graph = _imports()
    # the in-memory core never reaches up into the stages or the command line
    for low in ("config", "models", "surgery", "criteria", "algorithms", "engine", "metrics", "data", "checkpoint"):
        assert not graph[low] & {"stages", "cli"}, (low, graph[low])
    assert not graph["config"] - {"errors", "limits"}, "configs must stay torch-free and leaf-like"
    assert not graph["limits"], "the bounds on untrusted input are a leaf"
    assert "criteria" not in graph["surgery"] and "engine" not in graph["surgery"]
    assert "surgery" not in graph["models"] and "checkpoint" not in graph["models"]


def test_no_private_typer_imports():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        assert "typer._" not in text and "from typer import _" not in text, path


def test_surgery_names_no_model():
    """Model-specific pruning rules live next to the models (prunecli.models.structure)."""
    families = {"ShortcutA", "VisionTransformer", "CifarResNet", "VGG", "DenseNet", "MobileNetV2"}
    for path in (PACKAGE / "surgery").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not names & families, (path, names & families)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunecli.models."):
                assert node.module in ("prunecli.models.layers", "prunecli.models.structure"), (path, node.module)


def test_pyproject_lists_every_package():
    """pyproject.toml lists packages explicitly (recipes/ is mapped in): a new one must be added there."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(PACKAGE.parent).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found <= listed, found - listed
    assert "prunecli.recipe_files" in listed
