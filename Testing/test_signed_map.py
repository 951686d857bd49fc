"""The signed map (``--signed``): the raw map S before ReLU, written on the CT's grid with
positive and negative evidence. For a bias-free network and a CT stored on the model's own
grid, the file sums to T through the whole pipeline: sliding windows, Gaussian blending,
the spread from the layer's grid onto the model's, and the way back to the CT."""

import json

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import bias_free_model_card, write_small_case
from SegHiResGradCAMLib.cli import main as cli_main

SPACING = (6.0, 6.0, 6.0)  # (x, y, z) mm: the CT below is stored on the model card's grid


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = write_small_case(tmp_path_factory.mktemp("signed"), SPACING)
    return folder, bias_free_model_card(folder, SPACING)


def explain_signed(folder, card, method):
    code = cli_main(
        [
            "explain",
            "--image",
            str(folder / "ct.nrrd"),
            "--model",
            str(card),
            "--target-class",
            "kidney",
            "--mask",
            str(folder / "kidney.nrrd"),
            "--method",
            method,
            "--out",
            str(folder / "heat.nrrd"),
            "--signed",
            str(folder / "signed.nrrd"),
            "--summary",
            str(folder / "summary.json"),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    signed = sitk.ReadImage(str(folder / "signed.nrrd"))
    score = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["methods"][method]["target_score"]
    return signed, score


def test_the_signed_hires_map_of_a_bias_free_network_sums_to_t_on_the_ct_grid(case):
    folder, card = case
    signed, score = explain_signed(folder, card, "seg-hires-grad-cam")
    values = sitk.GetArrayFromImage(signed).astype(np.float64)
    ct = sitk.ReadImage(str(folder / "ct.nrrd"))
    assert signed.GetSize() == ct.GetSize() and signed.GetOrigin() == ct.GetOrigin()
    assert signed.GetSpacing() == ct.GetSpacing() and signed.GetDirection() == ct.GetDirection()
    assert (values > 0).any() and (values < 0).any(), "a random network's evidence has both signs"
    assert abs(score) > 1e-3
    assert values.sum() == pytest.approx(score, rel=1e-4, abs=1e-5 * np.abs(values).sum())
    assert signed.GetMetaData("seghiresgradcam_map") == "signed"
    # The displayed heatmap is the positive part only.
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "heat.nrrd")))
    assert heat.min() >= 0 and heat.max() == pytest.approx(1.0)


def test_a_method_that_averages_gradients_does_not_sum_to_t(case):
    """The check can fail: Seg-Grad CAM's channel-averaged weights break the identity."""
    folder, card = case
    signed, score = explain_signed(folder, card, "seg-grad-cam")
    assert sitk.GetArrayFromImage(signed).sum(dtype=np.float64) != pytest.approx(score, rel=1e-2)
