"""Draws the extension and module icon (128 x 128 PNG): an axial slice of the synthetic
KiTS-like CT with a heat overlay on the tumour.

    .venv/bin/python Utilities/make_icon.py
"""

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from SegHiResGradCAMLib.demo.phantom import Grid, make_case

ROOT = Path(__file__).resolve().parents[1]


def icon() -> Image.Image:
    case = make_case(seed=3, grid=Grid.centred((128, 128, 40), (3.1, 3.1, 4.5)))
    tumour = np.argwhere(case.labels == 2).mean(axis=0)
    axial = case.hu[int(tumour[0])]
    grey = np.clip((axial + 160) / 400, 0, 1)
    yy, xx = np.mgrid[:128, :128]
    heat = np.exp(-((yy - tumour[1]) ** 2 + (xx - tumour[2]) ** 2) / (2 * 7.0**2))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    coloured = colormaps["inferno"](heat)[..., :3]
    alpha = np.clip(heat * 1.3, 0, 0.85)[..., None]
    blended = (1 - alpha) * rgb + alpha * coloured
    return Image.fromarray((blended * 255).astype(np.uint8))


if __name__ == "__main__":
    picture = icon()
    for path in (
        ROOT / "SegHiResGradCAM.png",
        ROOT / "SegHiResGradCAM" / "Resources" / "Icons" / "SegHiResGradCAM.png",
    ):
        picture.save(path)
        print(f"wrote {path}")
