"""The cohort review driven through the widget: typing the results folder, the table's order
and sorting, Previous/Next over a failed case, verdicts that go to the shown case only,
clearing a verdict, and a scene close in the middle of a review."""

import csv

import pytest

from conftest import bias_free_model_card
from SegHiResGradCAMLib.cohort.case import CohortSettings
from SegHiResGradCAMLib.cohort.run import run_cohort
from SegHiResGradCAMLib.demo.phantom import Grid, write_cohort
from SegHiResGradCAMLib.mrml.cohort_review import REVIEW_ATTRIBUTE

SPACING = (6.0, 6.0, 9.0)
CASES = ["case_00003", "case_00004", "case_00005"]
FAILED = "case_00004"


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory):
    """Three cases explained by a small network; the middle one's CT is truncated, so it failed."""
    folder = tmp_path_factory.mktemp("cohort")
    dataset = write_cohort(folder / "data", [3, 4, 5], "kits", Grid.centred((64, 64, 16), SPACING))
    broken = dataset / FAILED / "imaging.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])
    settings = CohortSettings(model=str(bias_free_model_card(folder, SPACING)), target_class="kidney", explain="truth")
    summary = run_cohort(dataset, folder / "results", settings)
    assert (summary.done, summary.failed) == (2, 1)
    return folder / "results"


@pytest.fixture
def results(results_folder, tmp_path):
    """A fresh copy per test, so that verdicts of one test do not reach another."""
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results_folder, copy)
    return copy


def loaded_case(scene):
    cases = {scene.GetNthNode(i).GetAttribute(REVIEW_ATTRIBUTE) for i in range(scene.GetNumberOfNodes())}
    cases.discard(None)
    assert len(cases) <= 1
    return next(iter(cases), None)


def review_rows(results):
    path = results / "review.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as file:
        return {row["case"]: row for row in csv.DictReader(file)}


def test_typing_the_folder_path_opens_it_once_without_error_dialogs(session, application, results):
    ui = session.ui
    ui.cohortFolderLineEdit.user_type(str(results))
    assert application.errors == [], f"{len(application.errors)} error dialogs while typing"
    assert ui.cohortTable.rowCount == 3
    assert "0 of 3 reviewed" in ui.reviewProgressLabel.text
    ui.cohortFolderLineEdit.user_type(str(results.parent / "nothing here"))
    assert application.errors == [] and ui.cohortTable.rowCount == 0
    assert "results.csv" in ui.reviewProgressLabel.text


def test_the_table_starts_in_case_order_and_next_follows_the_visible_order(session, application, results):
    ui = session.ui
    ui.cohortFolderLineEdit.user_browse(str(results))
    assert ui.cohortTable.column_texts(0) == CASES
    ui.cohortTable.horizontalHeader().user_click_section(0)  # now descending
    assert ui.cohortTable.column_texts(0) == CASES[::-1]
    ui.nextCaseButton.click()
    assert loaded_case(application.scene) == "case_00005"
    ui.nextCaseButton.click()  # skips the failed case, in the visible order
    assert loaded_case(application.scene) == "case_00003"
    assert ui.cohortTable.column_texts(0)[ui.cohortTable.currentRow()] == "case_00003"


def test_a_failed_case_is_shown_as_failed_skipped_and_never_gets_a_verdict(session, application, results):
    ui = session.ui
    ui.cohortFolderLineEdit.user_browse(str(results))
    status_column = [ui.cohortTable.horizontalHeaderItemText(c) for c in range(ui.cohortTable.columnCount)].index(
        "status"
    )
    assert ui.cohortTable.column_texts(status_column) == ["done", "failed", "done"]
    ui.cohortTable.user_click_row(0)
    assert loaded_case(application.scene) == "case_00003"
    ui.nextCaseButton.click()
    assert loaded_case(application.scene) == "case_00005", "Next must skip the failed case"
    ui.previousCaseButton.click()
    assert loaded_case(application.scene) == "case_00003"

    ui.cohortTable.user_click_row(1)  # the failed case itself
    assert application.errors == []
    assert loaded_case(application.scene) is None, "the previous case's heatmap must not stay as if it were this one"
    assert FAILED in ui.reviewProgressLabel.text and "failed" in ui.reviewProgressLabel.text
    assert not ui.verdictComboBox.enabled
    ui.verdictComboBox.setCurrentIndex(1)  # even if the combo box changes, nothing is saved
    assert review_rows(results) == {}
    ui.nextCaseButton.click()
    assert loaded_case(application.scene) == "case_00005"
    ui.verdictComboBox.user_choose("explanation plausible")
    assert set(review_rows(results)) == {"case_00005"}
    assert ui.cohortTable.column_texts(0)[ui.cohortTable.currentRow()] == "case_00005"


def test_a_verdict_can_be_cleared_and_a_note_needs_one(session, application, results):
    ui = session.ui
    ui.cohortFolderLineEdit.user_browse(str(results))
    ui.cohortTable.user_click_row(2)
    ui.verdictComboBox.user_choose("unsure")
    ui.verdictNoteLineEdit.user_type("left kidney only")
    assert review_rows(results)["case_00005"]["note"] == "left kidney only"
    ui.verdictComboBox.user_choose("(not reviewed)")
    assert review_rows(results) == {}
    assert "0 of 3 reviewed" in ui.reviewProgressLabel.text
    ui.verdictNoteLineEdit.user_type("a note alone")
    assert "choose" in ui.reviewProgressLabel.text, "a note without a verdict is not saved: the user is told"


def test_closing_the_scene_resets_the_reviewed_case(session, application, results):
    ui = session.ui
    ui.cohortFolderLineEdit.user_browse(str(results))
    ui.cohortTable.user_click_row(0)
    assert loaded_case(application.scene) == "case_00003"
    session.close_scene()
    assert session.widget._reviewedCase is None and not ui.verdictComboBox.enabled
    assert not ui.atlasLayerSlider.visible
    ui.cohortTable.user_click_row(0)  # the same row loads the case again
    assert loaded_case(application.scene) == "case_00003"
