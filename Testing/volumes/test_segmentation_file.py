"""Slicer segmentation files (.seg.nrrd) as M: segments by name, overlapping segments
(layers) included, in the file's own geometry."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A CT and a segmentation of overlapping segments, as Slicer stores them: 'kidney' holds
    the whole kidneys with their tumour, 'tumor' (American spelling) the tumour; stored on a
    grid of its own (half the CT's resolution, another origin)."""
    folder = tmp_path_factory.mktemp("seg")
    ct, labels = case_images(make_case(21, Grid.centred((96, 96, 32), (2.0, 2.0, 3.0))))
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    coarse = sitk.Resample(
        labels,
        [48, 48, 16],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        labels.GetOrigin(),
        [4.0, 4.0, 6.0],
        labels.GetDirection(),
        0,
        labels.GetPixelID(),
    )
    values = sitk.GetArrayFromImage(coarse).transpose(2, 1, 0)  # (i, j, k), as slicerio keeps voxels
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.array(coarse.GetDirection()).reshape(3, 3) @ np.diag(coarse.GetSpacing())
    ijk_to_lps[:3, 3] = coarse.GetOrigin()
    segmentation = slicerio.create_segmentation(values.shape, ijk_to_lps)
    slicerio.add_segment(segmentation, values > 0, {"name": "kidney", "color": [0.8, 0.5, 0.2]})
    slicerio.add_segment(segmentation, values == 2, {"name": "tumor", "color": [0.8, 0.1, 0.2]})
    slicerio.write_segmentation(str(folder / "case.seg.nrrd"), segmentation)
    assert slicerio.read_segmentation(str(folder / "case.seg.nrrd"))["voxels"].ndim == 4  # overlapping: two layers
    return folder, coarse


def explain(folder, *extra):
    return cli_main(
        [
            "explain",
            "--image",
            str(folder / "ct.nrrd"),
            "--target-class",
            "tumour",
            "--mask",
            str(folder / "case.seg.nrrd"),
            "--out",
            str(folder / "heat.nrrd"),
            "--summary",
            str(folder / "summary.json"),
            "--progress",
            "none",
            *extra,
        ]
    )


def test_a_segment_is_chosen_by_name_from_overlapping_segments(case, capsys):
    folder, coarse = case
    assert explain(folder, "--segment", "tumor") == 0
    capsys.readouterr()
    record = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["record"]
    assert record["mask"].endswith("case.seg.nrrd (segment 'tumor')")
    heat = sitk.ReadImage(str(folder / "heat.nrrd"))
    tumour = sitk.Resample(sitk.Equal(coarse, 2), heat, sitk.Transform(), sitk.sitkNearestNeighbor)
    values = sitk.GetArrayFromImage(heat)
    assert values[sitk.GetArrayFromImage(tumour) > 0].sum() > 0.5 * values.sum()  # M is the tumour, not the kidney
    # Without --segment, the segment named like the target class ("tumor" for tumour), said so.
    assert explain(folder) == 0
    assert "M: the segment 'tumor' of case.seg.nrrd, named like the target" in capsys.readouterr().out


def test_an_unknown_segment_is_refused_with_the_segments_listed(case, capsys):
    folder, _ = case
    assert explain(folder, "--segment", "liver") == 2
    assert "has no segment named 'liver'; its segments are 'kidney', 'tumor'" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "explain",
                "--image",
                str(folder / "ct.nrrd"),
                "--target-class",
                "kidney",
                "--mask",
                str(folder / "ct.nrrd"),
                "--segment",
                "kidney",
                "--out",
                str(folder / "x.nrrd"),
                "--progress",
                "none",
            ]
        )
        == 2
    )
    assert "is not one: use --mask-label N" in capsys.readouterr().err


def test_a_cohort_csv_names_the_segment_of_each_case(case, tmp_path):
    from SegHiResGradCAMLib.cohort.case import CohortSettings
    from SegHiResGradCAMLib.cohort.run import run_cohort

    folder, _ = case
    (tmp_path / "cases.csv").write_text(
        f"case,image,mask,segment\none,{folder / 'ct.nrrd'},{folder / 'case.seg.nrrd'},tumor\n"
    )
    summary = run_cohort(tmp_path / "cases.csv", tmp_path / "results", CohortSettings(methods=("seg-hires-grad-cam",)))
    assert summary.done == 1 and summary.rows[0]["mask_source"].endswith("(segment 'tumor')")
