"""A real MRML scene from slicer-core, set up as the Slicer application sets it up."""

import time

import numpy as np
import slicer
import vtk

from SegHiResGradCAMLib.demo.phantom import Grid, make_case
from SegHiResGradCAMLib.mrml.sample_data import SAMPLE_FOLDER, read_sample_case


def new_scene():
    scene = slicer.vtkMRMLScene()
    application = slicer.vtkSlicerApplicationLogic()
    application.SetMRMLScene(scene)
    application.SetSliceLogics(vtk.vtkCollection())
    application.SetViewLogics(vtk.vtkCollection())
    for name, logic in [
        ("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic()),
        ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic()),
    ]:
        logic.SetMRMLApplicationLogic(application)
        logic.SetMRMLScene(scene)
        application.SetModuleLogic(name, logic)
    for layout in ("Red", "Yellow", "Green"):
        composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(layout)
    scene._keep_alive = application  # the logics live as long as the scene
    return scene


def ijk_to_ras(spacing, direction_ras, origin_ras) -> vtk.vtkMatrix4x4:
    matrix = np.eye(4)
    matrix[:3, :3] = np.asarray(direction_ras) @ np.diag(spacing)
    matrix[:3, 3] = origin_ras
    return slicer.util.vtkMatrixFromArray(matrix)


def phantom_volume(scene, name="CT", seed=21, direction_ras=None, shape=(128, 128, 40), spacing=(2.4, 2.4, 3.0)):
    """A synthetic CT as a scalar volume node: LPS phantom axes turned into RAS, optionally
    stored with another (oblique or left-handed) IJK-to-RAS, resampled exactly by index."""
    case = make_case(seed, Grid.centred(shape, spacing))
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(volume, np.round(case.hu).astype(np.int16))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = lps_to_ras if direction_ras is None else np.asarray(direction_ras)
    origin = lps_to_ras @ np.array(case.grid.origin)
    volume.SetIJKToRASMatrix(ijk_to_ras(spacing, direction, origin))
    show_as_ct(volume)
    return volume, case


def show_as_ct(volume, window: float = 400.0, level: float = 40.0) -> None:
    """Grey abdominal window, as Slicer's volumes logic would set it (slicer-core ships no
    colour tables, so the grey table is made here)."""
    scene = volume.GetScene()
    grey = scene.GetFirstNodeByName("Grey")
    if grey is None:
        grey = slicer.vtkMRMLColorTableNode()
        grey.SetTypeToGrey()
        grey.SetName("Grey")
        scene.AddNode(grey)
    volume.CreateDefaultDisplayNodes()
    display = volume.GetDisplayNode()
    display.SetAndObserveColorNodeID(grey.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevel(window, level)


def render_red_slice(scene, volume, heatmap, segment_labelmap, ras_point, size=(256, 256)) -> np.ndarray:
    """The Red slice view (axial through ``ras_point``) as Slicer blends it: CT, heatmap
    foreground and the segment's outline as label layer; RGB uint8, rows top to bottom."""
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(scene._keep_alive)
    logic.SetMRMLScene(scene)
    slice_node = logic.AddSliceNode("Red")
    slice_node.SetOrientationToAxial()
    slice_node.SetUseLabelOutline(True)
    slice_node.SetDimensions(size[0], size[1], 1)
    composite = logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(volume.GetID())
    composite.SetForegroundVolumeID(heatmap.GetID())
    composite.SetLabelVolumeID(segment_labelmap.GetID() if segment_labelmap is not None else None)
    logic.FitSliceToAll()
    logic.SetSliceOffset(ras_point[2])
    logic.UpdateImageData()
    producer = logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    from vtk.util.numpy_support import vtk_to_numpy

    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return np.ascontiguousarray(pixels[::-1, :, :3])


def segment_from_labels(scene, volume, labels: np.ndarray, value: int, name: str):
    """A segmentation node with one segment made from ``labels == value`` on the volume's grid."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.util.updateVolumeFromArray(labelmap, (labels == value).astype(np.uint8))
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    labelmap.SetIJKToRASMatrix(matrix)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} segmentation")
    slicer.vtkSlicerSegmentationsModuleLogic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segmentation.GetSegmentation().GetSegment(segment_id).SetName(name)
    return segmentation, segment_id


def load_sample(scene):
    """The sample as Sample Data loads it: the CT as a volume, the truth as a segmentation."""
    case = read_sample_case()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", case.name)
    volume_reader = slicer.vtkMRMLVolumeArchetypeStorageNode()
    volume_reader.SetFileName(str(SAMPLE_FOLDER / case.ct_file))
    if not volume_reader.ReadData(volume):
        raise RuntimeError(f"cannot read {case.ct_file}")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", case.segmentation_name)
    segmentation_reader = slicer.vtkMRMLSegmentationStorageNode()
    segmentation_reader.SetFileName(str(SAMPLE_FOLDER / case.segmentation_file))
    if not segmentation_reader.ReadData(segmentation):
        raise RuntimeError(f"cannot read {case.segmentation_file}")
    return volume, segmentation


def matrix_of(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def finish(run, timeout: float = 300):
    deadline = time.time() + timeout
    while (status := run.poll()).state == "running":
        assert time.time() < deadline, "the background run did not finish"
        time.sleep(0.2)
    return status
