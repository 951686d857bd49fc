"""What training and evaluating the bundled demo model share: where it is written, its grid,
intensity window and sliding window, the held-out validation cases and their Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from SegHiResGradCAMLib.cam.sliding_window import sliding_window_logits
from SegHiResGradCAMLib.demo.phantom import Grid, make_case
from SegHiResGradCAMLib.models.card import Intensity

OUTPUT = Path(__file__).resolve().parents[1] / "SegHiResGradCAM" / "SegHiResGradCAMLib" / "resources" / "Models"
NAME = "kits_demo_unet"
# No residual units: the layer after the last skip connection feeds one transposed
# convolution without normalisation, so gradients there stay local to the segment.
KWARGS = dict(
    spatial_dims=3, in_channels=1, out_channels=4, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=0
)
SPACING = (2.0, 2.0, 3.0)  # mm, (x, y, z): fine enough that a 2 cm tumour is 10 voxels across
MODEL_GRID = Grid.centred((200, 200, 60), SPACING)  # 400 x 400 x 180 mm, as the demo CTs
INTENSITY = Intensity(low=-250.0, high=350.0, centre=50.0, scale=150.0)
PATCH = (32, 96, 96)  # (z, y, x)
OVERLAP = 0.25
VALIDATION_SEEDS = range(100, 110)


def load_cases(seeds):
    """Each case as (normalised image, labels, voxel coordinates of each tumour or cyst)."""
    cases = []
    for seed in seeds:
        case = make_case(seed, MODEL_GRID)
        components, count = ndimage.label(case.labels >= 2)
        masses = [np.argwhere(components == index) for index in range(1, count + 1)]
        cases.append((INTENSITY.apply(case.hu), case.labels.astype(np.int64), masses))
    return cases


def dice(prediction, truth) -> float:
    total = prediction.sum() + truth.sum()
    return float(2 * (prediction & truth).sum() / total) if total else 1.0


def validate(model, cases) -> dict:
    scores = {"kidney": [], "tumour": [], "cyst": [], "kidney_and_masses": []}
    for image, labels, _ in cases:
        prediction = sliding_window_logits(model, image[None], PATCH, OVERLAP).argmax(0).numpy()
        scores["kidney"].append(dice(prediction == 1, labels == 1))
        scores["tumour"].append(dice(prediction == 2, labels == 2))
        if (labels == 3).any() or (prediction == 3).any():
            scores["cyst"].append(dice(prediction == 3, labels == 3))
        scores["kidney_and_masses"].append(dice(prediction > 0, labels > 0))
    return {name: round(float(np.mean(values)), 4) for name, values in scores.items() if values}
