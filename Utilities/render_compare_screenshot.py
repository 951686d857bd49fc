"""Renders Resources/CompareScreenshot.png headless by driving the module as a user does: the
widget built from its real .ui (the stand-ins of Testing/slicer_app), the KiTS-like sample
loaded into a real MRML scene, its ground-truth tumour picked as M, *Compare* pressed, and the
two real background runs awaited; then the Red and Yellow slice views that the module set up
side by side (Seg-Grad CAM left, Seg-HiRes-Grad CAM right), each through the tumour's centre
with the segment's outline, as Slicer blends them.

    .venv/bin/python Utilities/render_compare_screenshot.py
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import slicer
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from mrml_scene import load_sample, matrix_of, new_scene, render_red_slice, show_as_ct  # noqa: E402
from SegHiResGradCAMLib.mrml import mrml_adapter  # noqa: E402
from slicer_app.application import ModuleSession, install, load_module_file  # noqa: E402


def main() -> None:
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as launcher_folder:
        scene = new_scene()
        application = install(monkeypatch, scene, Path(launcher_folder))
        session = ModuleSession(load_module_file(monkeypatch), application)
        volume, segmentation = load_sample(scene)
        show_as_ct(volume)
        ui = session.ui
        ui.usePredictionCheckBox.click()
        tumour = segmentation.GetSegmentation().GetSegmentIdBySegmentName("tumour")
        ui.segmentSelector.user_choose(segmentation, tumour)
        ui.compareButton.click()
        application.wait_until(lambda: session.widget._run is None and not session.widget._runs, 600, "Compare")
        if application.errors:
            raise SystemExit(application.errors[-1])
        layout = application.layoutManager()
        shown = [
            scene.GetNodeByID(layout.sliceWidget(view).mrmlSliceCompositeNode().GetForegroundVolumeID())
            for view in ("Red", "Yellow")
        ]
        outline = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "tumour outline")
        with tempfile.TemporaryDirectory() as folder:
            segment_file = Path(folder) / "segment.nrrd"
            mrml_adapter.export_segment(segmentation, tumour, volume, segment_file)
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(str(segment_file))
            storage.ReadData(outline)
        labels = slicer.vtkMRMLColorTableNode()
        labels.SetTypeToLabels()
        scene.AddNode(labels)
        outline.CreateDefaultDisplayNodes()
        outline.GetDisplayNode().SetAndObserveColorNodeID(labels.GetID())
        voxels = np.argwhere(slicer.util.arrayFromVolume(outline) > 0)[:, ::-1].mean(axis=0)
        centre = (matrix_of(volume) @ np.append(voxels, 1))[:3]
        panels = []
        for heatmap in shown:
            _remove_red_view(scene)  # each panel is rendered by a slice logic of its own
            pixels = render_red_slice(scene, volume, heatmap, outline, centre, size=(448, 448))
            panel = Image.fromarray(pixels)
            ImageDraw.Draw(panel).text((10, 10), heatmap.GetName().rsplit(" - ", 1)[1], fill=(255, 255, 255))
            panels.append(panel)
        figure = Image.new("RGB", (2 * 448 + 8, 448), (40, 40, 40))
        for index, panel in enumerate(panels):
            figure.paste(panel, (index * (448 + 8), 0))
        path = ROOT / "Resources" / "CompareScreenshot.png"
        figure.save(path)
        session.widget.cleanup()
        print(f"wrote {path}: {ui.provenanceLabel.text}")


def _remove_red_view(scene) -> None:
    for class_name in ("vtkMRMLSliceNode",):
        nodes = [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
        for node in nodes:
            if node.GetLayoutName() == "Red":
                scene.RemoveNode(node)


if __name__ == "__main__":
    main()
