"""Reading an nnU-Net v2 results folder as a model card, without torch or nnU-Net.

The Slicer process needs a model's class names, window and folds, but must never import
torch (nor nnU-Net, which imports it), so what it needs is read here from plans.json and
dataset.json as plain JSON; ``nnunet`` builds the network and runs nnU-Net's own
preprocessing in the worker process. A results folder is
``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/`` with dataset.json, plans.json and
``fold_N/checkpoint_final.pth``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ExplainInputError
from .card import ModelCard, PreparedInput, file_inside, read_json
from .nnunet_plans import CHECKPOINT, TILE_STEP, NnUNetModel

READERS = ("SimpleITKIO", "SimpleITKIOWithReorient")
# A class (or region) colour per head, after background: kidney-like orange, tumour red, cyst blue, ...
COLOURS = ((0.85, 0.55, 0.25), (0.85, 0.15, 0.2), (0.3, 0.6, 0.95), (0.4, 0.75, 0.35), (0.65, 0.45, 0.8))


def is_nnunet_folder(path: Path) -> bool:
    """A trained configuration's folder (even one that lacks a file, so that the error
    says which), or a dataset folder holding such folders."""
    if not path.is_dir():
        return False
    own_files = any((path / name).is_file() for name in ("plans.json", "dataset.json")) or any(path.glob("fold_*"))
    return own_files or bool(_configuration_folders(path))


def _configuration_folders(dataset_folder: Path) -> list[Path]:
    return sorted(
        child
        for child in dataset_folder.iterdir()
        if child.is_dir() and child.name.count("__") == 2 and (child / "plans.json").is_file()
    )


@dataclass(frozen=True, kw_only=True)
class NnUNetCard(ModelCard):
    """An nnU-Net results folder's card: nnU-Net builds the network, prepares the CT and
    tiles it (``nnunet``, imported only when the computation runs)."""

    nnunet: NnUNetModel

    @property
    def input_files(self) -> tuple[Path, ...]:
        return (self.path / "plans.json", self.path / "dataset.json", *self.nnunet.checkpoints)

    def build_network(self):
        from .nnunet import build_network

        return build_network(self.nnunet)

    @property
    def tiling(self):
        from .nnunet import NnUNetTiling

        return NnUNetTiling(self.window, self.overlap)

    @property
    def prediction_labels(self) -> dict[int, int]:
        return super().prediction_labels if self.head == "softmax" else self.nnunet.region_labels

    def prepare_input(self, ct, path=None) -> PreparedInput:
        from .nnunet import prepare_nnunet_input

        return prepare_nnunet_input(ct, self.nnunet)


def read_nnunet_folder(folder: Path, folds=None):
    """The model card of an nnU-Net results folder; ``folds`` to ensemble (default: every
    fold with a final checkpoint)."""
    folder = _configuration_folder(folder)
    plans, dataset_json = (
        read_json(file_inside(folder, name, f"{folder.name}'s {name}")) for name in ("plans.json", "dataset.json")
    )
    checkpoints, chosen = _fold_checkpoints(folder, folds)
    configuration_name = folder.name.split("__")[-1]
    configuration = _configuration(plans, configuration_name, folder)
    _check_values(configuration, dataset_json, folder, configuration_name)
    if configuration.get("previous_stage") is not None:
        raise ExplainInputError(
            f"{folder.name} is the second stage of a cascade, whose input includes the first stage's "
            "segmentation: explain the 3d_fullres or 3d_lowres configuration instead."
        )
    reader = plans.get("image_reader_writer", "SimpleITKIO")
    if reader not in READERS:
        raise ExplainInputError(f"{folder.name} reads its images with {reader}; supported: {', '.join(READERS)}.")
    try:
        model = NnUNetModel(folder, plans, dataset_json, configuration_name, chosen, checkpoints)
        names = _class_names(model)
        patch = tuple(int(size) for size in configuration["patch_size"])
        spacing = _spacing_xyz(plans, configuration)
        channels = len(dataset_json["channel_names"])
    except (KeyError, TypeError, ValueError) as error:
        raise ExplainInputError(f"{folder.name}: plans.json or dataset.json lacks or mistypes {error}.") from None
    return NnUNetCard(
        path=folder,
        name=f"nnU-Net {plans.get('dataset_name', folder.parent.name)} {configuration_name} "
        f"(fold{'s' if len(chosen) > 1 else ''} {', '.join(chosen)})",
        architecture=configuration.get("architecture", {}).get("network_class_name", "").rsplit(".", 1)[-1],
        kwargs={"spatial_dims": len(patch), "in_channels": channels},
        weights=checkpoints[0],
        orientation="",  # nnU-Net keeps the stored orientation and array order
        spacing=spacing,
        intensity=None,  # the configuration's own normalisation
        head="softmax" if model.regions is None else "sigmoid",
        classes=names,
        colours=_colours(names),
        window=patch,
        overlap=1 - TILE_STEP,
        default_layer=None,
        extra={"nnunet": {"configuration": configuration_name, "folds": list(chosen)}},
        nnunet=model,
    )


def _spacing_xyz(plans: dict, configuration: dict) -> tuple[float, float, float]:
    """The configuration's target spacing in (x, y, z) order, like every model card's:
    nnU-Net's is in its transposed array order (a 2D configuration's lacks the slice axis,
    whose spacing it keeps; 0 stands for that)."""
    transposed = [float(value) for value in configuration["spacing"]]
    transposed = [0.0] * (3 - len(transposed)) + transposed
    array_order = [0.0] * 3
    for position, axis in enumerate(plans.get("transpose_forward", [0, 1, 2])):
        array_order[axis] = transposed[position]
    return array_order[2], array_order[1], array_order[0]


def _configuration_folder(folder: Path) -> Path:
    trained = _configuration_folders(folder)
    if not (folder / "plans.json").is_file() and trained:
        choices = ", ".join(child.name for child in trained)
        raise ExplainInputError(f"{folder.name} holds trained configurations: give one of them ({choices}).")
    for name in ("plans.json", "dataset.json"):
        if not (folder / name).is_file():
            raise ExplainInputError(
                f"{folder} has no {name}: give the folder of one trained configuration "
                "(DatasetXXX_Name/<Trainer>__<Plans>__<configuration>) as nnU-Net wrote it."
            )
    return folder


def _configuration(plans: dict, name: str, folder: Path, chain: tuple[str, ...] = ()) -> dict:
    """A configuration with what it inherits (as nnU-Net's PlansManager resolves it)."""
    configurations = plans.get("configurations", {})
    if not isinstance(configurations, dict) or name not in configurations:
        names = ", ".join(configurations) if isinstance(configurations, dict) else ""
        raise ExplainInputError(f"{folder.name}/plans.json has no configuration {name!r} (it has {names or 'none'}).")
    if name in chain:
        loop = " -> ".join([*chain, name])
        raise ExplainInputError(
            f"{folder.name}/plans.json: configurations.{chain[-1]}.inherits_from makes a loop "
            f"({loop}): a configuration cannot inherit from itself."
        )
    if not isinstance(configurations[name], dict):
        raise ExplainInputError(f"{folder.name}/plans.json: configurations.{name} must be an object.")
    configuration = dict(configurations[name])
    parent = configuration.pop("inherits_from", None)
    return {**_configuration(plans, parent, folder, (*chain, name)), **configuration} if parent else configuration


def _whole(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_values(configuration: dict, dataset_json: dict, folder: Path, name: str) -> None:
    """The plans' and dataset.json's values this program and nnU-Net rely on, each checked
    with one line naming the entry (nnU-Net itself would fail with an assertion or a
    division by zero)."""
    where = f"{folder.name}/plans.json: configurations.{name}"
    patch = configuration.get("patch_size")
    if not isinstance(patch, list) or len(patch) not in (2, 3) or not all(_whole(size, 1) for size in patch):
        raise ExplainInputError(f"{where}.patch_size must be 2 or 3 whole numbers of voxels; got {patch!r}.")
    spacing = configuration.get("spacing")
    if (
        not isinstance(spacing, list)
        or len(spacing) != len(patch)
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1e4 for v in spacing)
    ):
        raise ExplainInputError(
            f"{where}.spacing must be {len(patch)} positive numbers in mm, one per patch axis; got {spacing!r}."
        )
    labels = dataset_json.get("labels") if isinstance(dataset_json, dict) else None
    where = f"{folder.name}/dataset.json: labels"
    if not isinstance(labels, dict) or "background" not in labels:
        raise ExplainInputError(f"{where} must be an object of label names and values, starting with background.")
    for label, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or not all(_whole(v) for v in values):
            raise ExplainInputError(
                f"{where}.{label} must be a label value (a whole number from 0) or a list of them; got {value!r}."
            )
    plain = sorted(value for label, value in labels.items() if label != "ignore" and not isinstance(value, list))
    if not any(isinstance(value, list) for value in labels.values()) and plain != list(range(len(plain))):
        raise ExplainInputError(
            f"{where}: the values must be 0, 1, 2, ... without gaps or repeats, as nnU-Net requires; got {plain}."
        )
    ignore = labels.get("ignore")
    if ignore is not None and not isinstance(ignore, list) and plain and ignore != max(plain) + 1:
        raise ExplainInputError(
            f"{where}.ignore must be the value after the last class ({max(plain) + 1}), as "
            f"nnU-Net requires; got {ignore}."
        )


def _fold_checkpoints(folder: Path, folds) -> tuple[tuple[Path, ...], tuple[str, ...]]:
    available = sorted(
        child.name.removeprefix("fold_") for child in folder.glob("fold_*") if (child / CHECKPOINT).is_file()
    )
    chosen = tuple(str(fold) for fold in folds) if folds else tuple(available)
    missing = [fold for fold in chosen if fold not in available]
    if missing or not chosen:
        raise ExplainInputError(
            f"{folder.name} has no {CHECKPOINT} for fold {', '.join(missing) or '(any)'}; folds that have one: "
            f"{', '.join(available) or 'none'}."
        )
    checkpoints = tuple(
        file_inside(folder, f"fold_{fold}/{CHECKPOINT}", f"{folder.name}'s fold {fold} checkpoint") for fold in chosen
    )
    return checkpoints, chosen


def _colours(names: tuple[str, ...]) -> tuple[tuple[float, float, float], ...]:
    """Black for the background, then COLOURS in order over the foreground classes only, so
    that a softmax head's first class gets the same colour as a region head's first region."""
    foreground = iter(COLOURS * (len(names) // len(COLOURS) + 1))
    return tuple((0.0, 0.0, 0.0) if name == "background" else next(foreground) for name in names)


def _class_names(model: NnUNetModel) -> tuple[str, ...]:
    """Softmax heads: the label names by value; region heads: the region names in order."""
    labels = {name: value for name, value in model.dataset_json["labels"].items() if name != "ignore"}
    if model.regions is None:
        by_value = {int(value): name for name, value in labels.items()}
        return tuple(by_value.get(value, f"label {value}") for value in range(len(labels)))
    return tuple(name for name in labels if name != "background")
