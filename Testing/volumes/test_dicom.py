"""DICOM series as researchers get them: a folder, or one file of it; several series, a
missing slice, a gantry tilt, a scout image mixed in, a single slice."""

import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.volumes.volume_io import read_ct

STUDY = "1.2.826.0.1.3680043.8.498.1"


def write_series(
    ct: sitk.Image,
    folder,
    series: str,
    skip=(),
    tilt_mm: float = 0.0,
    scout: bool = False,
    description: str = "abdomen",
) -> None:
    """The CT as a DICOM series of one file per axial slice with a rescale intercept of -1024,
    as scanners store CT (ITK's writer stores HU + 1024 as the pixel data)."""
    folder.mkdir(parents=True, exist_ok=True)
    stored = sitk.Clamp(ct, lowerBound=-1024, upperBound=3071)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(ct.GetDepth()):
        if z in skip:
            continue
        picture = stored[:, :, z]
        position = np.array(ct.TransformIndexToPhysicalPoint((0, 0, z))) + np.array([0.0, tilt_mm * z, 0.0])
        tags = {
            "0008|0060": "CT",
            "0020|000d": STUDY,
            "0020|000e": series,
            "0008|103e": description,
            "0020|0013": str(z + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|1052": "-1024",
            "0028|1053": "1",
            "0018|0050": f"{ct.GetSpacing()[2]:g}",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0008|0018": f"{series}.{z + 1}",
        }
        for tag, value in tags.items():
            picture.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{z:03d}.dcm"))
        writer.Execute(picture)
    if scout:  # a coronal scout image in the same series
        picture = stored[:, ct.GetHeight() // 2, :]
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": STUDY,
            "0020|000e": series,
            "0020|0013": "999",
            "0020|0032": "0\\0\\0",
            "0020|0037": "1\\0\\0\\0\\0\\-1",
            "0028|1052": "-1024",
            "0028|1053": "1",
            "0008|0008": "ORIGINAL\\PRIMARY\\LOCALIZER",
            "0008|0018": f"{series}.999",
        }.items():
            picture.SetMetaData(tag, value)
        writer.SetFileName(str(folder / "scout.dcm"))
        writer.Execute(picture)


@pytest.fixture(scope="module")
def ct():
    image, _ = case_images(make_case(21, Grid.centred((96, 96, 24), (2.0, 2.0, 3.0))))
    return sitk.Cast(image, sitk.sitkInt16)


def test_a_series_folder_is_read_as_the_ct_with_its_geometry_and_hu(ct, tmp_path):
    write_series(ct, tmp_path / "series", "1.2.3.4")
    for given in (tmp_path / "series", tmp_path / "series" / "slice005.dcm"):  # the folder, or one of its files
        image, notes = read_ct(given)
        assert notes == [] and image.GetSize() == ct.GetSize()
        assert np.allclose(image.GetOrigin(), ct.GetOrigin(), atol=1e-3)
        assert np.allclose(image.GetSpacing(), ct.GetSpacing(), atol=1e-4)
        # The rescale intercept is applied: the values are HU again.
        stored_range = sitk.Clamp(ct, lowerBound=-1024, upperBound=3071)  # what 12-bit CT storage holds
        assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(stored_range))


def test_the_problems_of_real_series_are_refused_or_said(ct, tmp_path):
    write_series(ct, tmp_path / "gap", "1.2.3.5", skip=(10,))
    with pytest.raises(ExplainInputError, match=r"uneven slice spacing \(typically 3.00 mm, but .* mm along"):
        read_ct(tmp_path / "gap")
    write_series(ct, tmp_path / "tilted", "1.2.3.6", tilt_mm=0.8)
    with pytest.raises(ExplainInputError, match="gantry-tilted"):
        read_ct(tmp_path / "tilted")
    write_series(ct, tmp_path / "two", "1.2.3.7")
    write_series(ct[:, :, :12], tmp_path / "two", "1.2.3.8", description="arterial")
    with pytest.raises(ExplainInputError, match=r"holds 2 DICOM series: choose one with --series UID \(1.2.3.7 "):
        read_ct(tmp_path / "two")
    assert read_ct(tmp_path / "two", series="1.2.3.8")[0].GetDepth() == 12
    write_series(ct, tmp_path / "scout", "1.2.3.9", scout=True)
    image, notes = read_ct(tmp_path / "scout")
    assert image.GetSize() == ct.GetSize() and "LOCALIZER" in notes[0]
    write_series(ct[:, :, :1], tmp_path / "single", "1.2.3.10")
    with pytest.raises(ExplainInputError, match="single 2D slice"):
        read_ct(tmp_path / "single" / "slice000.dcm")


def test_explain_takes_a_series_folder_and_gives_the_map_of_the_same_voxels_stored_as_nrrd(ct, tmp_path):
    write_series(ct, tmp_path / "series", "1.2.3.11")
    sitk.WriteImage(ct, str(tmp_path / "ct.nrrd"))
    maps = {}
    for name, image in (("dicom", tmp_path / "series"), ("nrrd", tmp_path / "ct.nrrd")):
        code = cli_main(
            [
                "explain",
                "--image",
                str(image),
                "--target-class",
                "tumour",
                "--from-prediction",
                "--out",
                str(tmp_path / f"{name}.nrrd"),
                "--progress",
                "none",
            ]
        )
        assert code == 0
        maps[name] = sitk.ReadImage(str(tmp_path / f"{name}.nrrd"))
    assert np.allclose(maps["dicom"].GetOrigin(), ct.GetOrigin(), atol=1e-3)
    assert np.allclose(sitk.GetArrayFromImage(maps["dicom"]), sitk.GetArrayFromImage(maps["nrrd"]), atol=1e-5)


def test_a_cohort_csv_takes_dicom_series_folders(ct, tmp_path):
    from SegHiResGradCAMLib.cohort.case import CohortSettings
    from SegHiResGradCAMLib.cohort.run import run_cohort

    write_series(ct, tmp_path / "data" / "first", "1.2.3.21")
    write_series(ct, tmp_path / "data" / "both", "1.2.3.22")
    write_series(ct[:, :, :16], tmp_path / "data" / "both", "1.2.3.23")
    (tmp_path / "data" / "cases.csv").write_text("case,image,series\nfirst,first,\nchosen,both,1.2.3.23\n")
    summary = run_cohort(
        tmp_path / "data" / "cases.csv", tmp_path / "results", CohortSettings(methods=("seg-hires-grad-cam",))
    )
    assert summary.failed == 0 and summary.done == 2
    chosen = sitk.ReadImage(str(tmp_path / "results" / "cases" / "chosen" / "heatmap_seg-hires-grad-cam.nrrd"))
    assert chosen.GetDepth() == 16  # the series the CSV chose, in its own geometry
