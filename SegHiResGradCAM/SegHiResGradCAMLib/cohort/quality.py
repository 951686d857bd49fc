"""How good a case's segmentation is, with MONAI's metrics: Dice, surface Dice and the 95th
percentile Hausdorff distance (mm), per class and, for KiTS classes, per KiTS hierarchical
evaluation class.

KiTS23 scores regions built from the labels: kidney and masses (kidney, tumour, cyst),
masses (tumour, cyst) and tumour, each with Dice and a surface Dice whose tolerance (mm) the
challenge derived from its inter-observer variability (KiTS23 repository,
kits23/configuration/labels.py). Where a model's classes are named like KiTS's, those
regions are scored too, so the table reads like the challenge's.
"""

from __future__ import annotations

import warnings

import numpy as np
import SimpleITK as sitk

from ..volumes.label_maps import class_name_key

# KiTS hierarchical evaluation classes: the class names each region joins, and the surface
# Dice tolerance in mm.
KITS_REGIONS = {
    "kidney_and_mass": (("kidney", "tumour", "cyst"), 1.0330772532390826),
    "mass": (("tumour", "cyst"), 1.1328796488598762),
    "tumour": (("tumour",), 1.1498198361434828),
}
DEFAULT_TOLERANCE_MM = 1.0  # the surface Dice tolerance of a class outside KiTS's regions


def region_scores(predicted: np.ndarray, expected: np.ndarray, spacing_zyx, tolerance_mm: float) -> dict:
    """Dice, surface Dice at ``tolerance_mm`` and HD95 (mm) of two boolean (z, y, x) masks.
    Both empty: Dice and surface Dice 1 (nothing to find, nothing found), HD95 undefined."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    if not predicted.any() and not expected.any():
        return {"dice": 1.0, "surface_dice": 1.0, "hd95_mm": None}
    if not predicted.any() or not expected.any():
        return {"dice": 0.0, "surface_dice": 0.0, "hd95_mm": None}

    def one_hot(mask):
        return torch.from_numpy(np.stack([~mask, mask]).astype(np.float32))[None]

    prediction, truth = one_hot(predicted), one_hot(expected)
    spacing = [float(value) for value in spacing_zyx]
    dice = compute_dice(prediction, truth, include_background=False)
    with warnings.catch_warnings():  # MONAI calls its own deprecated argument inside; nothing for the user
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        surface = compute_surface_dice(prediction, truth, [tolerance_mm], spacing=spacing)
        hd95 = compute_hausdorff_distance(prediction, truth, percentile=95, spacing=spacing)
    return {"dice": float(dice[0, 0]), "surface_dice": float(surface[0, 0]), "hd95_mm": float(hd95[0, 0])}


def segmentation_quality(prediction: sitk.Image, truth: sitk.Image, card) -> dict:
    """Columns for a case's row: ``dice_<class>``, ``surface_dice_<class>``, ``hd95_mm_<class>``
    for every class of the model (the truth's label values being the classes' indices), and the
    same for each KiTS hierarchical class the model's classes allow (``<metric>_kits_<region>``)."""
    truth = sitk.Resample(truth, prediction, sitk.Transform(), sitk.sitkNearestNeighbor, 0, truth.GetPixelID())
    predicted_labels, expected_labels = sitk.GetArrayFromImage(prediction), sitk.GetArrayFromImage(truth)
    spacing = prediction.GetSpacing()[::-1]
    label_of = {index: value for value, index in card.prediction_labels.items()}
    names = {class_name_key(name): index for index, name in enumerate(card.classes)}
    columns = {}
    for index, name in enumerate(card.classes):
        if index not in label_of:
            continue  # the background of a softmax model
        scores = region_scores(
            predicted_labels == label_of[index], expected_labels == index, spacing, DEFAULT_TOLERANCE_MM
        )
        columns |= {f"{metric}_{class_name_key(name)}": value for metric, value in scores.items()}
    for region, (members, tolerance) in KITS_REGIONS.items():
        if not all(member in names and names[member] in label_of for member in members):
            continue
        predicted = np.isin(predicted_labels, [label_of[names[member]] for member in members])
        expected = np.isin(expected_labels, [names[member] for member in members])
        scores = region_scores(predicted, expected, spacing, tolerance)
        columns |= {f"{metric}_kits_{region}": value for metric, value in scores.items()}
    return columns
