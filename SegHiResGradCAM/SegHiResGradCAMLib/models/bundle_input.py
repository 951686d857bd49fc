"""A CT prepared by a MONAI bundle's own preprocessing, and the way back through MONAI's
inverse of it (see ``monai_bundle``): a ``card.PreparedInput`` like the other formats'."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import ExplainInputError, first_line
from ..volumes.preparation import nonempty_segment, segment_on_grid

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
# Transforms that never change an image's geometry, so that inverting them is not needed.
GEOMETRY_FREE_MODULES = ("monai.transforms.intensity", "monai.transforms.io")
GEOMETRY_FREE = {
    "EnsureChannelFirstd",
    "EnsureTyped",
    "ToTensord",
    "CastToTyped",
    "Identityd",
    "CopyItemsd",
    "DeleteItemsd",
    "SelectItemsd",
    "ToDeviced",
    "ToNumpyd",
    "EnsureChannelFirst",
    "EnsureType",
    "ToTensor",
    "CastToType",
    "Identity",
}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class BundleInput:
    array: np.ndarray  # (channels, z, y, x) float32: MONAI's preprocessed tensor, transposed
    original: sitk.Image  # the CT as given
    card: Any  # the bundle's card (monai_bundle.BundleCard)
    data: dict  # MONAI's preprocessed data (the image a MetaTensor with its applied operations)
    key: str  # the image's key in ``data``

    @property
    def _image(self):
        return self.data[self.key]

    def _meta_tensor(self, array_xyz: np.ndarray):
        """An array on the preprocessed grid as MONAI's own (channels, x, y, z) MetaTensor."""
        from monai.data import MetaTensor

        return MetaTensor(
            torch.as_tensor(np.ascontiguousarray(array_xyz)),
            meta=dict(self._image.meta),
            applied_operations=list(self._image.applied_operations),
        )

    def _invert(self, tensor, nearest: bool):
        from monai.transforms import Invertd

        inverse = Invertd(
            keys="inverted", transform=self.card.parsed("preprocessing"), orig_keys=self.key, nearest_interp=nearest
        )
        return inverse({self.key: self._image, "inverted": tensor})["inverted"]

    def _on_ct(self, loaded_xyz: np.ndarray, pixel) -> sitk.Image:
        """An array on the loaded file's voxel grid (x, y, z) as an image on the CT's grid."""
        if tuple(loaded_xyz.shape) != tuple(self.original.GetSize()):
            raise ExplainInputError(
                f"The bundle's inverse gave an array of {loaded_xyz.shape}, not the CT's {self.original.GetSize()}: "
                "its preprocessing changes the grid in a way MONAI does not record."
            )
        image = sitk.GetImageFromArray(np.ascontiguousarray(loaded_xyz.transpose(2, 1, 0)).astype(pixel))
        image.CopyInformation(self.original)
        return image

    def to_original(self, array: np.ndarray, labels: bool = False) -> sitk.Image:
        """A (z, y, x) map on the preprocessed grid back on the CT's grid through MONAI's
        inverse of the preprocessing: linear for maps, nearest for labels."""
        tensor = self._meta_tensor(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)[None])
        inverted = np.asarray(self._invert(tensor, nearest=labels).detach().cpu())[0]
        return self._on_ct(np.rint(inverted) if labels else inverted, np.uint8 if labels else np.float32)

    def mask_to_model(self, mask: sitk.Image) -> np.ndarray:
        """A segment on any grid, on the preprocessed grid (at least half inside), which
        MONAI's affine (RAS) and shape describe exactly."""
        affine = np.asarray(self._image.affine, dtype=float)
        shape = tuple(int(size) for size in self._image.shape[1:])
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        grid = sitk.Image([int(size) for size in shape], sitk.sitkUInt8)
        grid.SetSpacing(spacing.tolist())
        grid.SetDirection((LPS_FROM_RAS @ affine[:3, :3] / spacing).ravel().tolist())
        grid.SetOrigin((LPS_FROM_RAS @ affine[:3, 3]).tolist())
        return nonempty_segment(segment_on_grid(mask, grid), "the CT's field of view on the bundle's grid")

    def labels_on_original(self, logits: np.ndarray, head: str) -> sitk.Image:
        """The label map as the bundle's own postprocessing makes it (without saving it),
        on the CT's grid."""
        from monai.transforms import Compose, Invertd

        postprocessing = self.card.parsed("postprocessing") if "postprocessing" in self.card.bundle_config else None
        steps = (
            [t for t in transforms_of(postprocessing) if not type(t).__name__.startswith("Save")]
            if (postprocessing is not None)
            else []
        )
        data = {**self.data, "pred": self._meta_tensor(np.asarray(logits, dtype=np.float32).transpose(0, 3, 2, 1))}
        inverts = any(isinstance(step, Invertd) for step in steps)
        prediction = Compose(steps)(data)["pred"] if steps else data["pred"]
        prediction = np.asarray(prediction.detach().cpu() if hasattr(prediction, "detach") else prediction)
        if prediction.shape[0] > 1:  # the postprocessing did not make labels: argmax or regions as elsewhere
            prediction = (prediction.argmax(0) if head == "softmax" else _region_labels(prediction))[None]
        if not inverts:
            return self.to_original(prediction[0].transpose(2, 1, 0), labels=True)
        return self._on_ct(np.rint(prediction[0]), np.uint8)


def _region_labels(regions: np.ndarray) -> np.ndarray:
    labels = np.zeros(regions.shape[1:], dtype=np.uint8)
    for index, region in enumerate(regions):
        labels[region > 0] = index + 1
    return labels


def prepare_bundle_input(card, ct: sitk.Image, path) -> BundleInput:
    """Runs the bundle's preprocessing with MONAI on the CT file (a temporary NIfTI of ``ct``
    when the file is not NIfTI, which MONAI's default reader needs)."""
    preprocessing = card.parsed("preprocessing")
    check_invertible(preprocessing)
    loaders = [t for t in transforms_of(preprocessing) if type(t).__name__ == "LoadImaged"]
    if len(loaders) != 1 or len(loaders[0].keys) != 1:
        raise ExplainInputError("The bundle's preprocessing must load exactly one image (LoadImaged with one key).")
    key = loaders[0].keys[0]
    scratch = None
    try:
        if path is None or not str(path).lower().endswith(NIFTI_SUFFIXES):
            scratch = Path(tempfile.mkdtemp(prefix="seghiresgradcam-bundle-"))
            path = scratch / "ct.nii.gz"
            sitk.WriteImage(ct, str(path))
        try:
            data = preprocessing({key: str(path)})
        except Exception as error:  # the bundle's own code
            raise ExplainInputError(f"The bundle's preprocessing failed on this CT: {first_line(error)}") from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if isinstance(data, list):
        raise ExplainInputError("The bundle's preprocessing makes several samples from one CT; it must make one.")
    image = data[key]
    if not hasattr(image, "applied_operations") or image.dim() != 4:
        raise ExplainInputError("The bundle's preprocessing must give one (channels, x, y, z) MONAI image.")
    array = np.ascontiguousarray(np.asarray(image.detach().cpu(), dtype=np.float32).transpose(0, 3, 2, 1))
    return BundleInput(array, ct, card, data, key)


def transforms_of(compose) -> list:
    """The transforms of a (nested) Compose, in order."""
    found = []
    for transform in getattr(compose, "transforms", [compose]):
        found += transforms_of(transform) if hasattr(transform, "transforms") else [transform]
    return found


def check_invertible(preprocessing) -> None:
    """Refuses preprocessing with a spatial transform MONAI cannot invert: the map could not
    be put back on the CT."""
    from monai.transforms import InvertibleTransform

    for transform in transforms_of(preprocessing):
        name = type(transform).__name__
        geometry_free = name in GEOMETRY_FREE or type(transform).__module__.startswith(GEOMETRY_FREE_MODULES)
        if not geometry_free and not isinstance(transform, InvertibleTransform):
            raise ExplainInputError(
                f"The bundle's preprocessing uses {name}, which MONAI cannot invert, so the explanation could not be "
                "returned to the CT's grid. Remove it from the preprocessing or use an invertible transform."
            )
