"""A CT given as a DICOM series: a folder, or any file of the series.

Read with SimpleITK's series reader (GDCM), which applies each slice's rescale slope and
intercept, after the checks a radiologist expects: one series (or the one asked for), no
missing or duplicate slices, every slice in the same orientation (a localizer mixed into
the series is left out, and said so), slices stacked along their normal (a gantry-tilted
series is refused: resample it first), and a volume, not a single 2D slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError

SERIES_UID, SERIES_DESCRIPTION = "0020|000e", "0008|103e"
POSITION, ORIENTATION, IMAGE_TYPE = "0020|0032", "0020|0037", "0008|0008"
SPACING_TOLERANCE = 0.01  # relative: gaps between slices that differ more are uneven
DIRECTION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DicomSlice:
    path: Path
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: tuple[float, ...]  # ImageOrientationPatient, six direction cosines
    localizer: bool


def is_dicom_file(path: Path) -> bool:
    """Whether GDCM reads the file (a DICOM file, whatever its name)."""
    try:
        return sitk.ImageFileReader.GetImageIOFromFileName(str(path)) == "GDCMImageIO"
    except RuntimeError:
        return False


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _tag(reader: sitk.ImageFileReader, tag: str) -> str:
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def series_in(folder: Path) -> dict[str, list[str]]:
    """Series instance UID -> its files (GDCM's grouping) of a folder."""
    return {
        uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    }


def _describe(uid: str, files: list[str]) -> str:
    description = _tag(_header(Path(files[0])), SERIES_DESCRIPTION)
    return f"{uid} ({description + ', ' if description else ''}{len(files)} files)"


def choose_series(path: Path, series: str | None) -> tuple[str, list[str]]:
    """The series to read: the one asked for, the one the given file belongs to, or the only
    one in the folder; several without a choice are refused with each listed."""
    folder = path if path.is_dir() else path.parent
    found = series_in(folder)
    if not found:
        raise ExplainInputError(f"{path} holds no DICOM series: give a folder of DICOM files, or one of its files.")
    if series is None and path.is_file():
        series = _tag(_header(path), SERIES_UID)
    if series is not None:
        if series not in found:
            raise ExplainInputError(
                f"{folder} holds no series {series}; it holds: "
                f"{'; '.join(_describe(uid, files) for uid, files in found.items())}."
            )
        return series, found[series]
    if len(found) > 1:
        listed = "; ".join(_describe(uid, files) for uid, files in found.items())
        raise ExplainInputError(f"{folder} holds {len(found)} DICOM series: choose one with --series UID ({listed}).")
    return next(iter(found.items()))


def _slices(files: list[str]) -> list[DicomSlice]:
    slices = []
    for name in files:
        reader = _header(Path(name))
        position, orientation = _tag(reader, POSITION), _tag(reader, ORIENTATION)
        if not position or not orientation:
            raise ExplainInputError(
                f"{Path(name).name} has no image position or orientation: it is not a slice of a CT volume."
            )
        slices.append(
            DicomSlice(
                Path(name),
                np.array([float(v) for v in position.split("\\")]),
                tuple(float(v) for v in orientation.split("\\")),
                "LOCALIZER" in _tag(reader, IMAGE_TYPE).upper(),
            )
        )
    return slices


def checked_slices(files: list[str], name: str) -> tuple[list[str], list[str]]:
    """The files of the volume in slice order, and notes on what was left out; refuses a
    series that does not make one regular volume."""
    slices = _slices(files)
    orientations = [s.orientation for s in slices if not s.localizer]
    # () only when every slice is a localizer, and then no slice is compared with it
    main: tuple[float, ...] = max(set(orientations), key=orientations.count) if orientations else ()
    kept = [s for s in slices if not s.localizer and np.allclose(s.orientation, main, atol=DIRECTION_TOLERANCE)]
    notes = []
    if len(kept) < len(slices):
        notes.append(
            f"{len(slices) - len(kept)} slice(s) of {name} in another orientation or marked LOCALIZER "
            "(a scout image) were left out."
        )
    if len(kept) < 2:
        raise ExplainInputError(f"{name} is a single 2D slice: a 3D CT (a series of slices) is needed.")
    row, column = np.array(main[:3]), np.array(main[3:])
    normal = np.cross(row, column)
    kept.sort(key=lambda s: float(s.position @ normal))
    depths = np.array([float(s.position @ normal) for s in kept])
    gaps = np.diff(depths)
    if (gaps < 1e-3).any():
        twice = ", ".join(f"{depth:.2f}" for depth in depths[1:][gaps < 1e-3][:3])
        raise ExplainInputError(
            f"{name} has two slices at the same position ({twice} mm along the slice normal): remove the duplicates."
        )
    typical = float(np.median(gaps))
    uneven = np.abs(gaps - typical) > SPACING_TOLERANCE * typical
    if uneven.any():
        where = [f"{depths[i]:.2f} to {depths[i + 1]:.2f} mm" for i in np.flatnonzero(uneven)[:3]]
        raise ExplainInputError(
            f"{name} has uneven slice spacing (typically {typical:.2f} mm, but "
            f"{', '.join(where)} along the slice normal): a slice is missing or the series is not "
            "regular."
        )
    steps = np.diff(np.array([s.position for s in kept]), axis=0)
    off_normal = np.linalg.norm(steps - np.outer(steps @ normal, normal), axis=1)
    if (off_normal > 0.01 * typical).any():
        raise ExplainInputError(
            f"{name} is gantry-tilted (its slices are not stacked along their normal): resample "
            "it to a regular grid first, e.g. in Slicer (Volumes > Acquisition Transform) or with "
            "dcm2niix."
        )
    return [str(s.path) for s in kept], notes


def read_dicom_series(path: Path, series: str | None = None, check=None) -> tuple[sitk.Image, list[str]]:
    """The series as a 3D volume in its own geometry (rescale applied), and notes.
    ``check(size, pixel_id)`` sees the volume's size before its voxels are read."""
    uid, files = choose_series(path, series)
    files, notes = checked_slices(files, f"The DICOM series {uid}")
    first = _header(Path(files[0]))
    if check is not None:
        check((*first.GetSize()[:2], len(files)), first.GetPixelID())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise ExplainInputError(f"The DICOM series {uid} cannot be read ({str(error).strip()[-160:]}).") from None
    return image, notes
