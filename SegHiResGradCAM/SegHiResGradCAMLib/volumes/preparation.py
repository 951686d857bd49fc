"""From a CT as stored to the network's grid and back.

Forward: reorient (exact axis permutation and flips) to the model's orientation, resample
(linear) to the model's spacing over the same field of view, clip and normalise the
intensities. Backward: resample any map on the model grid onto the CT's own grid (same
size, spacing, origin and direction), linearly for heatmaps and logits. Both directions
go through physical space, so oblique, flipped and permuted storage all give the same
anatomy. ``card`` is anything with ``orientation``, ``spacing`` (x, y, z) and ``intensity``
(a ``models`` card, which calls ``to_model_grid`` from its ``prepare_input``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError
from .volume_io import reorient

AIR_HU = -1000.0


@dataclass(frozen=True)
class ModelInput:
    array: np.ndarray  # (channels, z, y, x) float32, normalised, on the model grid
    model_grid: sitk.Image  # geometry of the model grid (voxel values unused)
    original: sitk.Image  # the CT as given: the geometry results are returned on

    # The same interface as models.nnunet.NnUNetInput, so the pipeline serves both.
    def to_original(self, array: np.ndarray, labels: bool = False) -> sitk.Image:
        return to_original_grid(array, self, labels)

    def mask_to_model(self, mask: sitk.Image) -> np.ndarray:
        return mask_to_model_grid(mask, self)

    def labels_on_original(self, logits: np.ndarray, head: str) -> sitk.Image:
        return labels_on_original_grid(logits, self, head)


def model_grid_for(image: sitk.Image, card) -> sitk.Image:
    """An empty image on the model's grid covering the same field of view as ``image``."""
    reoriented = reorient(image, card.orientation)
    direction = np.array(reoriented.GetDirection()).reshape(3, 3)
    old_spacing, new_spacing = np.array(reoriented.GetSpacing()), np.array(card.spacing)
    size = np.maximum(np.round(np.array(reoriented.GetSize()) * old_spacing / new_spacing), 1).astype(int)
    origin = np.array(reoriented.GetOrigin()) + direction @ ((new_spacing - old_spacing) / 2)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetSpacing(new_spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def check_looks_like_ct(image: sitk.Image, name: str) -> None:
    statistics = sitk.MinimumMaximumImageFilter()
    statistics.Execute(image)
    low, high = statistics.GetMinimum(), statistics.GetMaximum()
    reasons = []
    if low > -300:
        reasons.append(f"its lowest value is {low:g}, where a CT's air is near -1000 (below -300)")
    if high < 100:
        reasons.append(f"its highest value is {high:g}, where a CT's bone or contrast reaches above 100")
    if high - low < 400:
        reasons.append(f"its values span {high - low:g}, where a CT's span at least 400")
    if reasons:
        raise ExplainInputError(
            f"{name} does not look like a CT in Hounsfield units ({'; '.join(reasons)}): give the "
            "CT image itself, not a label map or another modality."
        )


def to_model_grid(ct: sitk.Image, card) -> ModelInput:
    grid = model_grid_for(ct, card)
    resampled = sitk.Resample(ct, grid, sitk.Transform(), sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    array = card.intensity.apply(sitk.GetArrayFromImage(resampled))
    return ModelInput(array[None], grid, ct)


def segment_on_grid(mask: sitk.Image, grid: sitk.Image) -> np.ndarray:
    """A segment (nonzero voxels of any label map, on any grid) as a boolean [z, y, x] array
    on ``grid``'s geometry; partial voxels count when at least half inside."""
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.Resample(binary, grid, sitk.Transform(), sitk.sitkLinear, 0.0)) >= 0.5


def nonempty_segment(inside: np.ndarray, where: str) -> np.ndarray:
    """``inside``, refused with a message naming ``where`` it was looked for when it is empty."""
    if not inside.any():
        raise ExplainInputError(
            f"The segment has no voxel inside {where}: check that the mask belongs to this CT and is not empty."
        )
    return inside


def mask_to_model_grid(mask: sitk.Image, model_input: ModelInput) -> np.ndarray:
    """The segment on the model grid (``segment_on_grid``), refused when nothing is inside."""
    return nonempty_segment(
        segment_on_grid(mask, model_input.model_grid), "the CT's field of view at the model's resolution"
    )


def to_original_grid(array: np.ndarray, model_input: ModelInput, labels: bool = False) -> sitk.Image:
    """A [z, y, x] array on the model grid, resampled onto the CT's grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.CopyInformation(model_input.model_grid)
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    pixel = sitk.sitkUInt8 if labels else sitk.sitkFloat32
    return sitk.Resample(image, model_input.original, sitk.Transform(), interpolator, 0, pixel)


def labels_on_original_grid(logits: np.ndarray, model_input: ModelInput, head: str) -> sitk.Image:
    """The predicted label map on the CT's grid: logits resampled linearly, then argmax
    (softmax head), or the sigmoid regions thresholded at 0.5 with region i labelled i + 1
    and later (nested, smaller) regions winning."""
    original = model_input.original
    best = np.zeros(original.GetSize()[::-1], dtype=np.float32) - np.inf
    labels = np.zeros(original.GetSize()[::-1], dtype=np.uint8)
    for index, channel in enumerate(logits):
        resampled = sitk.GetArrayFromImage(to_original_grid(channel, model_input))
        if head == "softmax":
            better = resampled > best
            best[better] = resampled[better]
        else:
            better = resampled > 0
        labels[better] = index if head == "softmax" else index + 1
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(original)
    return image
