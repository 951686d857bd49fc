"""The synthetic KiTS-like sample case that the module offers in Slicer's Sample Data module.

The case (a CT and its ground-truth kidney/tumour/cyst segmentation) ships with the
extension in the package (SegHiResGradCAMLib/resources/SampleData), so nothing is downloaded: Sample Data copies the
files from the extension folder (file:// URIs) into its cache and checks their SHA256,
exactly as it does for hosted samples. Utilities/make_sample_data.py makes the files from
the phantom and writes their checksums into the manifest read here.

Slicer-free and torch-free: the Slicer module imports this at start-up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

SAMPLE_FOLDER = Path(str(files("SegHiResGradCAMLib") / "resources" / "SampleData"))
MANIFEST = "KiTSLikeCT.json"
CATEGORY = "Seg-HiRes-Grad CAM"


@dataclass(frozen=True)
class SampleCase:
    """What the manifest says about the shipped sample."""

    name: str  # the sample's name in Sample Data (also the CT node's name)
    seed: int  # phantom seed
    shape: tuple[int, int, int]  # (x, y, z) voxels
    spacing: tuple[float, float, float]  # (x, y, z) mm
    ct_file: str
    segmentation_file: str
    thumbnail_file: str
    checksums: dict  # file name -> "SHA256:<hex digest>"

    @property
    def segmentation_name(self) -> str:
        return f"{self.name} ground truth"


def file_checksum(path) -> str:
    """The checksum as Sample Data writes and verifies it: ``SHA256:<hex digest>``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"SHA256:{digest.hexdigest()}"


def read_sample_case(folder: Path = SAMPLE_FOLDER) -> SampleCase:
    data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    return SampleCase(
        name=data["name"],
        seed=int(data["seed"]),
        shape=tuple(data["shape"]),
        spacing=tuple(data["spacing"]),
        ct_file=data["ct_file"],
        segmentation_file=data["segmentation_file"],
        thumbnail_file=data["thumbnail_file"],
        checksums=dict(data["checksums"]),
    )


def sample_data_source(folder: Path = SAMPLE_FOLDER) -> dict:
    """Keyword arguments for ``SampleData.SampleDataLogic.registerCustomSampleDataSource``:
    the CT as a volume, the ground truth as a segmentation, both by file URI with SHA256."""
    folder = Path(folder).resolve()
    case = read_sample_case(folder)
    files = [case.ct_file, case.segmentation_file]
    return {
        "category": CATEGORY,
        "sampleName": case.name,
        "uris": [(folder / name).as_uri() for name in files],
        "fileNames": files,
        "nodeNames": [case.name, case.segmentation_name],
        "loadFileTypes": ["VolumeFile", "SegmentationFile"],
        "checksums": [case.checksums[name] for name in files],
        "thumbnailFileName": str(folder / case.thumbnail_file),
    }
