"""Renders Resources/Screenshot.png headless: the synthetic KiTS-like sample case in a real
MRML scene (slicer-core), explained by the module's logic in a background process, shown
as Slicer's Red slice view blends it (CT, heatmap foreground, predicted tumour outline).

    .venv/bin/python Utilities/render_screenshot.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import slicer
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from mrml_scene import new_scene, phantom_volume, render_red_slice  # noqa: E402
from SegHiResGradCAMLib.slicer_logic import ExplainRun, ExplainSettings  # noqa: E402


def main() -> None:
    scene = new_scene()
    volume, case = phantom_volume(scene, name="KiTS-like CT", seed=7, shape=(512, 512, 60), spacing=(0.78, 0.78, 3.0))
    run = ExplainRun(ExplainSettings(volume, "tumour", with_prediction=True))
    while (status := run.poll()).state == "running":
        time.sleep(0.5)
    if status.state != "finished":
        raise SystemExit(status.message)
    tumour = np.argwhere(case.labels == 2)[:, ::-1].mean(axis=0)
    matrix = slicer.util.arrayFromVTKMatrix(
        volume.GetIJKToRASMatrix(vtk_matrix := __import__("vtk").vtkMatrix4x4()) or vtk_matrix
    )
    centre = (matrix @ np.append(tumour, 1))[:3]
    pixels = render_red_slice(scene, volume, run.heatmap_node, None, centre, size=(512, 512))
    path = ROOT / "Resources" / "Screenshot.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
