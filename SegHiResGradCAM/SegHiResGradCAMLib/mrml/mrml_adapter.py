"""MRML nodes <-> files for the background pipeline, and the heatmap's display.

Qt-free and torch-free: it runs in the Slicer application and, for tests, with
slicer-core. Input nodes are only read, never modified; every node this module creates is
either returned to the caller or removed before an error propagates.
"""

from __future__ import annotations

import contextlib
from importlib.resources import files
from pathlib import Path

import numpy as np
import slicer
import vtk

from ..errors import ExplainInputError

RESOURCES = Path(str(files("SegHiResGradCAMLib") / "resources"))  # data shipped inside the package
HEAT_COLOUR_TABLE = RESOURCES / "ColorTables" / "SegHiResGradCAMHeat.txt"
HEAT_COLOUR_NODE_NAME = "SegHiResGradCAM heat"
SIGNED_COLOUR_NODE_NAME = "SegHiResGradCAM signed"
SIGNED_COLOURS = 255  # odd, so that one entry, the middle one, is exactly white: S = 0
SIGNED_FADE = 0.1  # |S| below this share of the largest |S| is (partly) transparent
HEAT_VOLUME_OPACITY = 0.6  # 3D view: opacity of the hottest voxels; heat below HEAT_THRESHOLD is invisible
OUTPUT_ATTRIBUTE = "SegHiResGradCAM.Output"
HEAT_OPACITY = 0.5
HEAT_THRESHOLD = 0.05  # heat below this is transparent


def output_name(volume_node, segment_name: str, method_title: str) -> str:
    return f"{volume_node.GetName()} - {segment_name} - {method_title}"


def check_volume(volume_node) -> None:
    if volume_node is None:
        raise ExplainInputError("No input volume: load a CT and select it as the input volume.")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ExplainInputError(
            f"{volume_node.GetName()} is not a scalar CT volume ({volume_node.GetClassName()}): select the CT itself."
        )
    image = volume_node.GetImageData()
    if image is None or image.GetNumberOfScalarComponents() != 1:
        raise ExplainInputError(
            f"{volume_node.GetName()} has {0 if image is None else image.GetNumberOfScalarComponents()} components per "
            "voxel: a single-channel 3D CT is needed (not a colour, vector or 4D volume)."
        )
    if min(image.GetDimensions()) < 2:
        raise ExplainInputError(
            f"{volume_node.GetName()} is not a 3D volume: a CT series with several slices is needed."
        )


@contextlib.contextmanager
def temporary_node(scene, class_name: str):
    """A node for the duration of the block; it and every node added meanwhile (display,
    storage and colour nodes that exports create) are removed afterwards."""
    before = {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}
    try:
        yield scene.AddNewNodeByClass(class_name)
    finally:
        added = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
        for node in added:
            if node.GetID() not in before:
                scene.RemoveNode(node)


def export_volume(volume_node, path: Path) -> None:
    """Writes the volume (NRRD or NIfTI by the file's extension) without touching the node."""
    check_volume(volume_node)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(0)
    if not storage.WriteData(volume_node):
        raise ExplainInputError(f"Could not write {volume_node.GetName()} to {path}: check the free disk space.")


def export_segment(segmentation_node, segment_id: str, volume_node, path: Path) -> None:
    """Writes the segment as a label map on the CT's grid, whatever the segment's own
    geometry; refuses an empty segment or one outside the CT."""
    segmentation = segmentation_node.GetSegmentation() if segmentation_node is not None else None
    segment = segmentation.GetSegment(segment_id) if segmentation is not None and segment_id else None
    if segment is None:
        raise ExplainInputError("No segment selected: choose a segmentation and a segment, or use the prediction.")
    name = segment.GetName()
    scene = volume_node.GetScene()
    with temporary_node(scene, "vtkMRMLLabelMapVolumeNode") as labelmap:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        if not logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, volume_node):
            raise ExplainInputError(f"Segment {name!r} is empty: paint it or choose another segment.")
        voxels = slicer.util.arrayFromVolume(labelmap)
        if not voxels.any():
            raise ExplainInputError(
                f"Segment {name!r} has no voxel inside {volume_node.GetName()}: it is empty or lies outside the CT."
            )
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.WriteData(labelmap):
            raise ExplainInputError(f"Could not write the segment to {path}: check the free disk space.")


def heat_colour_node(scene):
    """The extension's heat colour table, added to the scene once."""

    def entries():
        lines = HEAT_COLOUR_TABLE.read_text(encoding="utf-8").splitlines()
        rows = [line.split() for line in lines if line and not line.startswith("#")]
        return [(name, *(int(value) / 255 for value in rgba)) for _, name, *rgba in rows]

    return _colour_table_node(scene, HEAT_COLOUR_NODE_NAME, entries)


def diverging_colour_node(scene):
    """Blue (negative) - white (0) - red (positive), added to the scene once; with a window
    centred on 0 (``show_signed_map``) white marks S = 0."""

    def entries():
        middle = (SIGNED_COLOURS - 1) // 2
        colours = []
        for index in range(SIGNED_COLOURS):
            strength = abs(index - middle) / middle  # 0 at the middle (S = 0), 1 at both ends
            fade = 1 - 0.85 * strength
            colour = (fade, fade, 1.0) if index < middle else (1.0, fade, fade)  # red mirrors blue
            # Weak evidence fades out, so the CT shows through where S is near 0.
            colours.append((f"{(index - middle) / middle:+.3f}", *colour, min(1.0, strength / SIGNED_FADE)))
        return colours

    return _colour_table_node(scene, SIGNED_COLOUR_NODE_NAME, entries)


def _colour_table_node(scene, name: str, entries):
    """The scene's colour table of this name, or a new one made from ``entries()``:
    (colour name, red, green, blue, alpha) in 0..1, one per table index."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode"):
        return existing
    colours = entries()
    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(colours))
    node.GetLookupTable().SetTableRange(0, len(colours) - 1)
    for index, (colour_name, *rgba) in enumerate(colours):
        node.SetColor(index, colour_name, *rgba)
    node.SetAttribute("Category", "SegHiResGradCAM")
    scene.AddNode(node)
    return node


def import_heatmap(path: Path, volume_node, name: str):
    """Reads a heatmap written in the CT's geometry into a new scalar volume node with
    exactly the CT's IJK-to-RAS, displayed as a heat overlay and placed under the CT."""
    return _import_map(path, volume_node, name, "heatmap", show_heatmap)


def import_signed_map(path: Path, volume_node, name: str):
    """The signed map S (positive and negative evidence) like a heatmap, shown with the
    diverging colour table centred on 0."""
    return _import_map(path, volume_node, name, "signed map", show_signed_map)


def _import_map(path: Path, volume_node, name: str, kind: str, show) -> object:
    scene = volume_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    try:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            raise ExplainInputError(f"Could not read the {kind} {path}.")
        _put_on_volume_grid(node, volume_node)
        follow_transform(node, volume_node)
        node.SetAttribute(OUTPUT_ATTRIBUTE, kind)
        show(node, volume_node)
        place_under(node, volume_node)
        return node
    except Exception:
        remove_output(node)
        raise


PROVENANCE = "SegHiResGradCAM."  # prefix of the provenance attributes on every output node
EXPLAINED_VOLUME = "SegHiResGradCAM.Volume"  # node reference from an output to the CT it explains


def record_provenance(node, provenance: dict[str, str], volume_node) -> None:
    """Writes how an output was made onto it (attributes ``SegHiResGradCAM.<Key>``) and a
    reference to the CT it explains: a saved scene says how each heatmap came about."""
    for key, value in provenance.items():
        node.SetAttribute(PROVENANCE + key, str(value))
    node.SetNodeReferenceID(EXPLAINED_VOLUME, volume_node.GetID())


def provenance_of(node) -> dict[str, str]:
    """The provenance attributes of an output node (empty for any other node)."""
    names = [name for name in node.GetAttributeNames() or () if name.startswith(PROVENANCE)]
    return {name[len(PROVENANCE) :]: node.GetAttribute(name) for name in names}


def follow_transform(node, volume_node) -> None:
    """An output on the CT's voxel grid sits under the CT's parent transform, as Slicer's
    ExportSegmentsToLabelmapNode places its output under its reference volume's."""
    node.SetAndObserveTransformNodeID(volume_node.GetTransformNodeID())


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def _put_on_volume_grid(image_node, volume_node) -> None:
    """Gives ``image_node`` exactly the volume's IJK-to-RAS and voxel order.

    A file written on the volume's grid can come back with its axes reordered or flipped:
    Slicer flips the slice axis of left-handed grids on reading. Such a grid holds the same
    voxel centres, so the array is permuted and flipped back; anything else is refused.
    """
    wanted, found = _ijk_to_ras(volume_node), _ijk_to_ras(image_node)
    mapping = np.linalg.inv(found) @ wanted  # volume IJK -> image IJK
    signs = np.round(mapping[:3, :3])
    sizes = np.array(volume_node.GetImageData().GetDimensions())
    found_sizes = np.array(image_node.GetImageData().GetDimensions())
    order = [int(np.argmax(np.abs(signs[:, axis]))) for axis in range(3)]
    flips = [signs[order[axis], axis] < 0 for axis in range(3)]
    expected_offsets = np.zeros(3)
    for axis in range(3):
        expected_offsets[order[axis]] = sizes[axis] - 1 if flips[axis] else 0
    if (
        sorted(order) != [0, 1, 2]
        or not np.allclose(mapping[:3, :3], signs, atol=1e-3)
        or not np.allclose(mapping[:3, 3], expected_offsets, atol=1e-2)
        or not np.array_equal(found_sizes[order], sizes)
    ):
        raise ExplainInputError("The heatmap's grid differs from the CT's: the computation did not use this CT.")
    values = slicer.util.arrayFromVolume(image_node).transpose(2, 1, 0).transpose(order)  # (i, j, k) of the CT
    for axis in range(3):
        if flips[axis]:
            values = np.flip(values, axis=axis)
    slicer.util.updateVolumeFromArray(image_node, np.ascontiguousarray(values.transpose(2, 1, 0)))
    # Spacing, origin and directions as the volume stores them, so the matrices match bit for bit.
    directions = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    image_node.SetIJKToRASDirectionMatrix(directions)
    image_node.SetSpacing(volume_node.GetSpacing())
    image_node.SetOrigin(volume_node.GetOrigin())


def show_heatmap(heat, volume_node) -> None:
    """Heat colours, window/level 0..1, low heat transparent, foreground at 50 % over the CT
    in every slice view."""
    scene = heat.GetScene()
    display = heat.GetDisplayNode()
    if display is None:
        display = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
        heat.SetAndObserveDisplayNodeID(display.GetID())
    display.SetAndObserveColorNodeID(heat_colour_node(scene).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetLowerThreshold(HEAT_THRESHOLD)
    display.SetUpperThreshold(1.0)
    display.ApplyThresholdOn()
    _show_as_foreground(scene, heat, volume_node)


def show_signed_map(signed, volume_node) -> None:
    """Diverging colours with the window centred on 0 and symmetric (as wide as the largest
    |S|), so that equal evidence for and against looks equally strong; foreground over the CT."""
    scene = signed.GetScene()
    signed.CreateDefaultDisplayNodes()
    display = signed.GetDisplayNode()
    display.SetAndObserveColorNodeID(diverging_colour_node(scene).GetID())
    values = slicer.util.arrayFromVolume(signed)
    largest = float(np.abs(values).max()) if values.size else 0.0
    display.AutoWindowLevelOff()
    display.SetWindowLevel(2 * largest if largest > 0 else 1.0, 0.0)
    display.ApplyThresholdOff()
    _show_as_foreground(scene, signed, volume_node)


def show_in_3d(heat, volume_rendering_logic, own_segmentation=None) -> object:
    """Volume rendering of the heatmap in the 3D view: the heat colours, heat below
    HEAT_THRESHOLD transparent, the hottest voxels at HEAT_VOLUME_OPACITY; and the surfaces
    of ``own_segmentation`` (the module's own predicted segmentation) next to it. A user's
    segmentation is never given a representation it did not have. ``volume_rendering_logic``:
    Slicer's (``slicer.modules.volumerendering.logic()``). Returns the rendering display node."""
    display = volume_rendering_logic.CreateDefaultVolumeRenderingNodes(heat)
    properties = display.GetVolumePropertyNode().GetVolumeProperty()
    colours = heat.GetDisplayNode().GetColorNode().GetLookupTable()
    transfer = properties.GetRGBTransferFunction()
    transfer.RemoveAllPoints()
    count = colours.GetNumberOfTableValues()
    for index in range(count):
        red, green, blue, _ = colours.GetTableValue(index)
        transfer.AddRGBPoint(index / (count - 1), red, green, blue)
    opacity = properties.GetScalarOpacity()
    opacity.RemoveAllPoints()
    opacity.AddPoint(0.0, 0.0)
    opacity.AddPoint(HEAT_THRESHOLD, 0.0)
    opacity.AddPoint(1.0, HEAT_VOLUME_OPACITY)
    display.SetVisibility(True)
    if own_segmentation is not None:
        own_segmentation.CreateClosedSurfaceRepresentation()
        own_segmentation.CreateDefaultDisplayNodes()
        own_segmentation.GetDisplayNode().SetVisibility3D(True)
    return display


def _show_as_foreground(scene, node, volume_node) -> None:
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetBackgroundVolumeID(volume_node.GetID())
        composite.SetForegroundVolumeID(node.GetID())
        composite.SetForegroundOpacity(HEAT_OPACITY)


def place_under(node, parent_node) -> None:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
    parent = hierarchy.GetItemByDataNode(parent_node)
    if not parent:
        parent = hierarchy.CreateItem(hierarchy.GetSceneItemID(), parent_node)
    item = hierarchy.GetItemByDataNode(node)
    if item:
        hierarchy.SetItemParent(item, parent)
    else:
        hierarchy.CreateItem(parent, node)


# Standard terms for the KiTS classes, as Slicer's terminologies name them (SNOMED CT codes from
# Slicer's Terminologies module resources: the 3D Slicer General Anatomy list and the DICOM master
# list), so that segments are named and coloured as in other Slicer tools and DICOM SEG exports.
GENERAL_ANATOMY = "Segmentation category and type - 3D Slicer General Anatomy list"
DICOM_MASTER = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMY = ("123037004", "SCT", "Anatomical Structure")
ALTERED = ("49755003", "SCT", "Morphologically Altered Structure")
KIDNEY = ("64033007", "SCT", "Kidney")
KITS_TERMS = {  # a word of the segment's name -> (context, category, type, anatomic region)
    "tumo": (DICOM_MASTER, ALTERED, ("108369006", "SCT", "Neoplasm"), KIDNEY),
    "cyst": (GENERAL_ANATOMY, ALTERED, ("367643001", "SCT", "Cyst"), KIDNEY),
    "mass": (GENERAL_ANATOMY, ALTERED, ("4147007", "SCT", "Mass"), KIDNEY),
    "kidney": (GENERAL_ANATOMY, ANATOMY, KIDNEY, None),
}


def terminology_entry(segment_name: str) -> str | None:
    """The serialized terminology entry (Slicer's segment tag) for a KiTS segment name, or
    None for a name without a standard term; "kidney+masses" is a mass in the kidney."""
    lowered = segment_name.lower()
    key = next((word for word in KITS_TERMS if word in lowered), None)
    if key is None:
        return None
    context, category, kind, region = KITS_TERMS[key]
    no_code = ("", "", "")
    region = region or no_code
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        context, *category, *kind, *no_code, ANATOMIC_CONTEXT if region[0] else "", *region, *no_code
    )


def segmentation_from_labelmap_file(path: Path, volume_node, segment_styles: dict, name: str):
    """A segmentation node made from a label map file, one segment per label value, named
    and coloured by ``segment_styles`` (label value -> (name, colour)), on the CT's geometry.
    Nothing is left in the scene if the file cannot be read."""
    scene = volume_node.GetScene()
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    try:
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        with temporary_node(scene, "vtkMRMLLabelMapVolumeNode") as labelmap:
            storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
            storage.SetFileName(str(path))
            if not storage.ReadData(labelmap):
                raise ExplainInputError(f"Could not read the label map {path}.")
            if not slicer.vtkSlicerSegmentationsModuleLogic().ImportLabelmapToSegmentationNode(labelmap, segmentation):
                raise ExplainInputError(f"Could not turn the label map {path} into segments.")
        segments = segmentation.GetSegmentation()
        for index in range(segments.GetNumberOfSegments()):
            segment = segments.GetNthSegment(index)
            if segment.GetLabelValue() in segment_styles:
                segment_name, colour = segment_styles[segment.GetLabelValue()]
                segment.SetName(segment_name)
                segment.SetColor(*colour)
                entry = terminology_entry(segment_name)
                if entry:
                    segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), entry)
        return segmentation
    except Exception:
        remove_output(segmentation)
        raise


def import_prediction(path: Path, volume_node, segment_styles: dict, name: str):
    """The network's predicted label map as a segmentation node with named, coloured
    segments (``segment_styles``: label value -> (name, colour)), on the CT's geometry,
    placed under the CT."""
    segmentation = segmentation_from_labelmap_file(path, volume_node, segment_styles, name)
    follow_transform(segmentation, volume_node)
    segmentation.SetAttribute(OUTPUT_ATTRIBUTE, "prediction")
    place_under(segmentation, volume_node)
    return segmentation


def import_metrics_table(rows: list[tuple[str, str]], heatmap_node, name: str):
    """The explanation's metrics as a two-column table node (metric, value) placed next to
    the heatmap under the CT, so that they are saved with the scene."""
    return import_table(["Metric", "Value"], [list(row) for row in rows], heatmap_node, name)


def import_layer_table(layer_rows: dict[str, list[tuple[str, str]]], heatmap_node, name: str):
    """A layer atlas's metrics: one row per layer (coarsest first), one column per metric."""
    metrics = [metric for metric, _ in next(iter(layer_rows.values()))]
    rows = [[layer, *(dict(rows).get(metric, "") for metric in metrics)] for layer, rows in layer_rows.items()]
    return import_table(["Layer", *metrics], rows, heatmap_node, name)


def import_table(columns: list[str], rows: list[list[str]], heatmap_node, name: str):
    """A table node of strings placed next to the heatmap under the CT."""
    scene = heatmap_node.GetScene()
    table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    try:
        table = table_node.GetTable()
        for title in columns:
            column = vtk.vtkStringArray()
            column.SetName(title)
            table.AddColumn(column)
        for values in rows:
            row = table.InsertNextBlankRow()
            for index, value in enumerate(values):
                table.SetValue(row, index, vtk.vtkVariant(str(value)))
        table_node.SetAttribute(OUTPUT_ATTRIBUTE, "metrics")
        table_node.SetAttribute("SegHiResGradCAM.Heatmap", heatmap_node.GetID())
        hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        parent = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(heatmap_node))
        hierarchy.CreateItem(parent, table_node)
        return table_node
    except Exception:
        remove_output(table_node)
        raise


def remove_output(node) -> None:
    """Removes a node this module made, with its display and storage nodes."""
    scene = node.GetScene()
    if node.IsA("vtkMRMLDisplayableNode"):
        for index in reversed(range(node.GetNumberOfDisplayNodes())):
            display = node.GetNthDisplayNode(index)
            if display.IsA("vtkMRMLVolumeRenderingDisplayNode"):
                # Volume rendering brings a property node (and a region node) of its own.
                for helper in (display.GetVolumePropertyNode(), display.GetROINode()):
                    if helper is not None:
                        scene.RemoveNode(helper)
            scene.RemoveNode(display)
    if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
        scene.RemoveNode(node.GetStorageNode())
    scene.RemoveNode(node)


def previous_output(scene, name: str):
    """This module's earlier output of the same name, if any (never a user's node)."""
    for node in _nodes(scene, "vtkMRMLNode"):
        if node.GetName() == name and node.GetAttribute(OUTPUT_ATTRIBUTE):
            return node
    return None


def _nodes(scene, class_name: str):
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
