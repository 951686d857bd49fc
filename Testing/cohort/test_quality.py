"""Segmentation quality per class and per KiTS hierarchical class, through MONAI's metrics."""

import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.cohort.quality import KITS_REGIONS, segmentation_quality
from SegHiResGradCAMLib.models.formats import read_model_card


def image(labels: np.ndarray, spacing=(1.0, 1.0, 3.0)) -> sitk.Image:
    picture = sitk.GetImageFromArray(labels.astype(np.uint8))
    picture.SetSpacing(spacing)
    return picture


@pytest.fixture(scope="module")
def card():
    return read_model_card()  # background, kidney, tumour, cyst (softmax)


def test_a_perfect_segmentation_scores_one_everywhere(card):
    truth = np.zeros((8, 40, 40), dtype=np.uint8)
    truth[2:6, 5:30, 5:30] = 1
    truth[3:5, 10:20, 10:20] = 2
    columns = segmentation_quality(image(truth), image(truth), card)
    assert columns["dice_kidney"] == columns["surface_dice_tumour"] == columns["dice_kits_mass"] == 1.0
    assert columns["hd95_mm_kidney"] == 0.0
    assert columns["dice_cyst"] == 1.0 and columns["hd95_mm_cyst"] is None  # no cyst in either: nothing to miss


def test_a_shifted_tumour_scores_as_the_formulas_say(card):
    truth = np.zeros((8, 40, 60), dtype=np.uint8)
    truth[2:6, 10:30, 10:30] = 2  # 20 voxels long in x (1 mm each)
    predicted = np.roll(truth, 2, axis=2)  # moved 2 mm along x
    columns = segmentation_quality(image(predicted), image(truth), card)
    assert columns["dice_tumour"] == pytest.approx(18 / 20)  # 2 |A and B| / (|A| + |B|)
    assert 0 < columns["hd95_mm_tumour"] <= 2.0 + 1e-6
    # Two faces of the box are 2 mm off, beyond KiTS's tolerance of about 1.15 mm; the others agree.
    assert KITS_REGIONS["tumour"][1] < 2 and 0.2 < columns["surface_dice_kits_tumour"] < 1


def test_kits_regions_forgive_what_the_challenge_forgives(card):
    """A tumour labelled as a cyst: wrong as a tumour, right as a mass and as kidney with masses."""
    truth = np.zeros((8, 40, 40), dtype=np.uint8)
    truth[2:6, 5:30, 5:30] = 1
    truth[3:5, 10:20, 10:20] = 2
    predicted = np.where(truth == 2, 3, truth)
    columns = segmentation_quality(image(predicted), image(truth), card)
    assert columns["dice_tumour"] == 0.0 and columns["dice_kits_tumour"] == 0.0
    assert columns["dice_kits_mass"] == 1.0 and columns["dice_kits_kidney_and_mass"] == 1.0
    assert columns["surface_dice_kits_mass"] == 1.0
