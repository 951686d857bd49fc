"""Renders Resources/Screenshot.png headless: the KiTS-like sample case that the module offers
in Sample Data, loaded into a real MRML scene (slicer-core), its predicted tumour explained
by the module's logic in a background process, shown as Slicer's Red slice view blends it
(CT, heatmap foreground).

    .venv/bin/python Utilities/render_screenshot.py
"""

import sys
import time
from pathlib import Path

import numpy as np
import slicer
import vtk
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from mrml_scene import load_sample, new_scene, render_red_slice, show_as_ct  # noqa: E402
from SegHiResGradCAMLib.demo.phantom import Grid, make_case  # noqa: E402
from SegHiResGradCAMLib.mrml.sample_data import read_sample_case  # noqa: E402
from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings  # noqa: E402


def main() -> None:
    scene = new_scene()
    volume, _ = load_sample(scene)
    show_as_ct(volume)
    sample = read_sample_case()
    case = make_case(sample.seed, Grid.centred(sample.shape, sample.spacing))
    run = ExplainRun(ExplainSettings(volume, "tumour", with_prediction=True))
    while (status := run.poll()).state == "running":
        time.sleep(0.5)
    if status.state != "finished":
        raise SystemExit(status.message)
    tumour = np.argwhere(case.labels == 2)[:, ::-1].mean(axis=0)
    vtk_matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(vtk_matrix)
    matrix = slicer.util.arrayFromVTKMatrix(vtk_matrix)
    centre = (matrix @ np.append(tumour, 1))[:3]
    pixels = render_red_slice(scene, volume, run.heatmap_node, None, centre, size=(512, 512))
    path = ROOT / "Resources" / "Screenshot.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
