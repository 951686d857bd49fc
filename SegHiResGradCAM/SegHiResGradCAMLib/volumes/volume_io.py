"""Reading and writing CT volumes and label maps with their geometry (SimpleITK, LPS).

Orientation codes name the patient direction each index axis (i, j, k) increases towards:
L/R (+x/-x in LPS), P/A (+y/-y), S/I (+z/-z); KiTS NIfTI cases are "IPL".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError

_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}
_AXIS_OF = {letter: axis for (axis, _), letter in _LETTERS.items()}
_SIGN_OF = {letter: sign for (_, sign), letter in _LETTERS.items()}


def read_volume(path, what: str = "image") -> sitk.Image:
    """A 3D scalar volume from any file SimpleITK reads (NIfTI, NRRD, MHA, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ExplainInputError(f"The {what} file {path} does not exist.")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise ExplainInputError(
            f"Cannot read {path.name} as a volume: give a NIfTI (.nii, .nii.gz), NRRD or MHA file."
        ) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ExplainInputError(
            f"{path.name} is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
            f"component(s) per voxel: a 3D scalar volume (one CT series) is needed."
        )
    return image


def write_volume(image: sitk.Image, path) -> None:
    """Writes through a temporary file in the same folder, so that an interrupted write
    never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    try:
        sitk.WriteImage(image, str(partial), useCompression=True)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def orientation_code(image: sitk.Image) -> str:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    code = ""
    for column in direction.T:
        axis = int(np.argmax(np.abs(column)))
        code += _LETTERS[(axis, int(np.sign(column[axis])))]
    return code


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """The same voxels with index axes permuted and flipped to point towards ``code``
    (exact: no interpolation; origin and direction follow)."""
    current = orientation_code(image)
    order = [next(i for i, letter in enumerate(current) if _AXIS_OF[letter] == _AXIS_OF[wanted]) for wanted in code]
    permuted = sitk.PermuteAxes(image, order) if order != [0, 1, 2] else image
    current = orientation_code(permuted)
    flips = [_SIGN_OF[have] != _SIGN_OF[wanted] for have, wanted in zip(current, code, strict=True)]
    return sitk.Flip(permuted, flips) if any(flips) else permuted


def rotated(image: sitk.Image, degrees: tuple[float, float, float], labels: bool = False) -> sitk.Image:
    """The image resampled onto an oblique grid (rotated about its centre), for geometry tests."""
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    rotation = sitk.Euler3DTransform(centre, *np.deg2rad(degrees))
    direction = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.array(image.GetDirection()).reshape(3, 3)
    reference = sitk.Image(image.GetSize(), image.GetPixelID())
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(direction.ravel().tolist())
    corner = np.array(centre) - direction @ (np.array(image.GetSpacing()) * (np.array(image.GetSize()) - 1) / 2)
    reference.SetOrigin(corner.tolist())
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    background = 0 if labels else -1000
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, background, image.GetPixelID())
