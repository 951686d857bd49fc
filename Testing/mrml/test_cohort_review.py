"""Reviewing a cohort in a real MRML scene: a case's nodes come and go together, the user's
own nodes stay, the views centre on M, and verdicts are written at once and read back."""

import csv

import numpy as np
import pytest
import slicer
import vtk

from conftest import bias_free_model_card
from mrml_scene import matrix_of, new_scene, phantom_volume
from SegHiResGradCAMLib.cohort.case import CohortSettings
from SegHiResGradCAMLib.cohort.run import run_cohort
from SegHiResGradCAMLib.demo.phantom import Grid, write_cohort
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.mrml.cohort_review import REVIEW_ATTRIBUTE, REVIEW_COLUMNS, CohortReview

SPACING = (6.0, 6.0, 9.0)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("review")
    dataset = write_cohort(folder / "data", [3, 4], "kits", Grid.centred((64, 64, 16), SPACING))
    settings = CohortSettings(model=str(bias_free_model_card(folder, SPACING)), target_class="kidney", explain="truth")
    assert run_cohort(dataset, folder / "results", settings).done == 2
    return folder / "results"


def ids(scene) -> set:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def test_loading_a_case_adds_its_nodes_and_replaces_the_previous_case_s_only(results):
    scene = new_scene()
    user_volume, _ = phantom_volume(scene, name="my own CT")
    red = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    review = CohortReview(results)
    assert review.cases == ["case_00003", "case_00004"]
    first = review.load_case(scene, "case_00003")
    assert set(first) == {"ct", "truth", "prediction", "seg-hires-grad-cam", "seg-grad-cam"}
    assert all(node.GetAttribute(REVIEW_ATTRIBUTE) == "case_00003" for node in first.values())
    np.testing.assert_allclose(matrix_of(first["seg-hires-grad-cam"]), matrix_of(first["ct"]), atol=1e-9)
    names = {
        first["truth"].GetSegmentation().GetNthSegment(i).GetName()
        for i in range(first["truth"].GetSegmentation().GetNumberOfSegments())
    }
    assert "kidney" in names
    # The views are centred on M: the axial slice passes through the middle of the segment.
    segment_file = results / "cases" / "case_00003" / "segment.nrrd"
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    storage.SetFileName(str(segment_file))
    assert storage.ReadData(labels)
    segment = np.argwhere(slicer.util.arrayFromVolume(labels) > 0).mean(axis=0)[::-1]
    centre = (matrix_of(labels) @ np.append(segment, 1))[:3]
    scene.RemoveNode(labels)
    slice_to_ras = vtk.vtkMatrix4x4()
    slice_to_ras.DeepCopy(red.GetSliceToRAS())
    assert abs(slice_to_ras.GetElement(2, 3) - centre[2]) < SPACING[2]
    after_first = ids(scene)

    second = review.load_case(scene, "case_00004")
    assert not {node.GetID() for node in first.values()} & ids(scene)  # the previous case is gone
    assert scene.GetNodeByID(user_volume.GetID()) is user_volume  # the user's own node stays
    assert len(ids(scene)) == len(after_first) and second["ct"].GetName() == "case_00004 CT"
    CohortReview.unload(scene)
    assert scene.GetNodeByID(user_volume.GetID()) is user_volume
    assert not [
        node
        for node in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
        if node.GetAttribute(REVIEW_ATTRIBUTE)
    ]


def test_a_verdict_is_written_at_once_and_read_back(results):
    review = CohortReview(results)
    review.set_verdict("case_00004", "segmentation wrong", 'misses the upper pole, "small"')
    with (results / "review.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == REVIEW_COLUMNS and rows[0]["case"] == "case_00004"
    again = CohortReview(results)
    assert again.verdicts["case_00004"]["verdict"] == "segmentation wrong"
    assert again.verdicts["case_00004"]["note"] == 'misses the upper pole, "small"'
    assert again.progress == "1 of 2 reviewed" and again.summary("case_00004")["verdict"] == "segmentation wrong"
    with pytest.raises(ExplainInputError, match="Unknown verdict"):
        again.set_verdict("case_00003", "looks fine")
    assert not list(results.glob(".partial-*"))


def test_a_corrupt_review_file_is_refused_and_left_as_it_is(results, tmp_path):
    damaged = "case,mood\ncase_00003,happy\n"
    (results / "review.csv").write_text(damaged)
    try:
        with pytest.raises(ExplainInputError, match=r"review.csv is damaged.*left as it is"):
            CohortReview(results)
        assert (results / "review.csv").read_text(encoding="utf-8") == damaged
    finally:
        (results / "review.csv").unlink()


def copy_of(results, tmp_path):
    import shutil

    return shutil.copytree(results, tmp_path / "results")


def other_cases_reviewed(folder):
    """A review.csv from a larger cohort run earlier into this folder."""
    (folder / "review.csv").write_text(
        "case,verdict,note,reviewed_at\ncase_00099,unsure,seen before,2026-01-01\n", encoding="utf-8"
    )


def latin1_table(folder):
    table = folder / "results.csv"
    table.write_bytes(table.read_bytes().replace(b"case_00003", "case_\xe900003".encode("latin-1")))


def table_without_cases(folder):
    (folder / "results.csv").write_text("name,score\nx,1\n", encoding="utf-8")


def save_a_verdict(folder):
    CohortReview(folder).set_verdict("case_00003", "explanation plausible")
    return CohortReview(folder).verdicts


# name -> (what is done to a copy of the results, the message of the refusal to open it; None: it opens, a
# verdict is saved, and every verdict is kept)
REVIEW_CASES = {
    "a verdict saved beside verdicts of cases not in results.csv": (other_cases_reviewed, None),
    "a results.csv that is not UTF-8": (latin1_table, r"results.csv cannot be read .*UTF-8 table"),
    "a results.csv without a case column": (table_without_cases, "has no case column"),
}


@pytest.mark.parametrize("case", list(REVIEW_CASES))
def test_review_of_damaged_or_foreign_results_says_what_is_wrong_and_keeps_every_verdict(case, results, tmp_path):
    folder = copy_of(results, tmp_path)
    damage, message = REVIEW_CASES[case]
    damage(folder)
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    if message is not None:
        with pytest.raises(ExplainInputError, match=message):
            save_a_verdict(folder)
        assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before
        return
    verdicts = save_a_verdict(folder)
    assert set(verdicts) == {"case_00003", "case_00099"} and verdicts["case_00099"]["note"] == "seen before"
