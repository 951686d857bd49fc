"""Trains the bundled demo network: a small MONAI 3D U-Net on synthetic KiTS-like CTs.

Runs on the CPU within the time budget (default 28 minutes on 2 cores), validates on 10
held-out seeds with the same sliding-window inference the product uses, and writes the
weights and the model card to SegHiResGradCAM/SegHiResGradCAMLib/resources/Models/.

    .venv/bin/python Utilities/train_demo_model.py [--minutes 28] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from demo_model_recipe import (
    INTENSITY,
    KWARGS,
    NAME,
    OUTPUT,
    OVERLAP,
    PATCH,
    SPACING,
    VALIDATION_SEEDS,
    load_cases,
    validate,
)
from monai.networks.nets import UNet

from SegHiResGradCAMLib.demo.phantom import LABELS

TRAINING_SEEDS = range(1000, 1048)
FRESH_SEEDS_FROM = 2000  # one new training case replaces an old one every REFRESH_EVERY steps
REFRESH_EVERY = 15
COLOURS = [[0.0, 0.0, 0.0], [0.85, 0.55, 0.25], [0.85, 0.15, 0.2], [0.3, 0.6, 0.95]]


def random_patch(rng, image, labels, masses, patch=PATCH):
    """A training patch: 60 % on a tumour or cyst, 20 % on a kidney voxel, 20 % anywhere.

    The mass is drawn first and then a voxel in it, so a 2 cm tumour is seen as often as a
    9 cm one (drawing voxels would favour large tumours, and small ones would be missed)."""
    shape = np.array(image.shape)
    draw = rng.random()
    if draw < 0.6 and masses:
        candidates = masses[rng.integers(len(masses))]
    else:
        candidates = np.argwhere(labels == 1) if draw < 0.8 else None
    if candidates is not None and len(candidates):
        centre = candidates[rng.integers(len(candidates))]
    else:
        centre = rng.integers(0, shape)
    low = np.clip(centre - np.array(patch) // 2, 0, shape - patch)
    box = tuple(slice(lo, lo + size) for lo, size in zip(low, patch, strict=True))
    patch_image, patch_labels = image[box], labels[box]
    if rng.random() < 0.5:  # left-right mirror: kidneys and tumours occur on both sides
        patch_image, patch_labels = patch_image[..., ::-1], patch_labels[..., ::-1]
    patch_image = patch_image * rng.uniform(0.9, 1.1) + rng.uniform(-0.1, 0.1)
    return np.ascontiguousarray(patch_image), np.ascontiguousarray(patch_labels)


def dice_loss(logits, labels):
    probabilities = torch.softmax(logits, 1)
    one_hot = F.one_hot(labels, logits.shape[1]).movedim(-1, 1).float()
    overlap = (probabilities * one_hot).sum((0, 2, 3, 4))
    total = probabilities.sum((0, 2, 3, 4)) + one_hot.sum((0, 2, 3, 4))
    return 1 - ((2 * overlap + 1) / (total + 1))[1:].mean()


def train(model, training, seconds: float, seed: int, batch: int, patch=PATCH, log=print) -> int:
    """Trains ``model`` in place for ``seconds`` on patches of ``training`` (load_cases),
    refreshing one case every REFRESH_EVERY steps; returns the number of steps."""
    rng = np.random.default_rng(seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-5)
    class_weights = torch.tensor([0.5, 1.0, 3.0, 2.0])
    step, losses, training_started = 0, [], time.time()
    while time.time() - training_started < seconds:
        fraction = (time.time() - training_started) / seconds
        for group in optimiser.param_groups:
            group["lr"] = 3e-3 * (1 - fraction) ** 0.9
        if step % REFRESH_EVERY == REFRESH_EVERY - 1:  # fresh anatomy keeps small tumours from being memorised
            training[step // REFRESH_EVERY % len(training)] = load_cases([FRESH_SEEDS_FROM + step // REFRESH_EVERY])[0]
        pairs = [random_patch(rng, *training[rng.integers(len(training))], patch) for _ in range(batch)]
        images = torch.from_numpy(np.stack([p[0] for p in pairs]))[:, None]
        labels = torch.from_numpy(np.stack([p[1] for p in pairs]))
        logits = model(images)
        loss = F.cross_entropy(logits, labels, weight=class_weights) + dice_loss(logits, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            log(f"step {step}: loss {np.mean(losses[-100:]):.3f} ({time.time() - training_started:.0f} s)")
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=28.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=3)
    arguments = parser.parse_args()
    started = time.time()
    torch.manual_seed(arguments.seed)
    training = load_cases(TRAINING_SEEDS)
    print(f"{len(training)} training cases ready in {time.time() - started:.0f} s", flush=True)
    model = UNet(**KWARGS)
    budget = arguments.minutes * 60 - (time.time() - started) - 90  # leave time to validate
    step = train(model, training, budget, arguments.seed, arguments.batch, log=lambda line: print(line, flush=True))
    model.eval()
    scores = validate(model, load_cases(VALIDATION_SEEDS))
    print("validation Dice:", scores, flush=True)

    OUTPUT.mkdir(parents=True, exist_ok=True)
    torch.save({key: value.detach().clone() for key, value in model.state_dict().items()}, OUTPUT / f"{NAME}.pt")
    card = {
        "name": "KiTS-like demo 3D U-Net",
        "description": "Small MONAI 3D U-Net trained on synthetic KiTS-like CTs (Utilities/train_demo_model.py). "
        "For demonstration only, not for clinical use.",
        "architecture": "UNet",
        "kwargs": {key: list(value) if isinstance(value, tuple) else value for key, value in KWARGS.items()},
        "weights": f"{NAME}.pt",
        "preprocessing": {
            "orientation": "LPS",
            "spacing": list(SPACING),
            "intensity": {
                "low": INTENSITY.low,
                "high": INTENSITY.high,
                "centre": INTENSITY.centre,
                "scale": INTENSITY.scale,
            },
        },
        "head": "softmax",
        "classes": [LABELS[index] for index in range(4)],
        "colours": COLOURS,
        "sliding_window": {"size": list(PATCH), "overlap": OVERLAP, "blend": "gaussian", "axis_order": "zyx"},
        "default_layer": None,
        "training": {
            "seed": arguments.seed,
            "steps": step,
            "batch": arguments.batch,
            "patch": list(PATCH),
            "cases": len(training) + step // REFRESH_EVERY,
            "training_seeds": f"{TRAINING_SEEDS.start}-{TRAINING_SEEDS.stop - 1}, then "
            f"{FRESH_SEEDS_FROM}-{FRESH_SEEDS_FROM + step // REFRESH_EVERY - 1} (one every {REFRESH_EVERY} steps)",
            "minutes": round((time.time() - started) / 60, 1),
        },
        "validation": {
            "seeds": list(VALIDATION_SEEDS),
            "dice": scores,
            "grid": f"model grid ({' x '.join(map(str, SPACING))} mm)",
        },
    }
    (OUTPUT / f"{NAME}.json").write_text(json.dumps(card, indent=2) + "\n")
    from evaluate_demo_model import evaluate_into_card  # also scores on full-resolution CTs

    print("validation Dice on the model grid and on the CT grid:", evaluate_into_card(OUTPUT / f"{NAME}.json"))
    print(f"wrote {OUTPUT / NAME}.pt and .json after {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
