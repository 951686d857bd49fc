"""Reading and writing CT volumes and label maps with their geometry (SimpleITK, LPS).

Orientation codes name the patient direction each index axis (i, j, k) increases towards:
L/R (+x/-x in LPS), P/A (+y/-y), S/I (+z/-z); KiTS NIfTI cases are "IPL".
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ExplainInputError
from .dicom import is_dicom_file
from .outputs import write_atomically
from .paths import unreadable_reason

READABLE = "a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file"
MEMORY_LIMIT_VARIABLE = "SEGHIRESGRADCAM_MEMORY_LIMIT_GB"
WORKING_BYTES_PER_VOXEL = 12  # the stored voxel, a float32 working copy, a float32 map back on the CT grid
ORTHOGONAL_TOLERANCE = 1e-4


UNKNOWN_MEMORY_BYTES = 8 * 2**30  # assumed when the operating system does not say


def memory_limit_bytes() -> int:
    """How much memory one computation may plan to use: half the machine's physical memory,
    or SEGHIRESGRADCAM_MEMORY_LIMIT_GB when set."""
    if os.environ.get(MEMORY_LIMIT_VARIABLE):
        given = os.environ[MEMORY_LIMIT_VARIABLE]
        try:
            gigabytes = float(given)
        except ValueError:
            gigabytes = float("nan")
        if not (np.isfinite(gigabytes) and gigabytes > 0):
            raise ExplainInputError(
                f"{MEMORY_LIMIT_VARIABLE} must be a positive number of GB, e.g. 8; got {given!r}. "
                "Unset it to use half of this machine's memory."
            )
        return int(gigabytes * 2**30)
    return (physical_memory_bytes() or 2 * UNKNOWN_MEMORY_BYTES) // 2


def physical_memory_bytes() -> int | None:
    """The machine's physical memory, as the operating system reports it: psutil where it is
    installed, else POSIX sysconf, else the Windows API; None when none of them answers."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: Windows
        return windows_physical_memory()


def windows_physical_memory() -> int | None:
    """ullTotalPhys from kernel32's GlobalMemoryStatusEx (None off Windows)."""
    import ctypes

    class MemoryStatus(ctypes.Structure):
        _fields_ = [
            ("dwLength", ctypes.c_ulong),
            ("dwMemoryLoad", ctypes.c_ulong),
            ("ullTotalPhys", ctypes.c_ulonglong),
            ("ullAvailPhys", ctypes.c_ulonglong),
            ("ullTotalPageFile", ctypes.c_ulonglong),
            ("ullAvailPageFile", ctypes.c_ulonglong),
            ("ullTotalVirtual", ctypes.c_ulonglong),
            ("ullAvailVirtual", ctypes.c_ulonglong),
            ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
        ]

    kernel = getattr(getattr(ctypes, "windll", None), "kernel32", None)
    if kernel is None:
        return None
    status = MemoryStatus()
    status.dwLength = ctypes.sizeof(MemoryStatus)
    return int(status.ullTotalPhys) if kernel.GlobalMemoryStatusEx(ctypes.byref(status)) else None


def memory_problem(what: str, needed_bytes: float, advice: str) -> str | None:
    """Why ``needed_bytes`` would not fit in the memory one computation may use, or None."""
    limit = memory_limit_bytes()
    if needed_bytes <= limit:
        return None
    return (
        f"{what} would need about {needed_bytes / 2**30:.1f} GB of memory, more than the {limit / 2**30:.1f} GB "
        f"this computation may use (half of this machine's memory; {MEMORY_LIMIT_VARIABLE} sets it): {advice}"
    )


def check_memory(what: str, needed_bytes: float, advice: str) -> None:
    problem = memory_problem(what, needed_bytes, advice)
    if problem:
        raise ExplainInputError(problem)


def check_readable_path(path, what: str) -> None:
    """Refuses, with what to do, a path that is no file to read: missing, a link that loops
    or leads nowhere, or a pipe or device (``<(...)``, /dev/stdin), which cannot be read
    twice as the header checks need."""
    reason = unreadable_reason(path)
    if reason == "does not exist":
        raise ExplainInputError(f"The {what} file {path} does not exist.")
    if reason is not None:
        advice = (
            "point it at the file"
            if reason.startswith("is a link")
            else ("it is read more than once (header, then voxels), so save it to a file first")
        )
        raise ExplainInputError(f"The {what} {path} {reason}: {advice}.")


def read_ct(path, series: str | None = None) -> tuple[sitk.Image, list[str]]:
    """The CT from a volume file or a DICOM series (a folder, or a file of it; ``series``
    picks one of several), and notes on what the reading left out."""
    path = Path(path)
    check_readable_path(path, "CT")
    if path.is_dir() or (path.is_file() and is_dicom_file(path)):
        from .dicom import read_dicom_series

        def check(size, pixel_id) -> None:
            stored_bytes = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).itemsize
            needed = float(np.prod(size, dtype=np.float64)) * (stored_bytes + WORKING_BYTES_PER_VOXEL)
            check_memory(f"The DICOM series ({' x '.join(map(str, size))} voxels)", needed, "crop it first.")

        return read_dicom_series(path, series, check)
    if series is not None:
        raise ExplainInputError(f"--series chooses a DICOM series, but {path.name} is not DICOM: leave it out.")
    return read_volume(path, "CT"), []


def read_volume(path, what: str = "image") -> sitk.Image:
    """A 3D scalar volume from any file SimpleITK reads (NIfTI, NRRD, MHA, ...). The header
    is read first: an image too large for memory, with a sheared grid, or whose compressed
    or raw data is truncated or corrupt is refused before its voxels are read."""
    path = Path(path)
    check_readable_path(path, what)
    if path.is_dir():
        raise ExplainInputError(
            f"The {what} {path} is a folder: give a volume file (a CT may also be a DICOM series folder)."
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _native_messages_kept():
            reader.ReadImageInformation()
    except RuntimeError:
        held = _other_content(path)
        if held:
            raise ExplainInputError(
                f"{path.name} holds {held}, not the volume its name says: give {READABLE}."
            ) from None
        _check_complete(path, 0)  # a damaged compressed file says so
        raise ExplainInputError(f"Cannot read {path.name} as a volume: give {READABLE}.") from None
    size, components = reader.GetSize(), reader.GetNumberOfComponents()
    if reader.GetDimension() != 3 or components != 1:
        raise ExplainInputError(
            f"{path.name} is a {reader.GetDimension()}D image with {components} component(s) per voxel: a 3D "
            "scalar volume (one CT series) is needed."
        )
    voxels = float(np.prod(size, dtype=np.float64))
    stored_bytes = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).itemsize
    needed = voxels * (stored_bytes + WORKING_BYTES_PER_VOXEL)
    check_memory(f"{path.name} ({' x '.join(map(str, size))} voxels)", needed, "crop or downsample the image first.")
    _check_spacing(reader.GetSpacing(), reader.GetDirection(), path.name)
    _check_orthogonal(reader.GetDirection(), path.name)
    _check_complete(path, voxels * (nifti_bytes_per_voxel(path) or stored_bytes))
    try:
        with _native_messages_kept():
            return reader.Execute()
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        raise ExplainInputError(
            f"{path.name} is damaged: its voxel data cannot be read ({detail[:160]}). Export it again."
        ) from None


@contextlib.contextmanager
def _native_messages_kept():
    """ITK's readers print some complaints straight to the process's stderr (file descriptor
    2), beside the exception that carries them; they are kept out of the user's terminal,
    where the one-line error says what happened."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


# What a file holds, by its first bytes: for a file whose name promises a volume it is not.
SIGNATURES = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"GIF8", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
)


def _other_content(path: Path) -> str | None:
    """What the file is instead of a volume (a JPEG renamed .nii.gz), or None when unknown."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(132)
    except OSError:
        return None
    if start[128:132] == b"DICM":
        return "one DICOM file"
    return next((kind for signature, kind in SIGNATURES if start.startswith(signature)), None)


def _check_spacing(spacing, direction, name: str) -> None:
    """A header with a zero (or undefined) voxel size is wrong about its geometry, not damaged."""
    axes = [axis for axis, size in zip("xyz", spacing, strict=False) if not (np.isfinite(size) and size > 0)]
    if axes or not np.all(np.isfinite(direction)):
        raise ExplainInputError(
            f"{name}'s header gives a voxel spacing of {' x '.join(f'{v:g}' for v in spacing)} "
            f"mm (zero or undefined along {', '.join(axes) or 'an axis'}): its geometry is "
            "wrong, not its voxels; write the file again with its real spacing."
        )


def _check_orthogonal(direction, name: str) -> None:
    matrix = np.array(direction, dtype=float).reshape(3, 3)
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=ORTHOGONAL_TOLERANCE):
        raise ExplainInputError(
            f"{name} has a sheared (non-orthogonal) voxel grid, as from a gantry-tilted scan; the heatmap could not "
            "be put back on it exactly. Resample it onto an orthogonal grid first (e.g. Slicer's Resample Scalar "
            "Volume, or the scanner's reformatted series)."
        )


def nifti_bytes_per_voxel(path: Path) -> float | None:
    """Bytes per voxel as a NIfTI file stores them (its header's bitpix), or None for another
    format. A reader may give more: a uint16 CT with a rescale intercept (as dcm2niix writes
    them) is read as float32, but its file holds two bytes a voxel."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb") as stream:
            header = stream.read(16 + 72)
    except (EOFError, OSError, zlib.error):
        return None  # the completeness check says what is wrong
    for order in ("<", ">"):
        size = int.from_bytes(header[:4], "little" if order == "<" else "big")
        if size == 348 and len(header) >= 74:  # NIfTI-1: bitpix at byte 72
            return int.from_bytes(header[72:74], "little" if order == "<" else "big") / 8
        if size == 540 and len(header) >= 16:  # NIfTI-2: bitpix at byte 14
            return int.from_bytes(header[14:16], "little" if order == "<" else "big") / 8
    return None


def _check_complete(path: Path, voxel_bytes: float) -> None:
    """Readers fill a truncated gzip (.nii.gz) or raw NIfTI with zeros without a word, and
    read only as far as they need, so a damaged end goes unnoticed: the gzip stream is
    read to its end (its length and CRC checked), and a raw NIfTI must hold every voxel."""
    name = path.name.lower()
    damaged = None
    if name.endswith(".gz"):
        try:
            length = 0
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    length += len(chunk)
            if length < voxel_bytes:
                damaged = f"it holds {length} bytes of voxel data where {int(voxel_bytes)} are needed"
        except (EOFError, OSError, zlib.error) as error:
            damaged = str(error) or type(error).__name__
    elif name.endswith(".nii") and path.stat().st_size < voxel_bytes:
        damaged = f"the file has {path.stat().st_size} bytes where the voxels alone need {int(voxel_bytes)}"
    if damaged:
        raise ExplainInputError(f"{path.name} is damaged: {damaged}. Export or copy it again.")


def write_volume(image: sitk.Image, path) -> None:
    """Writes through a temporary file in the same folder, so that an interrupted write
    never leaves a half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda partial: sitk.WriteImage(image, str(partial), useCompression=True))


def orientation_code(image: sitk.Image) -> str:
    """The letters the index axes point to (LPS: x towards the patient's left, ...), each axis
    given the nearest anatomical direction, never two the same (SimpleITK's DICOM rule)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """The same voxels with index axes permuted and flipped to point towards ``code``
    (exact: no interpolation; origin and direction follow), for any direction, oblique
    about several axes and left-handed included."""
    if orientation_code(image) == code:
        return image
    return sitk.DICOMOrient(image, code)


_POINTS_TO = {"L": (0, 1), "R": (0, -1), "P": (1, 1), "A": (1, -1), "S": (2, 1), "I": (2, -1)}  # LPS axis, sign


def array_in_orientation(image: sitk.Image, code: str) -> np.ndarray:
    """``sitk.GetArrayFromImage(reorient(image, code))`` of a 3D scalar image, the index axes
    permuted and flipped on the array (SimpleITK's filter copies the whole image first: a fifth
    of a second for a 512 x 512 x 60 CT, paid by every view of the demo's figure)."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return sitk.GetArrayFromImage(reorient(image, code))
    source = orientation_code(image)
    source_axes = [_POINTS_TO[letter][0] for letter in source]
    taken = [source_axes.index(_POINTS_TO[want][0]) for want in code]  # the source index axis of each
    flipped = [_POINTS_TO[source[i]][1] != _POINTS_TO[want][1] for i, want in zip(taken, code, strict=True)]
    # The array's axes are the index axes reversed (z, y, x); the copy owns its memory, as
    # GetArrayFromImage's does (a view would live no longer than the image, and is read-only).
    array = np.transpose(sitk.GetArrayViewFromImage(image), [2 - taken[2 - axis] for axis in range(3)])
    return array[tuple(slice(None, None, -1 if flipped[2 - axis] else 1) for axis in range(3))].copy()


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
