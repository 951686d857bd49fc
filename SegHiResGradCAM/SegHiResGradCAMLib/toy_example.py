"""A small built-in example that runs in seconds on a CPU: a 2D kidney-and-tumour phantom,
a 2D U-Net trained on such phantoms, and both CAMs of the predicted tumour.

It exists so that the command line always has something real to show; the KiTS-like 3D
phantom and the bundled 3D model replace it as the main demo.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .engine import explain
from .methods import METHODS

CLASSES = ("background", "kidney", "tumour")


def toy_case(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A normalised 2D image (1, size, size) and its labels (0 background, 1 kidney, 2 tumour)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.5) / 0.36) ** 2 < 1
    centre = rng.uniform([0.35, 0.3], [0.65, 0.7])
    axes = rng.uniform([0.12, 0.07], [0.18, 0.1])
    angle = rng.uniform(0, np.pi)
    u = (xx - centre[1]) * np.cos(angle) + (yy - centre[0]) * np.sin(angle)
    v = -(xx - centre[1]) * np.sin(angle) + (yy - centre[0]) * np.cos(angle)
    kidney = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 < 1
    edge = rng.uniform(0, 2 * np.pi)
    tumour_centre = centre + 0.8 * axes[0] * np.array([np.sin(edge), np.cos(edge)])
    radius = rng.uniform(0.04, 0.08)
    tumour = (xx - tumour_centre[1]) ** 2 + (yy - tumour_centre[0]) ** 2 < radius**2
    labels = np.zeros((size, size), np.int64)
    labels[kidney] = 1
    labels[tumour & body] = 2
    image = np.where(body, 0.0, -1.0)
    image[kidney] = 1.2
    texture = rng.normal(0, 0.25, (size, size))
    image[labels == 2] = 0.55 + texture[labels == 2]
    image += rng.normal(0, 0.12, (size, size))
    return image[None].astype(np.float32), labels


def train_toy_network(steps: int = 150, seed: int = 0) -> torch.nn.Module:
    from monai.networks.nets import BasicUNet

    torch.manual_seed(seed)
    model = BasicUNet(2, 1, len(CLASSES), features=(8, 8, 16, 32, 64, 8))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        cases = [toy_case(1000 + step * 8 + i) for i in range(8)]
        images = torch.from_numpy(np.stack([c[0] for c in cases]))
        labels = torch.from_numpy(np.stack([c[1] for c in cases]))
        loss = torch.nn.functional.cross_entropy(model(images), labels, weight=torch.tensor([0.2, 1.0, 2.0]))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def run_toy_example(out_dir: Path, seed: int = 7) -> dict:
    from .figures import paper_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = train_toy_network()
    trained = time.perf_counter()
    image, labels = toy_case(seed)
    with torch.no_grad():
        prediction = model(torch.from_numpy(image)[None]).argmax(1)[0].numpy()
    segment = prediction == 2
    if not segment.any():
        segment = labels == 2
    summary = {"training_s": trained - started, "methods": {}}
    heatmaps = {}
    for name in ("seg-grad-cam", "seg-hires-grad-cam"):
        result = explain(model, image, target_class=2, mask=segment, method=name)
        heat = result.heatmap
        inside = float(heat[segment].sum() / heat.sum()) if heat.sum() > 0 else 0.0
        summary["methods"][name] = {"score": result.score, "layer": result.layer, "mass_in_segment": inside}
        heatmaps[METHODS[name].title] = result.normalized
        np.save(out_dir / f"{name}.npy", result.heatmap)
    paper_figure(
        out_dir / "figure.png",
        image[0],
        labels,
        prediction,
        segment,
        heatmaps,
        title="Toy 2D example: predicted tumour explained",
    )
    summary["seconds"] = time.perf_counter() - started
    return summary
