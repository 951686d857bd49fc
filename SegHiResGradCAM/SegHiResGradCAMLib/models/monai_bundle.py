"""MONAI bundles (a local folder with configs/inference.json or .yaml and models/model.pt),
explained in the bundle's own computation.

A bundle's configuration can execute arbitrary Python (``$`` expressions, any
``_target_``), so a bundle is read only when the user says they trust it; otherwise it is
refused before anything in it is evaluated. Reading the card (class names, head, window
for display) reads the files as plain JSON or YAML, so the Slicer process imports neither
MONAI nor torch. The computation (``resolved()`` and the methods below, in the worker)
parses the configuration with MONAI's ConfigParser, with ``bundle_root`` set to the folder
and the bundle's own imports, whatever references and expressions it uses:

- the network: ``network_def``; the weights: ``models/model.pt`` (``weights_only=True``);
- the input: the bundle's ``preprocessing``, run by MONAI on the CT file (a NIfTI as it
  is, any other format through a temporary NIfTI of the validated image); the network's
  input is exactly the tensor it produces, with its metadata and applied operations;
- the sliding window: the parsed ``inferer`` (roi_size, overlap, mode, sigma_scale,
  padding_mode, cval), so that T is the blended output's T under the bundle's blending;
- the head: ``Activationsd`` in ``postprocessing`` (sigmoid: region heads);
- the way back: maps through MONAI's ``Invertd`` of the preprocessing (linear), the label
  map through the bundle's own postprocessing (without its saving transforms; nearest
  ``Invertd`` when the postprocessing does not invert);
- refused: several input images, a spatial transform MONAI cannot invert (named), an
  inferer other than a sliding window.

MONAI arrays are (channels, x, y, z): the card says so (``axis_order`` "xyz"), and the
pipeline transposes to and from its own (z, y, x) arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ExplainInputError, first_line
from .card import ModelCard, PreparedInput, file_inside, read_json

TRUST_ADVICE = (
    "A MONAI bundle's configuration can run arbitrary Python code, so it is loaded only when you trust its "
    "author: pass --trust-bundle (in Slicer, tick 'Trust this MONAI bundle'), or describe the network in a "
    "model card instead."
)
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")


def is_bundle(path: Path) -> bool:
    return path.is_dir() and any((path / "configs" / name).is_file() for name in CONFIG_NAMES)


def read_config_file(path: Path) -> dict:
    """A bundle configuration as MONAI reads it: JSON, or YAML (.yaml, .yml)."""
    if path.suffix == ".json":
        return read_json(path)
    try:
        import yaml
    except ImportError:
        raise ExplainInputError(f"{path.name} is YAML: install PyYAML (pip install pyyaml) to read it.") from None
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ExplainInputError(f"{path} is not valid YAML ({error}).") from None
    if not isinstance(content, dict):
        raise ExplainInputError(f"{path} must hold a mapping of configuration entries.")
    return content


@dataclass(frozen=True, kw_only=True)
class BundleCard(ModelCard):
    """A trusted bundle's card; what needs MONAI is evaluated in the worker only."""

    bundle_config: dict

    @property
    def folder(self) -> Path:
        return self.path.parent.parent

    @property
    def input_files(self) -> tuple[Path, ...]:
        metadata = self.path.parent / "metadata.json"
        return (self.path, self.weights, *([metadata] if metadata.is_file() else []))

    def parsed(self, item: str):
        """A configuration entry evaluated by MONAI (the bundle was trusted to get here)."""
        return _evaluate(str(self.path), self.path.stat().st_mtime_ns, item)

    @property
    def in_channels(self) -> int:
        return int(_literal(self.kwargs.get("in_channels", 1), 1))

    @property
    def spatial_dims(self) -> int:
        return int(_literal(self.kwargs.get("spatial_dims", 3), 3))

    def resolved(self) -> BundleCard:
        """The card with the window, overlap, model spacing and network arguments (references
        and expressions evaluated) the configuration computes."""
        kwargs = {
            key: self.parsed(f"network_def#{key}") if _literal(value, None) is None else value
            for key, value in self.kwargs.items()
        }
        for key in ("spatial_dims", "in_channels", "out_channels"):
            if key in kwargs and not isinstance(kwargs[key], int):
                raise ExplainInputError(
                    f"The bundle's network_def#{key} must be a whole number; it evaluates to {kwargs[key]!r}."
                )
        inferer = self.parsed("inferer")
        if type(inferer).__name__ != "SlidingWindowInferer":
            raise ExplainInputError(
                f"The bundle {self.folder.name} runs its network with {type(inferer).__name__}; only "
                "SlidingWindowInferer is supported, whose windows the explanation follows."
            )
        window = tuple(int(size) for size in inferer.roi_size)
        from .bundle_input import transforms_of

        spacings = [
            tuple(float(v) for v in np.atleast_1d(transform.spacing_transform.pixdim))
            for transform in transforms_of(self.parsed("preprocessing"))
            if type(transform).__name__ == "Spacingd"
        ]
        spacing = spacings[0] if spacings and len(spacings[0]) == 3 else (0.0, 0.0, 0.0)  # 0: unknown, the CT's
        return dataclasses.replace(
            self,
            window=window,
            overlap=float(inferer.overlap),
            spacing=spacing,
            axis_order="xyz" if len(window) == 3 else "xy",
            kwargs=kwargs,
        )

    @property
    def tiling(self):
        from ..cam.sliding_window import Tiling

        return Tiling.of_monai_inferer(self.parsed("inferer"))

    def build_network(self):
        import torch

        network = self.parsed("network_def")
        if not isinstance(network, torch.nn.Module):
            raise ExplainInputError(
                f"The bundle's network_def is a {type(network).__name__}, not a torch network "
                "(torch.nn.Module): it must build the network the weights belong to."
            )
        return self._with_weights(network)

    def prepare_input(self, ct, path=None) -> PreparedInput:
        from .bundle_input import prepare_bundle_input

        return prepare_bundle_input(self, ct, path)


@functools.lru_cache(maxsize=4)
def _parser(config_path: str, modified: int):
    """MONAI's parser of the configuration, with bundle_root the bundle's folder (``modified``
    keys the cache to the file's version)."""
    from monai.bundle import ConfigParser

    path = Path(config_path)
    parser = ConfigParser()
    parser.read_config(config_path)
    metadata = path.parent / "metadata.json"
    if metadata.is_file():
        parser.read_meta(str(metadata))
    parser["bundle_root"] = str(path.parent.parent)
    parser.parse(reset=True)
    return parser


def _evaluate(config_path: str, modified: int, item: str):
    parser = _parser(config_path, modified)
    if item not in parser:
        raise ExplainInputError(f"The bundle's configuration {Path(config_path).name} has no {item}.")
    try:
        return parser.get_parsed_content(item)
    except Exception as error:  # a bundle can fail in any way its code allows
        raise ExplainInputError(f"The bundle's {item} could not be evaluated: {first_line(error)}") from None


def read_bundle(folder: Path, trusted: bool) -> BundleCard:
    """The card of a bundle folder, from its files read as plain data (nothing evaluated)."""
    if not trusted:
        raise ExplainInputError(f"{folder.name} is a MONAI bundle. {TRUST_ADVICE}")
    name = next(name for name in CONFIG_NAMES if (folder / "configs" / name).is_file())
    config_path = file_inside(folder, f"configs/{name}", f"The bundle {folder.name}'s configuration")
    config = read_config_file(config_path)
    network = config.get("network_def")
    if not isinstance(network, dict):
        raise ExplainInputError(f"{config_path} has no network_def: the bundle does not say which network it runs.")
    for section in ("preprocessing", "inferer"):
        if section not in config:
            raise ExplainInputError(f"{config_path} has no {section}: the bundle does not say how it runs its network.")
    loaded = [
        key
        for transform in _transforms(config.get("preprocessing"))
        if _name(transform) == "LoadImaged"
        for key in np.atleast_1d(transform.get("keys", []))
    ]
    if len(loaded) > 1 or _literal(network.get("in_channels"), 1) not in (1, None):
        raise ExplainInputError(
            f"The bundle {folder.name} takes several input images ({', '.join(map(str, loaded)) or 'channels'}): "
            "only bundles of one CT are supported for now."
        )
    inferer = config.get("inferer")
    inferer = inferer if isinstance(inferer, dict) else {}
    roi = _literal(inferer.get("roi_size"), None)
    window = tuple(int(size) for size in roi) if isinstance(roi, list) else ()
    classes = _classes(folder, _literal(network.get("out_channels"), 0) or 0)
    activation = next((t for t in _transforms(config.get("postprocessing")) if _name(t) == "Activationsd"), {})
    return BundleCard(
        path=config_path,
        name=_metadata(folder).get("name", folder.name),
        architecture=str(network.get("_target_", "")),
        kwargs={key: value for key, value in network.items() if not key.startswith("_")},
        weights=file_inside(folder, "models/model.pt", f"The bundle {folder.name}'s weights"),
        orientation="",  # the bundle's own preprocessing decides
        spacing=(0.0, 0.0, 0.0),  # known once the configuration is evaluated (resolved())
        intensity=None,
        head="sigmoid" if activation.get("sigmoid") is True else "softmax",
        classes=classes,
        colours=tuple((0.5, 0.5, 0.5) for _ in classes),
        window=window,  # in the network's own array order, like the arrays it is given
        overlap=float(_literal(inferer.get("overlap"), 0.25)),
        default_layer=None,
        extra={"bundle": str(folder)},
        axis_order="xyz" if len(window) != 2 else "xy",
        bundle_config=config,
    )


def _literal(value, default):
    """A plain value, or ``default`` for a reference or expression ("@...", "$...", "%...")."""
    return default if isinstance(value, str) and value[:1] in "$@%" else value


def _name(transform: dict) -> str:
    return str(transform.get("_target_", "")).split(".")[-1]


def _transforms(section) -> list[dict]:
    if isinstance(section, dict):
        section = section.get("transforms", [])
    return [item for item in section or [] if isinstance(item, dict)] if isinstance(section, list) else []


def _metadata(folder: Path) -> dict:
    path = file_inside(folder, "configs/metadata.json", f"The bundle {folder.name}'s metadata")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ExplainInputError(f"{path} is not valid JSON.") from None


def _classes(folder: Path, out_channels: int) -> tuple[str, ...]:
    outputs = _metadata(folder).get("network_data_format", {}).get("outputs", {})
    channel_def = next((output.get("channel_def") for output in outputs.values() if "channel_def" in output), None)
    if channel_def:
        return tuple(str(channel_def[key]) for key in sorted(channel_def, key=int))
    return tuple(f"class {index}" for index in range(max(int(out_channels), 1)))
