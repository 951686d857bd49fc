"""MONAI bundles (a local folder with configs/inference.json and models/model.pt) as model
cards.

A bundle's configuration can execute arbitrary Python (``$`` expressions, any
``_target_``), so a bundle is read only when the user says they trust it; otherwise it is
refused before anything in it is evaluated. What is taken from it:

- the network: ``network_def``, built by MONAI's own ConfigParser (trusted bundles only);
- the weights: ``models/model.pt``, loaded with ``weights_only=True`` like any weights;
- the preprocessing: ``Orientationd`` (axcodes), ``Spacingd`` (pixdim) and
  ``ScaleIntensityRanged`` from the ``preprocessing`` transforms;
- the sliding window: ``inferer`` (roi_size, overlap, mode);
- the head: ``Activationsd`` in ``postprocessing`` (sigmoid=True means region heads);
- class names: ``configs/metadata.json`` network_data_format outputs channel_def.

MONAI arrays are (channels, x, y, z) (2D: (channels, x, y)): the card says so
(``axis_order`` "xyz" or "xy"), and the pipeline transposes to and from its own (z, y, x)
arrays.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExplainInputError
from .card import Intensity, ModelCard, file_inside, read_json

TRUST_ADVICE = (
    "A MONAI bundle's configuration can run arbitrary Python code, so it is loaded only when you trust its "
    "author: pass --trust-bundle (in Slicer, tick 'Trust this MONAI bundle'), or describe the network in a "
    "model card instead."
)


def is_bundle(path: Path) -> bool:
    return path.is_dir() and any((path / "configs" / name).is_file() for name in ("inference.json", "inference.yaml"))


@dataclass(frozen=True, kw_only=True)
class BundleCard(ModelCard):
    """A trusted bundle's card: its network is the configuration's ``network_def``."""

    bundle_config: dict

    @property
    def input_files(self) -> tuple[Path, ...]:
        metadata = self.path.parent / "metadata.json"
        return (self.path, self.weights, *([metadata] if metadata.is_file() else []))

    def build_network(self):
        return self._with_weights(build_bundle_network(self.bundle_config))


def read_bundle(folder: Path, trusted: bool) -> BundleCard:
    if not trusted:
        raise ExplainInputError(f"{folder.name} is a MONAI bundle. {TRUST_ADVICE}")
    config_path = file_inside(folder, "configs/inference.json", f"The bundle {folder.name}'s configuration")
    if not config_path.is_file():
        raise ExplainInputError(
            f"{folder.name} has only a YAML configuration; convert configs/inference.yaml to JSON (same content)."
        )
    config = read_json(config_path)
    if not isinstance(config.get("network_def"), dict):
        raise ExplainInputError(f"{config_path} has no network_def: the bundle does not say which network it runs.")
    transforms = _transforms(config.get("preprocessing"))
    orientation = _argument(transforms, "Orientationd", "axcodes", config_path)
    spacing = _argument(transforms, "Spacingd", "pixdim", config_path)
    scaling = _find(transforms, "ScaleIntensityRanged")
    if scaling is None:
        raise ExplainInputError(f"{config_path}: no ScaleIntensityRanged in the preprocessing, so the CT's intensity "
                                "scaling is unknown; describe the network in a model card instead.")  # fmt: skip
    inferer = config.get("inferer", {})
    if "roi_size" not in inferer:
        raise ExplainInputError(f"{config_path}: the inferer has no roi_size (sliding window); add it.")
    network = config["network_def"]
    spatial_dims = int(network.get("spatial_dims", len(inferer["roi_size"])))
    window = [int(size) for size in inferer["roi_size"]]
    classes = _classes(folder, int(network.get("out_channels", 0)))
    activation = _find(_transforms(config.get("postprocessing")), "Activationsd") or {}
    return BundleCard(
        path=config_path,
        name=_metadata(folder).get("name", folder.name),
        architecture=str(network.get("_target_", "")),
        kwargs={key: value for key, value in network.items() if not key.startswith("_")},
        weights=file_inside(folder, "models/model.pt", f"The bundle {folder.name}'s weights"),
        orientation=str(orientation),
        spacing=tuple(float(value) for value in spacing),
        intensity=_intensity(scaling),
        head="sigmoid" if activation.get("sigmoid") else "softmax",
        classes=classes,
        colours=tuple((0.5, 0.5, 0.5) for _ in classes),
        window=tuple(window),  # in the network's own array order, like the arrays it is given
        overlap=float(inferer.get("overlap", 0.25)),
        default_layer=None,
        extra={"bundle": str(folder)},
        axis_order="xyz" if spatial_dims == 3 else "xy",
        bundle_config=config,
    )


def build_bundle_network(config: dict):
    """The bundle's network_def, evaluated by MONAI (the bundle was trusted to get here)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(config)
    try:
        return parser.get_parsed_content("network_def")
    except Exception as error:  # a bundle can fail in any way its code allows
        raise ExplainInputError(f"The bundle's network_def could not be built: {error}") from None


def _transforms(section) -> list[dict]:
    if isinstance(section, dict):
        section = section.get("transforms", [])
    return [item for item in section or [] if isinstance(item, dict)]


def _find(transforms: list[dict], name: str) -> dict | None:
    for transform in transforms:
        if str(transform.get("_target_", "")).split(".")[-1] == name:
            return transform
    return None


def _argument(transforms, name: str, argument: str, config_path: Path):
    transform = _find(transforms, name)
    if transform is None or argument not in transform:
        raise ExplainInputError(f"{config_path}: no {name} with {argument} in the preprocessing, so the model's "
                                "grid is unknown; describe the network in a model card instead.")  # fmt: skip
    value = transform[argument]
    if isinstance(value, str) and value.startswith(("$", "@", "%")):
        raise ExplainInputError(f"{config_path}: {name}.{argument} is an expression ({value}); write its value.")
    return value


def _intensity(scaling: dict) -> Intensity:
    """ScaleIntensityRanged maps [a_min, a_max] linearly to [b_min, b_max] (clipped when
    clip is true): the same as clipping, then (HU - centre) / scale."""
    a_min, a_max = float(scaling["a_min"]), float(scaling["a_max"])
    b_min, b_max = float(scaling.get("b_min", 0.0)), float(scaling.get("b_max", 1.0))
    scale = (a_max - a_min) / (b_max - b_min)
    low, high = (a_min, a_max) if scaling.get("clip", False) else (-math.inf, math.inf)
    return Intensity(low=low, high=high, centre=a_min - b_min * scale, scale=scale)


def _metadata(folder: Path) -> dict:
    path = file_inside(folder, "configs/metadata.json", f"The bundle {folder.name}'s metadata")
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ExplainInputError(f"{path} is not valid JSON.") from None


def _classes(folder: Path, out_channels: int) -> tuple[str, ...]:
    outputs = _metadata(folder).get("network_data_format", {}).get("outputs", {})
    channel_def = next((output.get("channel_def") for output in outputs.values() if "channel_def" in output), None)
    if channel_def:
        return tuple(str(channel_def[key]) for key in sorted(channel_def, key=int))
    return tuple(f"class {index}" for index in range(max(out_channels, 1)))
