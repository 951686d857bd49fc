"""Runs driven through the widget, each a real background run of the bundled model in a
PythonSlicer launcher: Apply twice with "replace", Cancel, Compare, a scene closed while a
run goes on, and a CT under a parent transform."""

import glob
import tempfile

import numpy as np
import pytest
import slicer
import vtk

from mrml_scene import phantom_volume, segment_from_labels


def nodes_named(scene, suffix):
    return [
        scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()) if scene.GetNthNode(i).GetName().endswith(suffix)
    ]


def finished(session, application):
    application.wait_until(lambda: session.widget._run is None and not session.widget._runs, what="the run")
    return session.ui.statusLabel.text


def work_folders():
    return glob.glob(f"{tempfile.gettempdir()}/SegHiResGradCAM-[!i]*")


@pytest.mark.slow
def test_apply_twice_with_replace_keeps_one_heatmap_and_one_prediction(session, application):
    volume, _ = phantom_volume(application.scene)
    ui = session.ui
    assert ui.inputVolumeSelector.currentNode() is volume, "a volume in the scene is selected"
    assert ui.replaceCheckBox.checked
    ui.withPredictionCheckBox.click()
    for _ in range(2):
        ui.applyButton.click()
        assert ui.applyButton.text == "Cancel" and not ui.compareButton.enabled
        finished(session, application)
        assert application.errors == []
    assert len(nodes_named(application.scene, "Seg-HiRes-Grad CAM")) == 1
    assert len(nodes_named(application.scene, " - prediction")) == 1, "the earlier prediction was not replaced"
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled
    assert work_folders() == []
    # The result is selected, shown and says how it was made; a saved scene keeps that.
    heat = nodes_named(application.scene, "Seg-HiRes-Grad CAM")[0]
    assert ui.resultSelector.currentNode() is heat
    for part in (
        "method: Seg-HiRes-Grad CAM",
        "model: KiTS-like demo",
        "class: tumour",
        "M: tumour (prediction)",
        f"T: {heat.GetAttribute('SegHiResGradCAM.TargetScore')}",
        "SegHiResGradCAM: 0.1.0",
        "layer: model.",
    ):
        assert part in ui.provenanceLabel.text
    assert float(heat.GetAttribute("SegHiResGradCAM.TargetScore")) > 0
    prediction = nodes_named(application.scene, " - prediction")[0]
    assert prediction.GetAttribute("SegHiResGradCAM.Model").startswith("KiTS-like demo")
    # Its segments carry standard terms (SNOMED CT), as other Slicer tools name them.
    segments = prediction.GetSegmentation()
    entry = slicer.vtkSlicerTerminologyEntry()
    tumour = segments.GetSegment(segments.GetSegmentIdBySegmentName("tumour"))
    tag = vtk.reference("")
    assert tumour.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
    assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(str(tag), entry)
    assert (entry.GetTypeObject().GetCodeValue(), entry.GetRegionObject().GetCodeValue()) == ("108369006", "64033007")


def test_cancel_and_a_scene_close_while_running_leave_no_trace(session, application):
    phantom_volume(application.scene)
    before = application.scene.GetNumberOfNodes()
    session.ui.applyButton.click()
    session.ui.applyButton.click()  # Cancel
    assert session.widget._run is None and session.ui.statusLabel.text == "Cancelled."
    assert application.scene.GetNumberOfNodes() == before and work_folders() == []
    session.ui.applyButton.click()
    session.close_scene()
    assert session.widget._run is None and work_folders() == []
    assert session.ui.applyButton.text == "Apply" and not session.ui.applyButton.enabled  # no CT any more


def test_a_ct_too_large_for_memory_is_refused_before_the_run_with_the_estimate(session, application, monkeypatch):
    phantom_volume(application.scene)
    monkeypatch.setenv("SEGHIRESGRADCAM_MEMORY_LIMIT_GB", "0.01")
    session.ui.applyButton.click()
    assert session.widget._run is None and work_folders() == []
    assert len(application.messages) == 1 and "GB" in application.messages[0]
    assert "more than the 0.0 GB" in application.messages[0] and "crop the CT" in application.messages[0]
    assert session.ui.statusLabel.text == "Not started: the CT would not fit in memory."


@pytest.mark.slow
def test_compare_shows_both_methods_side_by_side(session, application):
    phantom_volume(application.scene)
    session.ui.compareButton.click()
    finished(session, application)
    assert application.errors == []
    layout = application.layoutManager()
    assert layout.layout == slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView
    shown = [
        application.scene.GetNodeByID(layout.sliceWidget(view).mrmlSliceCompositeNode().GetForegroundVolumeID())
        for view in ("Red", "Yellow")
    ]
    assert [node.GetName().rsplit(" - ", 1)[1] for node in shown] == ["Seg-Grad CAM", "Seg-HiRes-Grad CAM"]


@pytest.mark.slow
def test_a_ct_under_a_transform_gets_its_outputs_under_the_same_transform(session, application):
    scene = application.scene
    volume, case = phantom_volume(scene)
    segmentation, segment_id = segment_from_labels(scene, volume, case.labels, 2, "tumour")
    moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 40.0)
    shift.SetElement(2, 3, -25.0)
    moved.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(moved.GetID())  # the CT was moved; its segment was drawn on it there
    segmentation.SetAndObserveTransformNodeID(moved.GetID())
    ui = session.ui
    ui.usePredictionCheckBox.click()
    ui.segmentSelector.user_choose(segmentation, segment_id)
    ui.withPredictionCheckBox.click()
    ui.applyButton.click()
    finished(session, application)
    assert application.errors == []
    heat = nodes_named(scene, "Seg-HiRes-Grad CAM")[0]
    prediction = nodes_named(scene, " - prediction")[0]
    for node in (heat, prediction):
        assert node.GetParentTransformNode() is moved, f"{node.GetName()} is not under the CT's transform"
    # The heat lies in the tumour, voxel by voxel on the CT's own grid.
    heat_array = slicer.util.arrayFromVolume(heat)
    tumour = case.labels == 2  # the phantom is stored in array (slice, row, column) order
    assert heat_array[tumour].sum() / heat_array.sum() > 0.5


@pytest.mark.slow
def test_first_use_without_torch_says_what_will_be_installed_and_installs_once(application, module_file, monkeypatch):
    """The packages' metadata says torch is missing (the installers are stand-ins; the
    background run then uses this machine's torch)."""
    from SegHiResGradCAMLib.mrml import dependencies
    from slicer_app.application import ModuleSession

    installed = {"torch": False}
    real_version = dependencies.installed_version

    def version(requirement):
        return real_version(requirement) if requirement.distribution != "torch" or installed["torch"] else None

    monkeypatch.setattr(dependencies, "installed_version", version)
    phantom_volume(application.scene)
    session = ModuleSession(module_file, application)
    ui = session.ui
    try:
        application.processEvents()
        assert "ModuleNotFoundError" not in ui.modelStatusLabel.text and "PyTorch" in ui.modelStatusLabel.text
        assert not session.widget._inspecting(), "no inspection can work without torch"
        seen = {}

        def install_torch(requirement):
            seen["during"] = (
                ui.applyButton.enabled,
                ui.compareButton.enabled,
                application.cursor_overrides,
                ui.statusLabel.text,
            )
            application.during_events = [ui.applyButton.click, ui.compareButton.click]  # impatient clicks
            application.processEvents()
            seen.setdefault("calls", []).append(requirement)
            installed["torch"] = True
            return True

        monkeypatch.setattr(module_file.SegHiResGradCAMLogic, "_installTorch", staticmethod(install_torch))
        ui.applyButton.click()
        assert len(application.confirmations) == 1 and "torch" in application.confirmations[0]
        assert seen["calls"] == [">=2.5"], "a click during the install started a second one"
        enabled_apply, enabled_compare, cursors, status = seen["during"]
        assert not enabled_apply and not enabled_compare and cursors == 1 and "Installing PyTorch" in status
        assert application.cursor_overrides == 0
        assert session.widget._run is not None, "the run starts after the install"
        finished(session, application)
        application.wait_until(lambda: not session.widget._inspecting(), 120, "the inspection after the install")
        assert ui.modelStatusLabel.text.startswith("Model: KiTS-like demo") and ui.layerComboBox.count() > 1
        assert application.errors == []
    finally:
        session.widget.cleanup()


@pytest.mark.slow
def test_apply_with_the_sample_explains_the_picked_tumour_segment(session, application):
    """The flow of the README's Slicer quick start: the sample from Sample Data, its tumour segment as M."""
    from mrml_scene import load_sample

    volume, segmentation = load_sample(application.scene)
    ui = session.ui
    assert ui.inputVolumeSelector.currentNode() is volume
    assert ui.applyButton.toolTip.startswith("Compute the heatmap in the background")  # the .ui's own text
    ui.usePredictionCheckBox.click()
    tumour = segmentation.GetSegmentation().GetSegmentIdBySegmentName("tumour")
    ui.segmentSelector.user_choose(segmentation, tumour)
    ui.applyButton.click()
    finished(session, application)
    assert application.errors == []
    heat = ui.resultSelector.currentNode()
    assert heat.GetName() == f"{volume.GetName()} - tumour - Seg-HiRes-Grad CAM"
    assert "M: tumour;" in ui.provenanceLabel.text
    heat_array = slicer.util.arrayFromVolume(heat)
    inside = segment_mask(segmentation, tumour, volume)
    assert heat_array[inside].sum() / heat_array.sum() > 0.5


def segment_mask(segmentation, segment_id, volume) -> np.ndarray:
    """The segment on the CT's voxel grid, as Slicer exports it."""
    scene = volume.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    assert slicer.vtkSlicerSegmentationsModuleLogic().ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, volume)
    mask = slicer.util.arrayFromVolume(labelmap) > 0
    scene.RemoveNode(labelmap)
    return mask


@pytest.mark.slow
def test_a_layer_atlas_is_browsed_with_its_slider(session, application):
    phantom_volume(application.scene, shape=(64, 64, 20), spacing=(4.8, 4.8, 6.0))
    ui = session.ui
    ui.layerAtlasCheckBox.click()
    ui.applyButton.click()
    finished(session, application)
    assert application.errors == []
    assert ui.atlasLayerSlider.visible and ui.atlasLayerSlider.maximum >= 1
    assert ui.atlasLayerSlider.value == ui.atlasLayerSlider.maximum  # the finest layer first
    composites = [
        application.scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(application.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    red = next(node for node in composites if node.GetLayoutName() == "Red")
    finest = red.GetForegroundVolumeID()
    ui.atlasLayerSlider.user_drag(0)
    assert ui.atlasLayerLabel.text.startswith("Layer 1 of ")
    coarsest = application.scene.GetNodeByID(red.GetForegroundVolumeID())
    assert coarsest.GetID() != finest and coarsest.GetAttribute("SegHiResGradCAM.Layer") in ui.atlasLayerLabel.text
    session.close_scene()
    assert not ui.atlasLayerSlider.visible


@pytest.mark.slow
def test_a_segment_drawn_in_the_world_on_a_moved_ct_is_explained_where_it_lies(session, application):
    """The CT is under a transform, its segmentation is not: M is taken where the segment
    lies in the world, i.e. in the CT's own frame (the export resamples through both)."""
    scene = application.scene
    volume, case = phantom_volume(scene)
    moved = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 40.0)
    shift.SetElement(1, 3, -15.0)
    moved.SetMatrixTransformToParent(shift)
    volume.SetAndObserveTransformNodeID(moved.GetID())
    # The tumour as it appears in the world: the CT's voxels placed by the CT's transform.
    local = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(local)
    world = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(shift, local, world)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(labelmap, (case.labels == 2).astype(np.uint8))
    labelmap.SetIJKToRASMatrix(world)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "drawn in the world")
    slicer.vtkSlicerSegmentationsModuleLogic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    ui = session.ui
    ui.usePredictionCheckBox.click()
    ui.segmentSelector.user_choose(segmentation, segmentation.GetSegmentation().GetNthSegmentID(0))
    ui.applyButton.click()
    finished(session, application)
    assert application.errors == []
    heat_array = slicer.util.arrayFromVolume(ui.resultSelector.currentNode())
    assert heat_array[case.labels == 2].sum() / heat_array.sum() > 0.5


@pytest.mark.slow
def test_a_segment_the_network_does_not_predict_is_explained_with_a_warning_in_the_status(session, application):
    """A tumour segment of another patient (here: in front of the spine) still gives a
    normal-looking map; the status and the result's provenance say why not to trust it."""
    volume, case = phantom_volume(application.scene)
    elsewhere = np.flip(case.labels == 2, axis=1)
    assert elsewhere.any() and not (elsewhere & (case.labels > 0)).any()
    segmentation, segment_id = segment_from_labels(application.scene, volume, elsewhere.astype(np.uint8), 1, "tumour")
    ui = session.ui
    ui.usePredictionCheckBox.click()
    ui.segmentSelector.user_choose(segmentation, segment_id)
    ui.applyButton.click()
    status = finished(session, application)
    assert application.errors == []
    assert status.startswith("Done, with a warning:") and "does not predict M as tumour" in status
    heat = ui.resultSelector.currentNode()
    assert "does not predict M as tumour" in heat.GetAttribute("SegHiResGradCAM.Warnings")
    assert "warning: " in ui.provenanceLabel.text


@pytest.mark.slow
def test_each_kidney_on_its_own_is_browsed_with_the_slider(session, application):
    """Two kidneys as one segment: a heatmap per part (largest first), a table row per part,
    and the slider walks the parts."""
    volume, case = phantom_volume(application.scene, shape=(64, 64, 20), spacing=(4.8, 4.8, 6.0))
    segmentation, segment_id = segment_from_labels(
        application.scene, volume, (case.labels > 0).astype(np.uint8), 1, "kidneys"
    )
    ui = session.ui
    ui.usePredictionCheckBox.click()
    ui.segmentSelector.user_choose(segmentation, segment_id)
    ui.targetClassComboBox.user_choose("kidney")
    ui.perComponentCheckBox.click()
    ui.applyButton.click()
    finished(session, application)
    assert application.errors == []
    parts = [
        node for node in nodes_named(application.scene, "Seg-HiRes-Grad CAM") + nodes_named(application.scene, "part 2")
    ]
    assert len(parts) == 2 and ui.atlasLayerSlider.visible and ui.atlasLayerSlider.maximum == 1
    volumes = [float(node.GetAttribute("SegHiResGradCAM.VolumeMl")) for node in parts]
    assert volumes[0] >= volumes[1] > 0
    table = nodes_named(application.scene, " - metrics")[0].GetTable()
    assert table.GetNumberOfRows() == 2 and table.GetColumnName(1) == "volume (ml)"
    ui.atlasLayerSlider.user_drag(1)
    assert ui.atlasLayerLabel.text == f"Part 2 of 2: {parts[1].GetAttribute('SegHiResGradCAM.VolumeMl')} ml"


@pytest.mark.slow
def test_the_model_stays_loaded_between_questions_until_released_left_or_the_scene_closes(session, application):
    """The warm path, the module's default: a second question (another method) runs in the
    same process without inference; Cancel part-way leaves the process warm; Release, leaving
    the module and closing the scene each end it."""
    from SegHiResGradCAMLib.mrml.background import _group_alive

    phantom_volume(application.scene)
    ui, worker = session.ui, session.widget.logic.worker
    assert ui.warmLabel.text.startswith("Model not loaded") and not ui.releaseButton.enabled
    ui.applyButton.click()
    assert not ui.releaseButton.enabled, "nothing to release while a run goes on"
    finished(session, application)
    assert ui.warmLabel.text.startswith("Warm: KiTS-like demo") and ui.releaseButton.enabled
    pid = worker.pid

    application.wait_until(lambda: not session.widget._inspecting(), what="the inspection")
    ui.methodComboBox.user_choose("Seg-Grad CAM")
    ui.applyButton.click()
    finished(session, application)
    assert "inference kept from the previous run" in ui.logTextEdit.lines and worker.pid == pid
    assert len(nodes_named(application.scene, " - Seg-Grad CAM")) == 1

    ui.withMetricsCheckBox.click()  # a long question, cancelled part-way
    ui.applyButton.click()
    application.wait_until(lambda: ui.progressBar.value >= 30, what="the metrics run to get going")
    ui.applyButton.click()
    assert ui.statusLabel.text == "Cancelled." and work_folders() == [] and worker.pid == pid
    ui.withMetricsCheckBox.click()
    ui.applyButton.click()
    finished(session, application)
    assert "inference kept from the previous run" in ui.logTextEdit.lines and worker.pid == pid

    ui.releaseButton.click()
    assert not worker.alive and not _group_alive(pid) and ui.warmLabel.text.startswith("Model not loaded")

    ui.applyButton.click()
    finished(session, application)
    pid = worker.pid
    session.exit()
    assert not worker.alive and not _group_alive(pid), "leaving the module ends the process"
    session.enter()
    ui.applyButton.click()
    finished(session, application)
    pid = worker.pid
    session.close_scene()
    assert not worker.alive and not _group_alive(pid), "closing the scene ends the process"
    assert ui.warmLabel.text.startswith("Model not loaded")
