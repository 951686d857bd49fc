"""The model formats, one file each in this folder, and what every front end derives from them.

A format file defines ``FORMAT = ModelFormat(...)``: its name, the label the Slicer module's
model-kind selector shows, its ``--model`` help, whether a path to it is a file or a folder,
how to recognise one, how to read it into a ``ModelCard``, the options it takes (trusting a
bundle, choosing folds) and the packages it needs beyond the core ones. The command line's
help, the Slicer selector and the first-use install plan are built from the registered
formats, so adding a format is one new file here (plus its tests). A model is named
everywhere by a ``ModelSource``: the path with its options.

Torch-free: the Slicer process reads this at start-up.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..card import ModelCard

BUNDLED_MODEL = Path(str(files("SegHiResGradCAMLib") / "resources" / "Models" / "kits_demo_unet.json"))
# The options a format may take; a ModelSource carries them to the format's reader.
TRUST = "trust_bundle"  # the user trusts code in the model's configuration
FOLDS = "folds"  # the folds of a cross-validation to ensemble


@dataclass(frozen=True)
class Package:
    """A Python package a format needs: the name pip installs, the name Python imports, and
    the lowest version known to work (None: any)."""

    distribution: str
    module: str
    minimum: str | None = None

    @property
    def specifier(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


@dataclass(frozen=True)
class Packages:
    """What a model of a format needs beyond the core packages: ``plain`` ones installed with
    their dependencies, ``without_dependencies`` ones installed without (their declared
    dependencies would replace PyTorch), through ``installer`` ("pip", or the name of an
    extension's installer that the Slicer module knows)."""

    plain: tuple[Package, ...] = ()
    without_dependencies: tuple[Package, ...] = ()
    installer: str = "pip"


NOTHING_MORE = Packages()


@dataclass(frozen=True)
class ModelFormat:
    """One model format; see the module's docstring."""

    name: str
    label: str  # as the Slicer module's model-kind selector shows it
    help: str  # what --model takes for this format
    picks: str  # "file" or "folder": which path picker the Slicer module shows
    detects: Callable[[Path], bool]  # whether a path is a model of this format
    reads: Callable[[ModelSource], ModelCard]
    order: int = 50  # formats are asked in this order whether a path is theirs
    listed: int = 50  # the place in the Slicer selector and the --model help (simplest first)
    options: frozenset[str] = frozenset()  # TRUST, FOLDS
    packages: Callable[[Path], Packages] = field(default=lambda path: NOTHING_MORE)


@dataclass(frozen=True)
class ModelSource:
    """A model as the user named it: its path (None: the bundled demo model) and the options
    its format takes."""

    path: Path | None = None
    trust_bundle: bool = False
    folds: tuple[str, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "path", None if self.path is None else Path(self.path))
        object.__setattr__(self, "folds", tuple(str(fold) for fold in self.folds) if self.folds else None)

    @classmethod
    def of(cls, model: ModelSource | Path | str | None) -> ModelSource:
        """A source from a source or a bare path (no options)."""
        if isinstance(model, ModelSource):
            return model
        return cls(None if model is None else Path(model))

    @property
    def format(self) -> ModelFormat:
        return format_of(self.path if self.path is not None else BUNDLED_MODEL)

    def read(self) -> ModelCard:
        """The model card, read by the source's format (refusing what cannot be used)."""
        return self.format.reads(self)

    def arguments(self) -> list[str]:
        """The command line's model options for this source."""
        arguments = ["--model", str(self.path.resolve())] if self.path is not None else []
        arguments += ["--trust-bundle"] if self.trust_bundle else []
        return arguments + (["--folds", *self.folds] if self.folds else [])


@functools.cache
def registered_formats() -> tuple[ModelFormat, ...]:
    """Every format file's FORMAT, in the order formats are asked."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            found.append(importlib.import_module(f"{__name__}.{module.name}").FORMAT)
    return tuple(sorted(found, key=lambda model_format: (model_format.order, model_format.name)))


def listed_formats() -> tuple[ModelFormat, ...]:
    """The formats in the order people are shown them (the Slicer selector, --model's help)."""
    return tuple(sorted(registered_formats(), key=lambda model_format: (model_format.listed, model_format.name)))


def format_of(path: Path) -> ModelFormat:
    """The first format that recognises the path (the model card format takes what is left)."""
    path = Path(path)
    return next(model_format for model_format in registered_formats() if model_format.detects(path))


def read_model_card(path=None, trust_bundle: bool = False, folds=None) -> ModelCard:
    """The model card of any format (default: the bundled model); a MONAI bundle is read
    only with ``trust_bundle``; ``folds``: an nnU-Net folder's folds to ensemble (default
    all that have a checkpoint)."""
    return ModelSource(path, trust_bundle, folds).read()
