"""Validation Dice of the bundled demo model on 10 held-out synthetic cases, two ways, written
into its model card:

- on the model's grid (cases made directly at the model's spacing, as in training);
- on the CT's own grid (KiTS-like CTs at 512 x 512 x 60, 0.78 x 0.78 x 3 mm, run through the
  product's preprocessing, sliding-window inference and inverse resampling, scored against
  the ground truth at full resolution, as KiTS scores submissions).

Dice is the mean over cases. Called at the end of Utilities/train_demo_model.py; run it
alone to re-score the bundled model:

    .venv/bin/python Utilities/evaluate_demo_model.py
"""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
from demo_model_recipe import NAME, OUTPUT, VALIDATION_SEEDS, dice, load_cases, validate

from SegHiResGradCAMLib.cam.sliding_window import sliding_window_logits
from SegHiResGradCAMLib.demo.phantom import case_images, make_case
from SegHiResGradCAMLib.models.formats import read_model_card
from SegHiResGradCAMLib.volumes.preparation import labels_on_original_grid, to_model_grid


def ct_grid_dice(card, network, seeds) -> dict:
    scores = {"kidney": [], "tumour": []}
    for seed in seeds:
        ct, labels = case_images(make_case(seed))
        model_input = to_model_grid(ct, card)
        logits = sliding_window_logits(network, model_input.array, card.window, card.overlap)
        prediction = sitk.GetArrayFromImage(labels_on_original_grid(logits.numpy(), model_input, card.head))
        truth = sitk.GetArrayFromImage(labels)
        scores["kidney"].append(dice(prediction == 1, truth == 1))
        scores["tumour"].append(dice(prediction == 2, truth == 2))
    return {name: round(float(np.mean(values)), 4) for name, values in scores.items()}


def evaluate_into_card(card_path=OUTPUT / f"{NAME}.json") -> dict:
    card = read_model_card(card_path)
    network = card.build_network()
    validation = {
        "seeds": list(VALIDATION_SEEDS),
        "dice": validate(network, load_cases(VALIDATION_SEEDS)),
        "grid": f"model grid ({' x '.join(map(str, card.spacing))} mm)",
        "dice_on_the_ct_grid": ct_grid_dice(card, network, VALIDATION_SEEDS),
        "ct_grid": "512 x 512 x 60 at 0.78 x 0.78 x 3 mm, through the preprocessing and its inverse",
    }
    data = json.loads(card_path.read_text(encoding="utf-8"))
    data["validation"] = validation
    card_path.write_text(json.dumps(data, indent=2) + "\n")
    return validation


if __name__ == "__main__":
    print(json.dumps(evaluate_into_card(), indent=2))
