"""The shipped recipes (the repository's ``recipes/`` folder) and reading a recipe file.

A recipe is named by its path below ``recipes/`` without ``.yaml``
(``fpgm/resnet56-cifar10-40``) or given as a path. The folder is installed with the
package as ``prunecli.recipe_files`` (pyproject maps it), so names resolve in a
checkout and after ``pip install`` alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from prunecli.config.yaml_file import read_yaml_mapping
from prunecli.errors import UsageError
from prunecli.recipes.schema import Recipe, RecipeError, parse_recipe


def shipped_folder() -> Optional[Path]:
    """Where the shipped recipes are: the installed package data, else the checkout's folder."""
    try:
        import prunecli.recipe_files as files

        return Path(files.__file__).parent
    except ImportError:
        checkout = Path(__file__).resolve().parents[2] / "recipes"
        return checkout if checkout.is_dir() else None


def shipped() -> dict[str, Path]:
    """Name -> file of every shipped recipe, sorted by name."""
    folder = shipped_folder()
    if folder is None:
        return {}
    return {str(p.relative_to(folder).with_suffix("")): p for p in sorted(folder.rglob("*.yaml"))}


def find(name_or_path: str | Path) -> Path:
    """A recipe file: a path that exists, or the name of a shipped recipe."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    library = shipped()
    key = str(name_or_path).removesuffix(".yaml")
    if key in library:
        return library[key]
    if path.exists():
        raise RecipeError(f"{path}: is a folder, not a recipe file")
    import difflib

    close = difflib.get_close_matches(key, list(library), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RecipeError(f"{name_or_path}: no such recipe file or shipped recipe{hint}; prunecli recipe list shows them")


def load(name_or_path: str | Path, sets: Optional[dict[str, Any]] = None) -> Recipe:
    """Find, read (bounded, as any YAML prunecli reads) and validate a recipe."""
    path = find(name_or_path)
    try:
        data = read_yaml_mapping(path, str(path))
    except UsageError as e:  # a broken recipe is a bad file (exit 1), not a bad command line
        raise RecipeError(str(e)) from None
    recipe = parse_recipe(data, path, sets)
    check_names(recipe)
    return recipe


def check_names(recipe: Recipe) -> None:
    """Models, datasets and methods a stage names exist, and ``from:`` files too: found now, not
    after hours of training the stages before."""
    from prunecli.criteria import list_criteria
    from prunecli.data import list_datasets
    from prunecli.models import list_models, is_user_model

    def bad(stage, key: str, what: str) -> RecipeError:
        return RecipeError(f"{recipe.path}: stage {stage.name!r}: key {key!r}: {what}")

    for stage in recipe.stages:
        cfg = stage.config()
        if stage.command == "train":
            if cfg.dataset not in list_datasets():
                raise bad(stage, "dataset", f"unknown dataset {cfg.dataset!r}; valid: {', '.join(list_datasets())}")
            if not cfg.model.startswith("tv:") and not is_user_model(cfg.model) and cfg.model not in list_models():
                raise bad(stage, "model", f"unknown model {cfg.model!r}; prunecli list models shows them")
            if stage.source is not None and not Path(stage.source).expanduser().is_file():
                raise bad(stage, "from", f"{stage.source}: no such checkpoint file")
        if stage.command == "prune" and cfg.method not in list_criteria():
            raise bad(stage, "method", f"unknown method {cfg.method!r}; valid: {', '.join(list_criteria())}")
        if stage.command in ("finetune", "prune", "evaluate") and getattr(cfg, "dataset", None) and cfg.dataset not in list_datasets():
            raise bad(stage, "dataset", f"unknown dataset {cfg.dataset!r}; valid: {', '.join(list_datasets())}")
