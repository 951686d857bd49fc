"""The model card type: how to build a network, load its weights and prepare a CT for it,
whatever format the model came in (``card_json``, ``monai_bundle``, ``nnunet_folder``; a
format with its own computation subclasses ModelCard). Weights are untrusted input and
load with ``weights_only=True``; the network class of a plain card must be one of an
allow-list of MONAI architectures, so a card never names code to run.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..errors import ExplainInputError, first_line

if TYPE_CHECKING:
    import SimpleITK as sitk


class PreparedInput(Protocol):
    """A CT prepared as a model format prepares it, with the way back to the CT's grid: what
    ``prepare_input`` of every format returns (``volumes.preparation.ModelInput`` for model
    cards, ``bundle_input.BundleInput``, ``nnunet.NnUNetInput``; mypy checks each)."""

    @property
    def array(self) -> np.ndarray:
        """(channels, z, y, x) float32 on the model grid, in the pipeline's axis order."""
        ...

    @property
    def original(self) -> sitk.Image:
        """The CT as given: the geometry that results are returned on."""
        ...

    def to_original(self, array: np.ndarray, labels: bool = False) -> sitk.Image:
        """A map on the model grid (z, y, x), back on the CT's grid (nearest for labels)."""
        ...

    def mask_to_model(self, mask: sitk.Image) -> np.ndarray:
        """M given on any grid, on the model grid (boolean, z, y, x)."""
        ...

    def labels_on_original(self, logits: np.ndarray, head: str) -> sitk.Image:
        """The predicted label map on the CT's grid, as the format exports it."""
        ...


ARCHITECTURES = ("UNet", "BasicUNet", "AttentionUnet", "SegResNet", "DynUNet")


# The network of the last model used in this process (see ModelCard.network).
_BUILT: dict[tuple, object] = {}


def _file_identity(path: Path) -> tuple:
    status = Path(path).stat()
    return (str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


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
    blend: str = "gaussian"  # how overlapping windows are blended: "gaussian" or "constant" (MONAI's modes)

    def __post_init__(self):
        from ..volumes.label_maps import class_name_key

        keys = [class_name_key(name) for name in self.classes]
        repeated = sorted({name for name, key in zip(self.classes, keys, strict=True) if keys.count(key) > 1})
        if repeated:
            raise ExplainInputError(
                f"{self.path.name} names the class {repeated[0]!r} more than once (classes "
                f"{list(self.classes)}): a class name must say which output channel it is; "
                "give each class its own name."
            )

    def network(self):
        """``build_network()``, built once per process while the model's files are unchanged.

        A cohort explains many CTs with one model, as nnU-Net's predictor does: building the
        network (reading and checking the weights, evaluating a bundle's configuration) is
        done once per worker, not once per case. Every explanation leaves the network as it
        was, so reusing it changes no map; a changed file is a new key. One network is kept.
        """
        if not all(Path(path).is_file() for path in self.input_files):
            return self.build_network()  # which refuses the missing file, saying which
        key = self.identity()
        if key not in _BUILT:
            _BUILT.clear()  # one model at a time: a network can be large
            _BUILT[key] = self.build_network()
        return _BUILT[key]

    def identity(self) -> tuple:
        """What changes when the network would: the format, its arguments and each model
        file's path, size and modification time."""
        return (type(self).__name__, repr(self.kwargs), tuple(_file_identity(path) for path in self.input_files))

    @property
    def tiling(self):
        """How the network runs window by window (window sizes, overlap, blend and grid)."""
        from ..cam.sliding_window import Tiling

        return Tiling(self.window, self.overlap, self.blend)

    @property
    def prediction_labels(self) -> dict[int, int]:
        """Which class (or region) each value of the predicted label map stands for."""
        if self.head == "softmax":
            return {index: index for index in range(1, len(self.classes))}
        return {index + 1: index for index in range(len(self.classes))}

    @property
    def input_files(self) -> tuple[Path, ...]:
        """Every file the model is read from; no output may overwrite one."""
        return (self.path, self.weights)

    @property
    def target_classes(self) -> tuple[str, ...]:
        """The classes a user can explain: every region of a sigmoid head, every class but
        the background of a softmax head."""
        return self.classes if self.head == "sigmoid" else self.classes[1:]

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

        if self.architecture not in ARCHITECTURES:
            raise ExplainInputError(
                f"Model card {self.path.name} names architecture {self.architecture!r}, which is not one of the "
                f"supported MONAI networks ({', '.join(ARCHITECTURES)})."
            )
        import torch

        architecture = getattr(nets, self.architecture)
        try:
            with torch.device("meta"):  # no memory: count the parameters before building for real
                probe = architecture(**self.kwargs)
        except (TypeError, ValueError, AssertionError) as error:
            message = f"Model card {self.path.name}: the network arguments do not fit: {error}."
            raise ExplainInputError(message) from None
        weights_bytes = check_network_memory(probe, self.path.name)
        network = self._with_weights(architecture(**self.kwargs), weights_bytes)
        check_window_fits(probe, self.window, self.in_channels, f"Model card {self.path.name}", network)
        return network

    def resolved(self) -> ModelCard:
        """The card with what only the computation can know filled in (a MONAI bundle's
        evaluated configuration); a plain card knows everything already."""
        return self

    def prepare_input(self, ct, path=None) -> PreparedInput:
        """The CT (a SimpleITK image; ``path``, its file, for formats that read it themselves)
        on the network's grid, with the way back to the CT's grid: reoriented, resampled and
        normalised as the card says (``volumes.preparation``)."""
        from ..volumes.preparation import to_model_grid

        return to_model_grid(ct, self)

    def to_network_axes(self, array):
        """A (channels, z, y, x) array in the network's own axis order; the same operation
        maps the network's outputs back."""
        axes = {"zyx": None, "xyz": (0, 3, 2, 1), "xy": (0, 1, 3, 2)}[self.axis_order]
        return array if axes is None else np.ascontiguousarray(np.asarray(array).transpose(axes))

    def volume_to_network_axes(self, volume):
        """The same for a (z, y, x) array without channels (masks, heatmaps)."""
        return self.to_network_axes(np.asarray(volume)[None])[0]

    def _with_weights(self, network, expected_bytes: float | None = None):
        state = load_weights(self.weights, expected_bytes)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:
            raise ExplainInputError(
                f"The weights in {self.weights.name} do not fit the {self.architecture} described by "
                f"{self.path.name} ({first_line(error)}): check the architecture arguments in the card."
            ) from None
        return network.eval()


def model_grid_bytes(size, spacing, card) -> tuple[float, float]:
    """(voxels, bytes) of a CT of ``size`` voxels at ``spacing`` mm once on the model's grid:
    the input, the logits, the mask, the heatmap and its copy back, as float32. Judged from
    the header alone, so a front end can warn before a run and the pipeline can refuse one."""
    extent = np.prod(np.asarray(size, dtype=float) * np.asarray(spacing, dtype=float))
    grid = [value if value > 0 else min(spacing) for value in card.spacing]  # 0: the slice axis kept
    voxels = float(extent / np.prod(grid))
    arrays = card.in_channels + len(card.classes) + 3
    return voxels, voxels * 4 * arrays


def model_grid_memory_problem(size, spacing, card, name: str) -> str | None:
    """Why a CT of ``size`` voxels at ``spacing`` mm would not fit in memory on the model's
    grid (say, a header with a 3000 mm spacing), judged from the header alone; None when it
    fits. The pipeline refuses such a CT with it, and the Slicer module warns before a run."""
    from ..volumes.volume_io import memory_problem

    voxels, needed = model_grid_bytes(size, spacing, card)
    grid = " x ".join(f"{value if value > 0 else min(spacing):g}" for value in card.spacing)
    return memory_problem(
        f"{name} on the model's grid ({voxels:.3g} voxels at {grid} mm)",
        needed,
        "check the CT's spacing in its header, or crop the CT.",
    )


def check_network_memory(network, name: str) -> int:
    """Refuses a network whose weights alone (twice: built, then loaded) would not fit;
    returns the bytes of its weights."""
    from ..volumes.volume_io import check_memory

    parameters = sum(tensor.numel() * tensor.element_size() for tensor in network.state_dict().values())
    check_memory(
        f"The network of {name} ({parameters / 2**20:.0f} MB of weights)",
        2 * parameters,
        "check its channel numbers; this machine cannot hold it.",
    )
    return parameters


def check_window_fits(probe, window, in_channels: int, name: str, network=None) -> None:
    """Refuses a window the network cannot take (smaller than its downsampling or its
    normalisation allows) and one whose activations and their gradients would not fit in
    memory, before any tensor of that size is made.

    The shapes come from ``network`` (the built network, in eval mode) run on an empty batch:
    no arithmetic and no memory. A network that refuses an empty batch, reshapes its
    activations into another rank (a Swin transformer's windows of tokens, where the batch
    axis no longer counts samples) or shrinks one to a single voxel (which a normalisation
    refuses for one sample but lets through with none), or none given, is run on one sample
    of meta tensors (``probe``, built on the meta device), which decides: the same shapes,
    but PyTorch's meta kernels first import its symbolic-shape and compiler modules, a second
    of CPU per process.
    """
    import torch

    from ..volumes.volume_io import check_memory

    shown = " x ".join(map(str, window))
    refusals = (RuntimeError, ValueError, AssertionError, IndexError, TypeError)
    activations = None
    if network is not None:
        empty = torch.empty((0, in_channels, *window))
        with contextlib.suppress(*refusals):
            outputs = _leaf_outputs(network, empty)
            if all(_sample_shaped(shape, empty.dim()) for shape, _ in outputs):
                activations = float(sum(math.prod(shape[1:]) * size for shape, size in outputs))
    if activations is None:
        try:
            outputs = _leaf_outputs(probe, torch.empty((1, in_channels, *window), device="meta"))
        except refusals as error:
            raise ExplainInputError(
                f"{name}: the network cannot run on a window of {shown} voxels "
                f"({first_line(error, 160)}): give a larger sliding window."
            ) from None
        activations = float(sum(math.prod(shape) * size for shape, size in outputs))
    check_memory(
        f"{name}: one window of {shown} voxels ({activations / 2**30:.1f} GB of activations, as much again "
        "for their gradients)",
        2 * activations,
        "give a smaller sliding window.",
    )


def _sample_shaped(shape: tuple[int, ...], rank: int) -> bool:
    """Whether an activation of an empty batch measures one sample's: the input's rank (the
    first axis still counts samples) and more than one voxel."""
    return len(shape) == rank and math.prod(shape[2:]) > 1


def _leaf_outputs(network, batch) -> list[tuple[tuple[int, ...], int]]:
    """(shape, bytes per element) of each tensor the network's leaf modules return on ``batch``."""
    import torch

    outputs = []

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            outputs.append((tuple(output.shape), output.element_size()))

    handles = [module.register_forward_hook(record) for module in network.modules() if not any(module.children())]
    try:
        with torch.no_grad():
            network(batch)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def file_inside(folder: Path, name, what: str) -> Path:
    """``folder / name`` with links resolved, refused unless it lies inside ``folder``: a
    model's files never send the program anywhere else on the disk."""
    if not isinstance(name, str) or not name:
        raise ExplainInputError(f"{what}: expected a file name, got {name!r}.")
    root = folder.resolve()
    resolved = (folder / name).resolve()
    if not resolved.is_relative_to(root):
        raise ExplainInputError(
            f"{what} ({name}) lie outside the model's folder {folder}: a model's files must stay in its folder "
            "(links included). Copy them next to it."
        )
    return resolved


def read_json(path: Path) -> dict:
    """A model format's JSON file, with a clear error when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExplainInputError(f"{path} is not valid JSON ({error}).") from None


def load_weights(path: Path, expected_bytes: float | None = None) -> dict:
    """A state dict from an untrusted file: tensors and plain containers only; with
    ``expected_bytes`` (the network's weights), a file whose tensor data is much larger is
    refused before it is loaded."""
    import torch

    state = load_untrusted(path, expected_bytes=expected_bytes)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ExplainInputError(f"{path.name} is not a state dict of tensors: save model.state_dict() instead.")
    return state


def load_untrusted(path: Path, plain_types: tuple = (), expected_bytes: float | None = None):
    """torch.load with weights_only=True: tensors, containers and ``plain_types`` only, so
    that unpickling can never run code; damaged files and compiled models are refused
    with what to do, and so is a file whose records would unpack to more than memory holds
    (or, with ``expected_bytes``, to more than twice the network's weights)."""
    import pickle
    import zipfile

    import torch

    if not path.is_file():
        raise ExplainInputError(f"The weights file {path} does not exist: check the model's files.")
    _check_unpacked_size(path, expected_bytes)
    if _is_torchscript(path):
        raise ExplainInputError(
            f"{path.name} is a TorchScript (compiled) model: a CAM needs hooks inside an eager network, which "
            "compiled code does not allow. Save the eager model's weights instead, "
            "torch.save(model.state_dict(), 'weights.pt'), and name its architecture in the model card."
        )
    unpickling_errors = (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
    )
    try:
        with torch.serialization.safe_globals(list(plain_types)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except unpickling_errors as error:
        raise ExplainInputError(
            f"Cannot load weights from {path.name}: the file is damaged or holds more than tensors and plain "
            f"values ({_unpickling_reason(error)}). Only tensors are loaded, never code."
        ) from None


def _unpickling_reason(error: Exception) -> str:
    """torch's reason in one whole sentence (which global it refused, say), without its advice
    to load the file unsafely, which is never given."""
    paragraphs = [" ".join(part.split()) for part in str(error).split("\n\n") if part.strip()]
    useful = [part for part in paragraphs if "weights_only" not in part and "safe_globals" not in part]
    sentence = (useful or paragraphs[:1] or [type(error).__name__])[0]
    sentence = sentence.split(". ")[0].rstrip(".") if "weights_only" not in sentence else "Weights only load failed"
    return sentence if len(sentence) <= 200 else sentence[:200].rsplit(" ", 1)[0] + " ..."


def _check_unpacked_size(path: Path, expected_bytes: float | None) -> None:
    """The sizes the archive's records declare, checked before torch reads (and allocates) them."""
    import zipfile

    from ..volumes.volume_io import check_memory

    if not zipfile.is_zipfile(path):
        return  # the legacy format: torch.load reads it record by record as it goes
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = float(sum(record.file_size for record in archive.infolist()))
    except (zipfile.BadZipFile, OSError):
        return  # damaged: torch.load says so below
    if expected_bytes is not None and unpacked > 2 * expected_bytes + 2**20:
        raise ExplainInputError(
            f"{path.name} unpacks to {unpacked / 2**20:.0f} MB, but the network it should fit "
            f"has {expected_bytes / 2**20:.1f} MB of weights: it is not this network's weights "
            "file (or it is inflated on purpose); it was not loaded."
        )
    check_memory(f"{path.name} ({unpacked / 2**30:.1f} GB unpacked)", unpacked, "it cannot be loaded here.")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (``code/``) and ``constants.pkl``; state dicts do not."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
