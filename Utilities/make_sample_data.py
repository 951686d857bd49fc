"""Makes the Sample Data case shipped with the extension (SegHiResGradCAM/SegHiResGradCAMLib/resources/SampleData):
a synthetic KiTS-like CT (NRRD, int16 HU), its ground truth as a Slicer segmentation
(.seg.nrrd with kidney, tumour and cyst segments, written by MRML's own storage node), a
thumbnail, and the manifest with each file's SHA256 that Sample Data verifies.

The grid is coarser in-plane than a KiTS case (1.6 mm instead of 0.78 mm, 240 x 240) so
that the CT stays under 5 MB; the slices are KiTS-like 3 mm.

    .venv/bin/python Utilities/make_sample_data.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import slicer
from PIL import Image
from scipy import ndimage

from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.models.formats import read_model_card
from SegHiResGradCAMLib.mrml.mrml_adapter import segmentation_from_labelmap_file
from SegHiResGradCAMLib.mrml.sample_data import MANIFEST, SAMPLE_FOLDER, file_checksum
from SegHiResGradCAMLib.volumes.volume_io import write_volume

NAME = "KiTSLikeCT"
SEED = 7  # the demo's case
SHAPE = (240, 240, 56)  # (x, y, z): 384 x 384 x 168 mm
SPACING = (1.6, 1.6, 3.0)  # mm
THUMBNAIL_SIZE = 160  # pixels


def write_segmentation(ct_path: Path, labels_path: Path, path: Path) -> None:
    """The label map as a .seg.nrrd on the CT's geometry (node names come from Sample Data)."""
    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", NAME)
    reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
    reader.SetFileName(str(ct_path))
    if not reader.ReadData(volume):
        raise SystemExit(f"cannot read {ct_path}")
    # Segment IDs are random by default; a seeded sequence keeps the file, and so its SHA256, reproducible.
    slicer.vtkSegmentation.GetSegmentIDRandomSequenceInstance().SetSeed(SEED)
    # The phantom's label values are the bundled model's classes: named and coloured as its prediction.
    segmentation = segmentation_from_labelmap_file(
        labels_path, volume, read_model_card(None).segment_styles, "ground truth"
    )
    writer = slicer.vtkMRMLSegmentationStorageNode()
    writer.SetFileName(str(path))
    writer.SetUseCompression(True)
    if not writer.WriteData(segmentation):
        raise SystemExit(f"cannot write {path}")


def write_thumbnail(case, path: Path) -> None:
    """The axial slice through the tumour's centre in an abdominal window, tumour outlined."""
    z = round(float(np.argwhere(case.labels == 2)[:, 0].mean()))
    grey = np.clip((case.hu[z] - (40 - 200)) / 400, 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    tumour = case.labels[z] == 2
    outline = tumour & ~ndimage.binary_erosion(tumour, iterations=2)
    rgb[outline] = (0.95, 0.2, 0.2)
    # LPS array rows run anterior to posterior, columns right to left: as a radiologist's view.
    image = Image.fromarray((rgb * 255).astype(np.uint8)).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.LANCZOS)
    image.save(path, optimize=True)


def main() -> None:
    SAMPLE_FOLDER.mkdir(parents=True, exist_ok=True)
    case = make_case(SEED, Grid.centred(SHAPE, SPACING))
    ct, labels = case_images(case)
    files = {"ct_file": f"{NAME}.nrrd", "segmentation_file": f"{NAME}.seg.nrrd", "thumbnail_file": f"{NAME}.png"}
    write_volume(ct, SAMPLE_FOLDER / files["ct_file"])
    with tempfile.TemporaryDirectory() as folder:
        labels_path = Path(folder) / "labels.nrrd"
        write_volume(labels, labels_path)
        write_segmentation(SAMPLE_FOLDER / files["ct_file"], labels_path, SAMPLE_FOLDER / files["segmentation_file"])
    write_thumbnail(case, SAMPLE_FOLDER / files["thumbnail_file"])
    manifest = {
        "name": NAME,
        "description": "Synthetic KiTS-like contrast-enhanced abdominal CT (phantom seed "
        f"{SEED}) with its ground-truth kidney, tumour and cyst segments. Not patient data.",
        "seed": SEED,
        "shape": list(SHAPE),
        "spacing": list(SPACING),
        **files,
        "checksums": {
            files[key]: file_checksum(SAMPLE_FOLDER / files[key]) for key in ("ct_file", "segmentation_file")
        },
    }
    (SAMPLE_FOLDER / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for name in sorted(path.name for path in SAMPLE_FOLDER.iterdir()):
        print(f"{name}: {(SAMPLE_FOLDER / name).stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
