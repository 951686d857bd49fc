"""Model cards: a JSON file that says how to build a network, load its weights and prepare
a CT for it. Weights are untrusted input and load with ``weights_only=True``; the network
class must be one of an allow-list of MONAI architectures, so a card never names code to
run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ExplainInputError

BUNDLED_MODEL = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "kits_demo_unet.json"
ARCHITECTURES = ("UNet", "BasicUNet", "AttentionUnet", "SegResNet", "DynUNet")


@dataclass(frozen=True)
class Intensity:
    """Clip HU to [low, high], then (HU - centre) / scale."""

    low: float
    high: float
    centre: float
    scale: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        return ((np.clip(hu, self.low, self.high) - self.centre) / self.scale).astype(np.float32)


@dataclass(frozen=True)
class ModelCard:
    path: Path
    name: str
    architecture: str
    kwargs: dict
    weights: Path
    orientation: str  # axis codes the network's (x, y, z) index axes point to, e.g. "LPS"
    spacing: tuple[float, float, float]  # mm, in (x, y, z) index order
    intensity: Intensity | None  # None for nnU-Net, whose own preprocessor normalises
    head: str  # "softmax" or "sigmoid"
    classes: tuple[str, ...]
    colours: tuple[tuple[float, float, float], ...]
    window: tuple[int, ...]  # sliding window in the network's array order: (z, y, x), or (y, x) in 2D
    overlap: float
    default_layer: str | None
    extra: dict
    axis_order: str = "zyx"  # the network's array order: "zyx" (SimpleITK), "xyz" or "xy" (MONAI bundles)
    bundle_config: dict | None = None  # a trusted MONAI bundle's configuration (see monai_bundle)
    nnunet: object | None = None  # an nnU-Net results folder (nnunet.NnUNetModel)

    @property
    def tiling(self):
        """How the network runs window by window (window sizes, overlap, blend and grid)."""
        from .sliding_window import Tiling

        if self.nnunet is not None:
            from .nnunet import NnUNetTiling

            return NnUNetTiling(self.window, self.overlap)
        return Tiling(self.window, self.overlap)

    @property
    def prediction_labels(self) -> dict[int, int]:
        """Which class (or region) each value of the predicted label map stands for."""
        if self.head == "softmax":
            return {index: index for index in range(1, len(self.classes))}
        if self.nnunet is not None:
            return self.nnunet.region_labels
        return {index + 1: index for index in range(len(self.classes))}

    @property
    def segment_styles(self) -> dict[int, tuple[str, tuple[float, float, float]]]:
        """Label value of the predicted label map -> (segment name, colour)."""
        return {label: (self.classes[index], self.colours[index]) for label, index in self.prediction_labels.items()}

    @property
    def in_channels(self) -> int:
        return int(self.kwargs.get("in_channels", 1))

    @property
    def spatial_dims(self) -> int:
        """3, or 2 for a network run slice by slice along the model grid's first array axis
        (the third axis of its orientation: axial slices for LPS or RAS)."""
        return int(self.kwargs.get("spatial_dims", 3))

    def class_index(self, name_or_index) -> int:
        if isinstance(name_or_index, int) or str(name_or_index).isdigit():
            index = int(name_or_index)
            if 0 <= index < len(self.classes):
                return index
        elif name_or_index in self.classes:
            return self.classes.index(name_or_index)
        raise ExplainInputError(
            f"The model has no class {name_or_index!r}: choose one of "
            + ", ".join(f"{i} ({name})" for i, name in enumerate(self.classes))
            + "."
        )

    def build_network(self):
        """The eager network with its weights, in eval mode."""
        import monai.networks.nets as nets

        if self.nnunet is not None:
            return self.nnunet.build_network()
        if self.bundle_config is not None:
            from .monai_bundle import build_bundle_network

            return self._with_weights(build_bundle_network(self.bundle_config))
        if self.architecture not in ARCHITECTURES:
            raise ExplainInputError(
                f"Model card {self.path.name} names architecture {self.architecture!r}, which is not one of the "
                f"supported MONAI networks ({', '.join(ARCHITECTURES)})."
            )
        try:
            network = getattr(nets, self.architecture)(**self.kwargs)
        except TypeError as error:
            raise ExplainInputError(
                f"Model card {self.path.name}: the network arguments do not fit: {error}."
            ) from None
        return self._with_weights(network)

    def to_network_axes(self, array):
        """A (channels, z, y, x) array in the network's own axis order; the same operation
        maps the network's outputs back."""
        axes = {"zyx": None, "xyz": (0, 3, 2, 1), "xy": (0, 1, 3, 2)}[self.axis_order]
        return array if axes is None else np.ascontiguousarray(np.asarray(array).transpose(axes))

    def volume_to_network_axes(self, volume):
        """The same for a (z, y, x) array without channels (masks, heatmaps)."""
        return self.to_network_axes(np.asarray(volume)[None])[0]

    def _with_weights(self, network):
        state = load_weights(self.weights)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            first = str(error).splitlines()[0]
            raise ExplainInputError(
                f"The weights in {self.weights.name} do not fit the {self.architecture} described by "
                f"{self.path.name} ({first}): check the architecture arguments in the card."
            ) from None
        return network.eval()


def read_json(path: Path) -> dict:
    """A model format's JSON file, with a clear error when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExplainInputError(f"{path} is not valid JSON ({error}).") from None


def load_weights(path: Path) -> dict:
    """A state dict from an untrusted file: tensors and plain containers only."""
    import torch

    state = load_untrusted(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ExplainInputError(f"{path.name} is not a state dict of tensors: save model.state_dict() instead.")
    return state


def load_untrusted(path: Path, plain_types: tuple = ()):
    """torch.load with weights_only=True: tensors, containers and ``plain_types`` only, so
    that unpickling can never run code; damaged files and compiled models are refused
    with what to do."""
    import pickle
    import zipfile

    import torch

    if not path.is_file():
        raise ExplainInputError(f"The weights file {path} does not exist: check the model's files.")
    if _is_torchscript(path):
        raise ExplainInputError(
            f"{path.name} is a TorchScript (compiled) model: a CAM needs hooks inside an eager network, which "
            "compiled code does not allow. Save the eager model's weights instead, "
            "torch.save(model.state_dict(), 'weights.pt'), and name its architecture in the model card."
        )
    unpickling_errors = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError,
                         IndexError, KeyError, TypeError, AttributeError)  # fmt: skip
    try:
        with torch.serialization.safe_globals(list(plain_types)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except unpickling_errors as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExplainInputError(
            f"Cannot load weights from {path.name}: the file is damaged or holds more than tensors and plain "
            f"values ({first[:160]}). Only tensors are loaded, never code."
        ) from None


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (``code/``) and ``constants.pkl``; state dicts do not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def read_model_card(path=None, trust_bundle: bool = False, folds=None) -> ModelCard:
    """A model card from a JSON file or a folder holding one (default: the bundled model),
    from a MONAI bundle folder, which is read only with ``trust_bundle``, or from an nnU-Net
    results folder (``folds``: which folds to ensemble; default all that have a checkpoint)."""
    from .monai_bundle import is_bundle, read_bundle
    from .nnunet_folder import is_nnunet_folder, read_nnunet_folder

    path = Path(path) if path is not None else BUNDLED_MODEL
    if is_bundle(path):
        return read_bundle(path, trust_bundle)
    if is_nnunet_folder(path):
        return read_nnunet_folder(path, folds)
    if path.is_dir():
        cards = sorted(path.glob("*.json"))
        if len(cards) != 1:
            raise ExplainInputError(
                f"The model folder {path} must hold exactly one model card (.json); it holds {len(cards)}."
            )
        path = cards[0]
    if not path.is_file():
        raise ExplainInputError(f"The model card {path} does not exist: give a model card JSON or a model folder.")
    card = read_json(path)
    try:
        preprocessing = card["preprocessing"]
        intensity = preprocessing["intensity"]
        model_card = ModelCard(
            path=path,
            name=card.get("name", path.stem),
            architecture=card["architecture"],
            kwargs=dict(card["kwargs"]),
            weights=(path.parent / card["weights"]).resolve(),
            orientation=preprocessing["orientation"],
            spacing=tuple(float(v) for v in preprocessing["spacing"]),
            intensity=Intensity(*(float(intensity[key]) for key in ("low", "high", "centre", "scale"))),
            head=card.get("head", "softmax"),
            classes=tuple(card["classes"]),
            colours=tuple(tuple(c) for c in card.get("colours", [[0.5, 0.5, 0.5]] * len(card["classes"]))),
            window=tuple(int(v) for v in card["sliding_window"]["size"]),
            overlap=float(card["sliding_window"].get("overlap", 0.25)),
            default_layer=card.get("default_layer"),
            extra={key: value for key, value in card.items() if key in ("training", "validation")},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ExplainInputError(f"The model card {path.name} lacks or mistypes the entry {error}.") from None
    if model_card.spatial_dims not in (2, 3) or len(model_card.window) != model_card.spatial_dims:
        raise ExplainInputError(
            f"The model card {path.name} describes a {model_card.spatial_dims}D network with a sliding window of "
            f"{len(model_card.window)} sizes: give one size per spatial axis ((y, x) for 2D, (z, y, x) for 3D)."
        )
    return model_card
