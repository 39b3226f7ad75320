"""The blocks of block-by-block compression: which pruning units are handled together, in order.

Block-by-block compression (the Sensitivity Pruner, seed 004; ThiNet and CP prune layer by
layer the same way) chooses what to remove in one block of the network, removes it
physically, lets the network recover, and only then moves on to the next block, which sees
the already-smaller network. A *block* is a named set of module-name prefixes; a pruning
unit (a Torch-Pruning dependency group, prunecli.surgery.units) belongs to the block that
holds all of its producing layers. A unit whose producers span several blocks (a residual
stream fed by the stem and by every block of a stage) belongs to none and is left whole,
as the references leave it.

``--units`` chooses the blocks:

* ``auto`` (default), by model family: the stages of a ResNet (``layer1``..``layer4``: the
  seed's ``group_id`` 0-3) and of a MobileNetV2 (its 7 inverted-residual groups: the seed's
  blocks 1-7); every conv layer of a VGG (``features``), plus its hidden FC layers when the
  classifier has more than two (ImageNet-shaped); any other model's top-level children
  that contain prunable layers;
* ``stages``: ResNet/MobileNetV2 stages, else top-level children;
* ``blocks``: one level down (each residual block, each inverted residual);
* ``layers``: every pruning unit on its own;
* a comma-separated list of module-name globs: one block per glob.

Blocks are names, not module objects, so they stay valid while the model shrinks.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Optional

import torch.nn as nn

from prunecli.errors import OptionError
from prunecli.models.layers import is_prunable
from prunecli.surgery.units import Unit

MODES = ("auto", "stages", "blocks", "layers")
_STAGE = re.compile(r"^layer\d+$")


@dataclass
class Block:
    """One block: the units whose producers all lie under ``prefixes`` (or match ``globs``)."""

    name: str
    prefixes: list[str] = field(default_factory=list)
    globs: list[str] = field(default_factory=list)
    unit_root: Optional[str] = None  # layers mode: exactly the unit rooted here

    def holds(self, name: str) -> bool:
        if any(name == p or name.startswith(p + ".") for p in self.prefixes):
            return True
        # a glob names modules: a layer matches it, or lies inside a module that does
        return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(name, g + ".*") for g in self.globs)

    def owns(self, unit: Unit) -> bool:
        if self.unit_root is not None:
            return unit.root == self.unit_root
        names = [p.name for p in unit.producers] or [unit.root]
        return all(self.holds(n) for n in names)


def _has_prunable(module: nn.Module) -> bool:
    return any(is_prunable(m) for m in module.modules())


def _stages(model: nn.Module) -> Optional[list[Block]]:
    """ResNet ``layerN`` stages, or MobileNetV2's ``stages``; None for other families."""
    names = [n for n, m in model.named_children() if _STAGE.match(n) and isinstance(m, nn.Sequential)]
    if names:
        return [Block(n, [n]) for n in names]
    stages = getattr(model, "stages", None)
    if isinstance(stages, (nn.Sequential, nn.ModuleList)):
        return [Block(f"stages.{i}", [f"stages.{i}"]) for i in range(len(stages)) if _has_prunable(stages[i])]
    return None


def _top_level(model: nn.Module) -> list[Block]:
    return [Block(n, [n]) for n, m in model.named_children() if _has_prunable(m)]


def _one_level_down(parents: list[Block], model: nn.Module) -> list[Block]:
    modules = dict(model.named_modules())
    out: list[Block] = []
    for b in parents:
        for prefix in b.prefixes:
            children = [(f"{prefix}.{n}", m) for n, m in modules[prefix].named_children() if _has_prunable(m)]
            if children and not is_prunable(modules[prefix]):
                out += [Block(n, [n]) for n, _ in children]
            else:
                out.append(Block(prefix, [prefix]))
    return out


def _vgg(model: nn.Module, units: list[Unit]) -> Optional[list[Block]]:
    features = getattr(model, "features", None)
    classifier = getattr(model, "classifier", None)
    if not isinstance(features, nn.Sequential) or not any(isinstance(m, nn.Conv2d) for m in features):
        return None
    blocks = [Block(u.root, unit_root=u.root) for u in units if all(n.startswith("features.") for n in u.producer_names)]
    hidden_fc = isinstance(classifier, nn.Sequential) and sum(isinstance(m, nn.Linear) for m in classifier) > 2
    if hidden_fc:
        blocks += [Block(u.root, unit_root=u.root) for u in units if all(n.startswith("classifier.") for n in u.producer_names)]
    return blocks


def find_blocks(model: nn.Module, units: list[Unit], how: str = "auto") -> list[Block]:
    """The blocks of ``model`` for ``--units how`` (module docstring), in forward order."""
    how = how.strip()
    if how == "layers":
        return [Block(u.root, unit_root=u.root) for u in units]
    if how == "auto":
        found = _stages(model) or _vgg(model, units) or _top_level(model)
    elif how == "stages":
        found = _stages(model) or _top_level(model)
    elif how == "blocks":
        found = _one_level_down(_stages(model) or _top_level(model), model)
    else:
        globs = [g.strip() for g in how.split(",") if g.strip()]
        if not globs:
            raise OptionError(f"{{units}} {how!r}: expected {', '.join(MODES)} or module-name globs separated by commas")
        found = [Block(g, globs=[g]) for g in globs]
        for b in found:
            if not any(b.owns(u) for u in units):
                raise OptionError(f"{{units}} glob {b.name!r} holds no whole pruning unit (layer names: prunecli info CKPT --layers)")
    return [b for b in found if any(b.owns(u) for u in units)]
