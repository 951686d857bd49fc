"""The Slicer side against a real MRML scene (slicer-core), real storage nodes and the real
command line in a background process: the module's warm worker, kept between the file's
questions as the module keeps it between Apply clicks, and the one-shot process a script gets
without one (cancelled, failing)."""

import dataclasses
import glob
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import slicer
from PIL import Image
from scipy import ndimage

from conftest import bias_free_model_card
from mrml_scene import finish, matrix_of, new_scene, phantom_volume, render_red_slice, segment_from_labels
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.mrml import mrml_adapter
from SegHiResGradCAMLib.mrml.background import WarmWorker
from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings

_C, _S = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
OBLIQUE = np.array([[0.0, -1.0, 0.0], [-_C, 0.0, _S], [_S, 0.0, _C]])  # rotated by 20 degrees, permuted, left-handed
LEFT_HANDED = np.diag([-1.0, -1.0, -1.0])  # LPS axes with the slice axis flipped


@pytest.fixture(scope="module")
def worker():
    """One warm worker for the file: it imports PyTorch once, and each question still gets its
    own CT, model, work folder and nodes."""
    kept = WarmWorker()
    yield kept
    kept.release()


def node_ids(scene) -> set:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def leftover_work_dirs() -> list:
    return glob.glob(f"{tempfile.gettempdir()}/SegHiResGradCAM-*")


@pytest.mark.slow
@pytest.mark.parametrize("direction", [None, OBLIQUE, LEFT_HANDED], ids=["axial", "oblique", "left-handed"])
def test_heatmap_node_has_the_ct_geometry_display_and_place(direction, worker, tmp_path):
    scene = new_scene()
    volume, case = phantom_volume(scene, direction_ras=direction)
    segmentation, segment_id = segment_from_labels(scene, volume, case.labels, 2, "tumour")
    before = {name: scene.GetNodeByID(name).GetMTime() for name in (volume.GetID(), segmentation.GetID())}
    run = ExplainRun(
        ExplainSettings(volume, "tumour", segmentation_node=segmentation, segment_id=segment_id, with_prediction=True),
        worker=worker,
    )
    status = finish(run)
    assert status.state == "finished", status.message
    heat = run.heatmap_node
    assert heat.GetName() == "CT - tumour - Seg-HiRes-Grad CAM"
    # Equal up to the last bit of the direction cosines (Slicer re-normalises them).
    np.testing.assert_allclose(matrix_of(heat), matrix_of(volume), rtol=0, atol=1e-12)
    assert heat.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    display = heat.GetDisplayNode()
    assert display.GetColorNode().GetName() == mrml_adapter.HEAT_COLOUR_NODE_NAME
    # The colour node holds the shipped table's entries, index by index (name, RGBA in 0..255).
    table, entries = display.GetColorNode(), mrml_adapter.HEAT_COLOUR_TABLE.read_text(encoding="utf-8").splitlines()
    entries = [line.split() for line in entries if line and not line.startswith("#")]
    assert table.GetNumberOfColors() == len(entries)
    for index, name, *rgba in (entries[0], entries[len(entries) // 2], entries[-1]):
        assert table.GetColorName(int(index)) == name
        assert np.allclose(table.GetLookupTable().GetTableValue(int(index)), [int(value) / 255 for value in rgba])
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0.0, 1.0)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(mrml_adapter.HEAT_THRESHOLD)
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        assert composite.GetForegroundVolumeID() == heat.GetID()
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.5)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(heat)) == hierarchy.GetItemByDataNode(volume)
    names = [
        run.prediction_node.GetSegmentation().GetNthSegment(i).GetName()
        for i in range(run.prediction_node.GetSegmentation().GetNumberOfSegments())
    ]
    assert "kidney" in names
    # The inputs were only read.
    assert {name: scene.GetNodeByID(name).GetMTime() for name in before} == before
    # Seg-HiRes-Grad CAM of a tumour segment lies on the tumour, whatever the storage.
    heat_values = slicer.util.arrayFromVolume(heat)
    near_tumour = ndimage.binary_dilation(case.labels == 2, iterations=3)
    assert heat_values[near_tumour].sum() > 0.8 * heat_values.sum()
    assert not leftover_work_dirs()
    check_red_slice_view(scene, volume, heat, case, tmp_path / "red.png")


def check_red_slice_view(scene, volume, heat, case, png_path):
    """Renders the Red view as Slicer blends it and checks where the heat colours are."""
    ijk_to_ras = matrix_of(volume)
    tumour = np.argwhere(case.labels == 2)[:, ::-1]  # (i, j, k)
    centre = (ijk_to_ras @ np.append(tumour.mean(axis=0), 1))[:3]
    pixels = render_red_slice(scene, volume, heat, None, centre)
    Image.fromarray(pixels).save(png_path)
    coloured = np.ptp(pixels.astype(int), axis=2) > 40  # the CT is grey; heat is coloured
    # Where the tumour's voxels near this slice fall in the view.
    slice_node = scene.GetFirstNodeByName("Red")
    ras_to_xy = np.linalg.inv(slicer.util.arrayFromVTKMatrix(slice_node.GetXYToRAS()))
    points = ijk_to_ras @ np.c_[tumour, np.ones(len(tumour))].T
    on_slice = np.abs(points[2] - centre[2]) < 2.0
    xy = (ras_to_xy @ points[:, on_slice])[:2].round().astype(int)
    height = pixels.shape[0]
    in_view = (xy[0] >= 0) & (xy[0] < pixels.shape[1]) & (xy[1] >= 0) & (xy[1] < height)
    tumour_pixels = np.zeros(coloured.shape, bool)
    tumour_pixels[height - 1 - xy[1, in_view], xy[0, in_view]] = True
    assert tumour_pixels.sum() > 20
    assert coloured[tumour_pixels].mean() > 0.5  # heat colours inside the tumour
    far = ~ndimage.binary_dilation(tumour_pixels, iterations=25)
    assert coloured[far].mean() < 0.02  # and none far from it


def table_rows(table_node) -> dict:
    table = table_node.GetTable()
    rows = range(table.GetNumberOfRows())
    return {table.GetValue(row, 0).ToString(): table.GetValue(row, 1).ToString() for row in rows}


@pytest.mark.slow
def test_metrics_table_sits_next_to_the_heatmap_and_is_replaced_with_it(worker):
    scene = new_scene()
    volume, case = phantom_volume(scene)
    segmentation, segment_id = segment_from_labels(scene, volume, case.labels, 2, "tumour")
    settings = ExplainSettings(
        volume,
        "tumour",
        method="seg-layer-cam",
        segmentation_node=segmentation,
        segment_id=segment_id,
        with_metrics=True,
        replace_previous=True,
        fractions=(0, 0.025, 0.05),  # the table's plumbing; the curves' maths is tested in cam/test_metrics.py
    )
    first = ExplainRun(settings, worker=worker)
    assert finish(first).state == "finished"
    table = first.metrics_node
    assert table.GetName() == "CT - tumour - Seg-Layer CAM - metrics"
    rows = table_rows(table)
    assert float(rows["heat mass inside M"].split(" %")[0]) > 50  # a tumour segment's heat is mostly in the tumour
    assert "(randomised network " in rows["heat mass inside M"]  # beside its baseline
    assert rows["maximum inside M"] in {"yes", "no"}
    assert table.GetAttribute("SegHiResGradCAM.Fractions") == "0 0.025 0.05"  # as asked, not the default
    assert {
        "heat mass in kidney (predicted)",
        "heat mass outside body",
        "deletion area (lower is better)",
        "insertion area (higher is better)",
        "similarity after randomising the network",
    } <= set(rows)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(table))
    assert parent == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(first.heatmap_node))
    assert parent == hierarchy.GetItemByDataNode(volume)

    second = ExplainRun(settings, worker=worker)
    assert finish(second).state == "finished"
    assert scene.GetNodeByID(table.GetID()) is None and scene.GetNodeByID(first.heatmap_node.GetID()) is None
    tables = scene.GetNodesByClass("vtkMRMLTableNode")
    assert tables.GetNumberOfItems() == 1 and tables.GetItemAsObject(0) is second.metrics_node
    assert not leftover_work_dirs()
    with pytest.raises(ExplainInputError, match="increasing fractions"):
        ExplainSettings(volume, "tumour", with_metrics=True, fractions=(0.05, 0))


def test_cancel_leaves_no_node_and_no_file():
    scene = new_scene()
    volume, _ = phantom_volume(scene)
    nodes = node_ids(scene)
    run = ExplainRun(ExplainSettings(volume, "kidney"))
    time.sleep(1.0)
    run.cancel()
    assert run.poll().state == "cancelled"
    assert node_ids(scene) == nodes
    assert not leftover_work_dirs()


@pytest.mark.slow
def test_a_failing_run_reports_the_process_s_own_message_and_creates_nothing(tmp_path):
    scene = new_scene()
    volume, _ = phantom_volume(scene)
    nodes = node_ids(scene)
    run = ExplainRun(ExplainSettings(volume, "kidney", layer="no.such.layer"))
    status = finish(run)
    assert status.state == "failed" and "no layer named 'no.such.layer'" in status.message
    assert node_ids(scene) == nodes and not leftover_work_dirs()


def hostile_model(folder, **changes):
    """The bundled model card with entries changed, next to a copy of its weights."""
    import json
    import shutil

    bundled = Path(mrml_adapter.RESOURCES) / "Models"
    folder.mkdir(exist_ok=True)
    shutil.copy(bundled / "kits_demo_unet.pt", folder / "kits_demo_unet.pt")
    card = json.loads((bundled / "kits_demo_unet.json").read_text(encoding="utf-8")) | changes
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "card.json"


def bad_settings(scene, folder):
    volume, _ = phantom_volume(scene)
    empty_segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    empty_id = empty_segmentation.GetSegmentation().AddEmptySegment("nothing")
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB")
    slicer.util.updateVolumeFromArray(vector, np.zeros((4, 5, 6, 3), np.uint8))
    outside = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "far away")
    far_labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(far_labels, np.ones((4, 4, 4), np.uint8))
    far_labels.SetOrigin(5000.0, 5000.0, 5000.0)
    slicer.vtkSlicerSegmentationsModuleLogic().ImportLabelmapToSegmentationNode(far_labels, outside)
    scene.RemoveNode(far_labels)
    outside_id = outside.GetSegmentation().GetNthSegmentID(0)
    return {
        "no volume": (ExplainSettings(None, "tumour"), "No input volume"),
        "vector volume": (ExplainSettings(vector, "tumour"), "not a scalar CT volume|components per voxel"),
        "empty segment": (
            ExplainSettings(volume, "tumour", segmentation_node=empty_segmentation, segment_id=empty_id),
            "is empty|no voxel",
        ),
        "segment outside the CT": (
            ExplainSettings(volume, "tumour", segmentation_node=outside, segment_id=outside_id),
            "no voxel inside",
        ),
        "missing model": (ExplainSettings(volume, "tumour", model="/nowhere/model.json"), "does not exist"),
        "unknown class": (ExplainSettings(volume, "liver"), "no class 'liver'"),
        "weights outside the model folder": (
            ExplainSettings(volume, "tumour", model=hostile_model(folder / "a", weights="../../../etc/passwd")),
            "outside the model's folder",
        ),
        "a card whose preprocessing is text": (
            ExplainSettings(volume, "tumour", model=hostile_model(folder / "b", preprocessing="2mm")),
            "preprocessing.orientation must be",
        ),
        "an untrusted bundle": (ExplainSettings(volume, "tumour", model=untrusted_bundle(folder)), "arbitrary Python"),
    }


def untrusted_bundle(folder):
    (folder / "bundle" / "configs").mkdir(parents=True)
    (folder / "bundle" / "configs" / "inference.json").write_text('{"network_def": {"_target_": "UNet"}}')
    return folder / "bundle"


@pytest.mark.parametrize(
    "case",
    [
        "no volume",
        "vector volume",
        "empty segment",
        "segment outside the CT",
        "missing model",
        "unknown class",
        "weights outside the model folder",
        "a card whose preprocessing is text",
        "an untrusted bundle",
    ],
)
def test_bad_input_is_refused_before_anything_runs_and_creates_no_node(case, tmp_path):
    scene = new_scene()
    settings, message = bad_settings(scene, tmp_path)[case]
    nodes = node_ids(scene)
    with pytest.raises(ExplainInputError, match=message):
        ExplainRun(settings)
    assert node_ids(scene) == nodes
    assert not leftover_work_dirs()


@pytest.mark.slow
def test_signed_map_sums_to_t_and_is_shown_diverging_around_zero_and_heat_is_rendered_in_3d(worker, tmp_path):
    """A bias-free network on a CT stored on the model's grid: the loaded signed map sums to
    T; its colours are blue-white-red with white at S = 0; Show in 3D volume-renders the heat
    (low heat transparent) without touching the user's segmentation, and a replaced result
    takes its rendering nodes with it."""
    scene = new_scene()
    spacing = (6.0, 6.0, 6.0)
    volume, case = phantom_volume(scene, seed=3, shape=(40, 48, 20), spacing=spacing)
    segmentation, segment_id = segment_from_labels(scene, volume, (case.labels > 0).astype(np.uint8), 1, "kidney")
    rendering = slicer.vtkSlicerVolumeRenderingLogic()
    rendering.SetMRMLScene(scene)
    settings = ExplainSettings(
        volume,
        "kidney",
        segmentation_node=segmentation,
        segment_id=segment_id,
        model=bias_free_model_card(tmp_path, spacing),
        signed=True,
        volume_rendering_logic=rendering,
        replace_previous=True,
    )
    run = ExplainRun(settings, worker=worker)
    assert finish(run).state == "finished"
    signed = run.signed_node
    assert signed.GetName() == "CT - kidney - Seg-HiRes-Grad CAM - signed"
    np.testing.assert_allclose(matrix_of(signed), matrix_of(volume), rtol=0, atol=1e-12)
    values = slicer.util.arrayFromVolume(signed).astype(np.float64)
    score = float(run.heatmap_node.GetAttribute("SegHiResGradCAM.TargetScore"))
    assert (values < 0).any() and (values > 0).any()
    assert values.sum() == pytest.approx(score, rel=1e-4, abs=1e-5 * np.abs(values).sum())

    display = signed.GetDisplayNode()
    assert display.GetColorNode().GetName() == mrml_adapter.SIGNED_COLOUR_NODE_NAME
    assert display.GetLevel() == 0.0 and display.GetWindow() == pytest.approx(2 * np.abs(values).max(), rel=1e-6)
    assert not display.GetApplyThreshold()
    table = display.GetColorNode()
    colours = np.array([table.GetLookupTable().GetTableValue(index)[:3] for index in range(table.GetNumberOfColors())])
    middle = (len(colours) - 1) // 2
    assert len(colours) % 2 == 1 and np.allclose(colours[middle], 1.0)  # white at S = 0
    assert colours[0][2] > colours[0][0] and colours[-1][0] > colours[-1][2]  # blue below, red above
    assert np.allclose(colours[::-1][:, ::-1], colours)  # symmetric: red mirrors blue
    alpha = [table.GetLookupTable().GetTableValue(index)[3] for index in (0, middle, len(colours) - 1)]
    assert alpha == [1.0, 0.0, 1.0]  # S near 0 lets the CT show through
    lookup_range = display.GetWindowLevelMin(), display.GetWindowLevelMax()
    assert lookup_range[0] == pytest.approx(-lookup_range[1])

    heat = run.heatmap_node
    rendered = [
        heat.GetNthDisplayNode(i)
        for i in range(heat.GetNumberOfDisplayNodes())
        if heat.GetNthDisplayNode(i).IsA("vtkMRMLVolumeRenderingDisplayNode")
    ]
    assert len(rendered) == 1 and rendered[0].GetVisibility()
    properties = rendered[0].GetVolumePropertyNode().GetVolumeProperty()
    opacity = properties.GetScalarOpacity()
    assert opacity.GetValue(0.0) == 0.0 and opacity.GetValue(mrml_adapter.HEAT_THRESHOLD) == 0.0
    assert opacity.GetValue(1.0) == pytest.approx(mrml_adapter.HEAT_VOLUME_OPACITY)
    hottest = heat.GetDisplayNode().GetColorNode().GetLookupTable()
    hottest = hottest.GetTableValue(hottest.GetNumberOfTableValues() - 1)[:3]
    assert np.allclose(properties.GetRGBTransferFunction().GetColor(1.0), hottest)
    # The user's own segmentation keeps exactly the representations it had.
    assert not segmentation.GetSegmentation().ContainsRepresentation("Closed surface")

    nodes = node_ids(scene)
    again = ExplainRun(settings, worker=worker)
    assert finish(again).state == "finished"
    assert len(node_ids(scene)) == len(nodes)  # the first result's map, signed map and rendering nodes are gone
    assert scene.GetNodeByID(heat.GetID()) is None and scene.GetNodeByID(signed.GetID()) is None
    assert not leftover_work_dirs()
    # The module's own predicted segmentation is shown with its surfaces.
    with_prediction = ExplainRun(dataclasses.replace(settings, with_prediction=True), worker=worker)
    assert finish(with_prediction).state == "finished"
    assert with_prediction.prediction_node.GetSegmentation().ContainsRepresentation("Closed surface")
    assert with_prediction.prediction_node.GetDisplayNode().GetVisibility3D()
    assert not segmentation.GetSegmentation().ContainsRepresentation("Closed surface")


@pytest.mark.slow
def test_a_layer_atlas_loads_one_heatmap_per_stage_and_a_metrics_row_per_layer(worker):
    scene = new_scene()
    volume, case = phantom_volume(scene, shape=(96, 96, 24), spacing=(4.0, 4.0, 6.0))
    segmentation, segment_id = segment_from_labels(scene, volume, case.labels, 1, "kidney")
    nodes = node_ids(scene)
    run = ExplainRun(
        ExplainSettings(volume, "kidney", segmentation_node=segmentation, segment_id=segment_id, atlas=True),
        worker=worker,
    )
    assert finish(run).state == "finished"
    stages = ["model.1.submodule.1.submodule.1", "model.1.submodule.1", "model.1"]
    assert [node.GetAttribute("SegHiResGradCAM.Layer") for node in run.atlas_nodes] == stages
    assert run.atlas_nodes[-1] is run.heatmap_node and run.heatmap_node.GetName() == "CT - kidney - Seg-HiRes-Grad CAM"
    for node in run.atlas_nodes:
        np.testing.assert_allclose(matrix_of(node), matrix_of(volume), rtol=0, atol=1e-12)
        assert 0.5 < slicer.util.arrayFromVolume(node).max() <= 1.0  # normalised on the model grid
    table = run.metrics_node.GetTable()
    assert table.GetNumberOfRows() == 3 and table.GetColumnName(0) == "Layer"
    assert [table.GetValue(row, 0).ToString() for row in range(3)] == stages
    columns = [table.GetColumnName(index) for index in range(table.GetNumberOfColumns())]
    assert "similarity after randomising the network" in columns and "heat mass inside M" in columns
    assert len(node_ids(scene)) > len(nodes) and not leftover_work_dirs()
    with pytest.raises(ExplainInputError, match="signed map is made for one layer"):
        ExplainRun(ExplainSettings(volume, "kidney", atlas=True, signed=True))
