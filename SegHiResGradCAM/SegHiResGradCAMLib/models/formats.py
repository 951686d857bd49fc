"""Which format a model path is, and its reader: the one entry point for reading a model."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .card import ModelCard
from .card_json import read_card_json
from .monai_bundle import is_bundle, read_bundle
from .nnunet_folder import is_nnunet_folder, read_nnunet_folder

BUNDLED_MODEL = Path(str(files("SegHiResGradCAMLib") / "resources" / "Models" / "kits_demo_unet.json"))


def read_model_card(path=None, trust_bundle: bool = False, folds=None) -> ModelCard:
    """A model card from a JSON file or a folder holding one (default: the bundled model),
    from a MONAI bundle folder, which is read only with ``trust_bundle``, or from an nnU-Net
    results folder (``folds``: which folds to ensemble; default all that have a checkpoint)."""
    path = Path(path) if path is not None else BUNDLED_MODEL
    if is_bundle(path):
        return read_bundle(path, trust_bundle)
    if is_nnunet_folder(path):
        return read_nnunet_folder(path, folds)
    return read_card_json(path)
