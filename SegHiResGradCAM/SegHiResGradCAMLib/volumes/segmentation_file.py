"""A Slicer segmentation file (.seg.nrrd) as M: a segment chosen by name.

Read with slicerio (the Slicer community's reader of these files), so that segment names,
label values, layers (overlapping segments stored in several layers) and terminology come
as Slicer wrote them. A segment is chosen by ``--segment NAME``; without one, a file of one
segment gives it, and otherwise the segment named like the target class ("tumor" and
"tumour" alike), said in a note; any other case is refused with the segments listed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError
from .label_maps import same_class_name

SLICERIO_ADVICE = "Reading .seg.nrrd files needs slicerio: pip install 'seghiresgradcam[segmentation]'."


def is_segmentation_file(path) -> bool:
    return Path(path).name.lower().endswith(".seg.nrrd")


def read_segment(path, segment: str | None, target_name: str | None = None) -> tuple[sitk.Image, str | None]:
    """(the segment as a binary image in the file's geometry, a note for the user or None)."""
    try:
        import slicerio
    except ImportError:
        raise ExplainInputError(SLICERIO_ADVICE) from None
    path = Path(path)
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as error:  # the reader's own errors: a damaged or foreign file
        raise ExplainInputError(f"Cannot read {path.name} as a Slicer segmentation ({error}).") from None
    names = [entry["name"] for entry in segmentation["segments"]]
    listed = ", ".join(f"'{name}'" for name in names) or "none"
    note = None
    if segment is not None:
        chosen = [name for name in names if name == segment] or [
            name for name in names if same_class_name(name, segment)
        ]
        if not chosen:
            raise ExplainInputError(f"{path.name} has no segment named '{segment}'; its segments are {listed}.")
    elif len(names) == 1:
        chosen = names
    else:
        chosen = [name for name in names if target_name is not None and same_class_name(name, target_name)]
        if len(chosen) != 1:
            raise ExplainInputError(f"{path.name} holds the segments {listed}: choose one with --segment NAME.")
        note = f"M: the segment '{chosen[0]}' of {path.name}, named like the target; its segments are {listed}"
    mask = slicerio.segment_mask(segmentation, chosen[0])  # (i, j, k)
    if not mask.any():
        raise ExplainInputError(f"The segment '{chosen[0]}' of {path.name} is empty: M would be empty.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.transpose(2, 1, 0)).astype(np.uint8))
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"], dtype=float)
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((ijk_to_lps[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin(ijk_to_lps[:3, 3].tolist())
    return image, note
