"""A segment given as a file: which voxels are M.

A mask must be a label map. A probability map or the CT itself given by mistake would make
M nearly the whole volume and the explanation silently wrong, so floating-point values
need an explicit threshold, and image-like contents (negative values, many distinct values)
are refused. From a label map with several labels, M is the label of the target class where
the mask says which one that is (segment names in a Slicer .seg.nrrd header, or, for a
softmax model, label values that are the model's class indices), and the run says so;
otherwise it is refused with its labels listed, since every nonzero voxel would explain
several classes at once. ``label`` picks one explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError

MAX_LABELS = 64  # more distinct values than a segmentation has labels: an image, not a label map


@dataclass(frozen=True)
class TargetClass:
    """What a mask's labels are matched against: the model's class being explained."""

    index: int  # the class's index among the model's outputs
    name: str
    softmax: bool  # a softmax head, whose class indices are the usual label values


def class_name_key(name: str) -> str:
    """A class or segment name as compared and shown in columns: lower case, "tumor" as "tumour"."""
    return name.strip().lower().replace("tumor", "tumour")


def same_class_name(first: str, second: str) -> bool:
    return class_name_key(first) == class_name_key(second)


def segment_names(image: sitk.Image) -> dict[int, str]:
    """Label value -> segment name, from a Slicer .seg.nrrd header (SegmentN_Name and
    SegmentN_LabelValue); empty for any other file."""
    keys = set(image.GetMetaDataKeys())
    names = {}
    index = 0
    while f"Segment{index}_Name" in keys:
        value = image.GetMetaData(f"Segment{index}_LabelValue") if f"Segment{index}_LabelValue" in keys else ""
        if value.strip().isdigit():
            names[int(value)] = image.GetMetaData(f"Segment{index}_Name")
        index += 1
    return names


def _label_of_target(image: sitk.Image, name: str, present: list[int], target: TargetClass | None):
    """(label, note) for a mask with several labels and no explicit one; refuses when the
    mask does not say which label is the target class."""
    names = segment_names(image)
    listed = ", ".join(f"{value} ({names[value]})" if value in names else str(value) for value in present)
    if target is not None:
        matching = [value for value in present if value in names and same_class_name(names[value], target.name)]
        others = f"its labels are {listed} (--mask-label N explains another)"
        if len(matching) == 1:
            label = matching[0]
            return label, f"M: label {label} ('{names[label]}') of {name}, the segment named like the target; {others}"
        if not names and target.softmax and target.index in present:
            return target.index, (
                f"M: label {target.index} of {name}, the target class {target.name}'s index in the model; {others}"
            )
    wanted = f" for the class {target.name}" if target is not None else ""
    raise ExplainInputError(
        f"{name} holds several labels ({listed}) and does not say which one is the segment{wanted}: every nonzero "
        "voxel would explain several classes at once. Choose one with --mask-label N, or give a mask with the segment "
        "alone."
    )


def segment_voxels(
    image: sitk.Image,
    name: str,
    threshold: float | None = None,
    label: int | None = None,
    target: TargetClass | None = None,
):
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
        elif len(present) > 1:
            chosen_label, note = _label_of_target(image, name, present, target)
            chosen = values == chosen_label
        else:
            chosen, note = values != 0, None
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
