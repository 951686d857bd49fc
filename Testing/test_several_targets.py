"""Several targets in one command (classes, labels of a mask, every class): inference runs
once, each map is the one a run of its own writes, and a failure part-way leaves nothing."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import bias_free_model_card, write_small_case
from SegHiResGradCAMLib.cli import main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.reuse import kept_inputs


@pytest.fixture
def case(tmp_path):
    write_small_case(tmp_path)
    _, labels = case_images(make_case(3, Grid.centred((40, 48, 20), (6.0, 6.0, 6.0))))
    sitk.WriteImage(labels, str(tmp_path / "labels.nrrd"))  # 1 kidney, 2 tumour, 3 cyst
    return tmp_path, bias_free_model_card(tmp_path, (6.0, 6.0, 6.0))


def explain(folder, card, *arguments):
    common = ["explain", "--image", str(folder / "ct.nrrd"), "--model", str(card), "--progress", "none"]
    return main([*common, *arguments])


def heat(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def summary(path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_several_classes_run_inference_once_and_give_each_class_s_own_map(case, capsys):
    folder, card = case
    mask = ["--mask", str(folder / "kidney.nrrd")]
    assert explain(folder, card, "--target-class", "kidney", "tumour", *mask, "--out", str(folder / "both")) == 0
    assert "2 maps (kidney, tumour)" in capsys.readouterr().out
    first, second = summary(folder / "both" / "summary_kidney.json"), summary(folder / "both" / "summary_tumour.json")
    assert first["seconds"]["inference"] > 0 and second["seconds"]["inference"] == 0.0
    for name in ("kidney", "tumour"):
        alone = folder / f"alone_{name}.nrrd"
        assert explain(folder, card, "--target-class", name, *mask, "--out", str(alone)) == 0
        np.testing.assert_array_equal(heat(folder / "both" / f"heatmap_{name}.nrrd"), heat(alone))
    assert kept_inputs() is None, "the command keeps nothing once it has ended"


def test_several_labels_of_a_mask_paired_with_classes(case):
    folder, card = case
    out = folder / "labels"
    arguments = ["--mask", str(folder / "labels.nrrd"), "--out", str(out)]
    assert explain(folder, card, "--target-class", "kidney", "tumour", "--mask-label", "1", "2", *arguments) == 0
    assert sorted(path.name for path in out.iterdir()) == [
        "heatmap_kidney_label1.nrrd",
        "heatmap_tumour_label2.nrrd",
        "summary_kidney_label1.json",
        "summary_tumour_label2.json",
    ]
    assert summary(out / "summary_tumour_label2.json")["record"]["mask"].endswith("(label 2)")
    alone = folder / "alone_tumour.nrrd"
    assert explain(folder, card, "--target-class", "tumour", "--mask-label", "2", *arguments[:2], "--out", alone) == 0
    np.testing.assert_array_equal(heat(out / "heatmap_tumour_label2.nrrd"), heat(alone))


def test_all_classes_of_the_prediction_skip_a_class_the_network_does_not_predict(case, capsys):
    folder, card = case
    out = folder / "all"
    assert (
        explain(
            folder,
            card,
            "--all-classes",
            "--from-prediction",
            "--out",
            str(out),
            "--prediction",
            str(folder / "p.nrrd"),
        )
        == 0
    )
    predicted = set(np.unique(heat(folder / "p.nrrd"))) - {0}
    names = {1: "kidney", 2: "tumour"}
    assert sorted(path.name for path in out.glob("heatmap_*")) == sorted(f"heatmap_{names[v]}.nrrd" for v in predicted)
    absent = [names[value] for value in (1, 2) if value not in predicted]
    if absent:
        assert f"not predicted in this CT: {', '.join(absent)}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--target-class", "kidney", "tumour", "--summary", "s.json"], "leave out --summary"),
        (["--target-class", "kidney", "tumour", "--mask-label", "1", "2", "3"], "cannot be paired"),
        (["--target-class", "kidney", "kidney"], "asked for twice"),
    ],
    ids=["a summary file", "unpaired labels", "a class twice"],
)
def test_what_several_targets_cannot_do_is_refused_before_any_work(case, capsys, arguments, message):
    folder, card = case
    out = folder / "out"
    code = explain(folder, card, *arguments, "--mask", str(folder / "labels.nrrd"), "--out", str(out))
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


def test_a_target_that_fails_part_way_leaves_nothing_and_a_used_folder_is_refused(case, capsys):
    folder, card = case
    out = folder / "out"
    mask = ["--mask", str(folder / "kidney.nrrd")]
    assert explain(folder, card, "--target-class", "kidney", "liver", *mask, "--out", str(out)) == 2
    assert "liver" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    assert explain(folder, card, "--target-class", "kidney", "tumour", *mask, "--out", str(out)) == 2
    assert "new or empty folder" in capsys.readouterr().err and [p.name for p in out.iterdir()] == ["mine.txt"]
