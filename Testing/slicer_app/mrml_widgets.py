"""Stand-ins for Slicer's qMRML widgets over a real MRML scene, as read in Slicer's
Libs/MRML/Widgets/qMRMLNodeComboBox.cxx (commit 583e9b37d5): the list shows the scene's
nodes of ``nodeTypes`` in scene order, after a "None" entry when ``noneEnabled``. Like any
QComboBox, an empty list that receives rows makes its first row current, so without a
"None" entry the first node that appears is selected (and ``currentNodeChanged`` emitted);
with one, "None" stays selected. Removing the current node selects "None" or, without it,
the first remaining node."""

from __future__ import annotations

import slicer

from . import qt


class qMRMLWidget(qt.QWidget):
    SIGNALS = ("mrmlSceneChanged",)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        if scene is not self._scene:
            self._scene = scene
            self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(qMRMLWidget):
    SIGNALS = ("currentNodeChanged", "currentNodeIDChanged", "nodeAdded", "nodeActivated")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.nodeTypes: list[str] = []
        self.noneEnabled = False
        self.addEnabled = self.removeEnabled = self.renameEnabled = True
        self.showChildNodeTypes = True
        self.selectNodeUponCreation = True
        self._current = None
        self._tags: list[int] = []
        self._attributes: list[tuple[str, str, str]] = []  # (node type, attribute, value) filters

    def addAttribute(self, node_type: str, attribute: str, value="") -> None:
        """Lists only nodes of that type with the attribute (at that value, when one is given);
        qMRMLSortFilterProxyModel re-filters when a node's attributes change."""
        self._attributes.append((node_type, attribute, str(value)))

    def _passes(self, node) -> bool:
        for node_type, attribute, value in self._attributes:
            found = node.GetAttribute(attribute) if node.IsA(node_type) else None
            if node.IsA(node_type) and (found is None or (value and found != value)):
                return False
        return True

    def nodes(self) -> list:
        scene = self._scene
        if scene is None:
            return []
        found = []
        for index in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(index)
            kinds = [
                node.IsA(kind) if self.showChildNodeTypes else node.GetClassName() == kind for kind in self.nodeTypes
            ]
            wanted = any(kinds) and not node.GetHideFromEditors()
            if wanted and self._passes(node):
                found.append(node)
        return found

    def setMRMLScene(self, scene) -> None:
        if scene is self._scene:
            return
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._tags = []
        super().setMRMLScene(scene)
        if scene is not None:
            self._tags = [
                scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, self._on_added),
                scene.AddObserver(slicer.vtkMRMLScene.NodeRemovedEvent, self._on_removed),
            ]
        self._set_current(None if self.noneEnabled else next(iter(self.nodes()), None))

    def _on_added(self, caller, event) -> None:
        if self._current is None and not self.noneEnabled:
            self._set_current(next(iter(self.nodes()), None))

    def _on_removed(self, caller, event) -> None:
        if self._current is not None and self._current not in self.nodes():
            self._set_current(None if self.noneEnabled else next(iter(self.nodes()), None))

    def currentNode(self):
        return self._current

    def currentNodeID(self) -> str:
        return self._current.GetID() if self._current is not None else ""

    def setCurrentNode(self, node) -> None:
        if node is not None and node not in self.nodes():
            return  # qMRMLNodeComboBox ignores a node it does not list
        self._set_current(node)

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if node_id else None)

    def _set_current(self, node) -> None:
        if node is self._current:
            return
        self._current = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    def user_choose(self, node) -> None:
        if not self._enabled:
            raise RuntimeError(f"{self.name} is disabled")
        self.setCurrentNode(node)
        self.nodeActivated.emit(node)


class qMRMLSegmentSelectorWidget(qMRMLWidget):
    SIGNALS = ("currentNodeChanged", "currentSegmentChanged", "segmentSelectionChanged")

    def __init__(self, parent=None):
        super().__init__(parent)
        self._node_box = qMRMLNodeComboBox()
        self._node_box.nodeTypes = ["vtkMRMLSegmentationNode"]
        self._node_box.noneEnabled = True
        self._node_box.currentNodeChanged.connect(self._node_changed)
        self._segment = ""
        self.noneEnabled = True

    def setMRMLScene(self, scene) -> None:
        super().setMRMLScene(scene)
        self._node_box.setMRMLScene(scene)

    def _node_changed(self, node) -> None:
        self.currentNodeChanged.emit(node)
        segments = node.GetSegmentation().GetSegmentIDs() if node is not None else []
        self.setCurrentSegmentID(segments[0] if segments else "")

    def currentNode(self):
        return self._node_box.currentNode()

    def currentNodeID(self) -> str:
        return self._node_box.currentNodeID()

    def setCurrentNode(self, node) -> None:
        self._node_box.setCurrentNode(node)

    def currentSegmentID(self) -> str:
        return self._segment

    def setCurrentSegmentID(self, segment_id: str) -> None:
        if segment_id != self._segment:
            self._segment = segment_id
            self.currentSegmentChanged.emit(segment_id)

    def user_choose(self, node, segment_id: str) -> None:
        if not self._enabled:
            raise RuntimeError(f"{self.name} is disabled")
        self.setCurrentNode(node)
        self.setCurrentSegmentID(segment_id)
