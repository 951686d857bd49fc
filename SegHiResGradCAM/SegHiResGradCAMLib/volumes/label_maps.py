"""A segment given as a file: which voxels are M.

A mask must be a label map. A probability map or the CT itself given by mistake would make
M nearly the whole volume and the explanation silently wrong, so floating-point values
need an explicit threshold, and image-like contents (negative values, many distinct values)
are refused. A label map with several labels is explained as its nonzero voxels, and the
run says so; ``label`` picks one of them.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError

MAX_LABELS = 64  # more distinct values than a segmentation has labels: an image, not a label map


def segment_voxels(image: sitk.Image, name: str, threshold: float | None = None, label: int | None = None):
    """(binary uint8 image on the mask's grid, a note for the user or None)."""
    values = sitk.GetArrayViewFromImage(image)
    if threshold is not None:
        chosen = values >= threshold
        note = f"M: the voxels of {name} at or above {threshold:g}"
    else:
        present = [int(value) for value in _label_values(values, name) if value != 0]
        if label is not None:
            if label not in present:
                raise ExplainInputError(
                    f"{name} has no voxel of label {label}; its labels are {', '.join(map(str, present)) or 'none'}."
                )
            chosen, note = values == label, f"M: the voxels of label {label} in {name}"
        else:
            chosen = values != 0
            note = None
            if len(present) > 1:
                note = (f"M: all nonzero voxels of {name}, which holds labels {', '.join(map(str, present))} "
                        "(--mask-label N explains one)")  # fmt: skip
    if not chosen.any():
        raise ExplainInputError(f"{name} selects no voxel: M would be empty. Give a mask with the segment in it.")
    binary = sitk.GetImageFromArray(chosen.astype(np.uint8))
    binary.CopyInformation(image)
    return binary, note


def _label_values(values: np.ndarray, name: str) -> list:
    """The distinct values of a label map, refusing what is not one."""
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        raise ExplainInputError(f"{name} holds NaN or infinite values: a mask must be a label map.")
    if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
        raise ExplainInputError(
            f"{name} holds fractional values ({float(values.min()):g} to {float(values.max()):g}), like a probability "
            "map: a mask must be a label map. Pass --mask-threshold 0.5 (or another value) to explain the voxels at "
            "or above a threshold."
        )
    distinct: set = set()
    for plane in values.reshape(values.shape[0], -1) if values.ndim > 1 else [values]:  # slice by slice: little memory
        distinct.update(np.unique(plane).tolist())
        if len(distinct) > MAX_LABELS:
            break
    if min(distinct) < 0 or len(distinct) > MAX_LABELS:
        many = f"more than {MAX_LABELS}" if len(distinct) > MAX_LABELS else str(len(distinct))
        raise ExplainInputError(
            f"{name} does not look like a label map ({many} distinct values, from {min(distinct):g}): is it the CT or "
            "another image? Give the segment's label map."
        )
    return sorted(distinct)
