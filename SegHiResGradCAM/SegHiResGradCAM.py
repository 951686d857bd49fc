"""3D Slicer module: explain a segmentation network's segment with a CAM heatmap.

Slicer loads this file at start-up, so nothing heavy is imported here: torch and MONAI
are only ever imported by the background processes that run the command-line pipeline.
The widget only wires the UI to SegHiResGradCAMLib.mrml (Qt-free, tested with
slicer-core); it follows Slicer's scripted module template (TemplateKey.py).
"""

import logging
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cuda", "cpu")
BUNDLED, MODEL_CARD, MONAI_BUNDLE, NNUNET_FOLDER = MODEL_KINDS = (
    "bundled KiTS-like demo model",
    "model card (JSON file)",
    "MONAI bundle (folder)",
    "nnU-Net results (folder)",
)
DEFAULT_METHOD = "seg-hires-grad-cam"
POLL_MILLISECONDS = 200
DOCUMENTATION = "https://github.com/SegHiResGradCAM/SlicerSegHiResGradCAM#readme"


class SegHiResGradCAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Seg-HiRes-Grad CAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegHiResGradCAM developers (SegHiResGradCAM project)"]
        self.parent.helpText = (
            "Explains what a segmentation network looked at when it segmented a chosen segment: "
            "computes a class activation map with Seg-HiRes-Grad CAM (Rheude, Wirtz, Wesarg, Kuijper: "
            "Leveraging CAM Algorithms for Explaining Medical Semantic Segmentation) or Seg-Grad CAM "
            "(Vinogradova, Dibrov, Myers, AAAI 2020) and overlays it on the CT in the CT's geometry. "
            "The network runs in a separate process (GPU when available), so Slicer stays responsive. "
            f'See the <a href="{DOCUMENTATION}">documentation</a>.'
        )
        self.parent.acknowledgementText = (
            "Seg-HiRes-Grad CAM builds on HiResCAM (Draelos and Carin) and Seg-Grad CAM (Vinogradova et al.)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offers the synthetic KiTS-like case in the Sample Data module. The files ship with the
    extension, so Sample Data copies them (file:// URIs) instead of downloading, and checks
    their SHA256 as for any sample."""
    import SampleData

    from SegHiResGradCAMLib.mrml.sample_data import sample_data_source

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source())


@parameterNodeWrapper
class SegHiResGradCAMParameterNode:
    """What the user chose. Widgets with a SlicerParameterName in the .ui are bound by
    connectGui; the model's path, class, method and layer are kept here by hand, since their
    combo boxes are refilled for each model and an empty path must stay empty."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    usePrediction: bool = True
    modelKind: Annotated[str, Choice(MODEL_KINDS)] = BUNDLED
    modelPath: str = ""
    trustBundle: bool = False
    folds: str = ""
    targetClass: str = "tumour"
    method: str = DEFAULT_METHOD
    layer: str = ""
    device: Annotated[str, Choice(DEVICES)] = "auto"
    withPrediction: bool = False
    withMetrics: bool = False
    signedMap: bool = False
    showIn3D: bool = False
    layerAtlas: bool = False
    replacePrevious: bool = True


class SegHiResGradCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._binding = False  # the parameter node is being bound to the widgets
        self._inspector = None
        self._runs = []  # runs still to start (Compare queues two)
        self._run = None
        self._loggedLines = 0
        self._finished = []
        self._runTimer = qt.QTimer()
        self._runTimer.setInterval(POLL_MILLISECONDS)
        self._inspectionTimer = qt.QTimer()
        self._inspectionTimer.setInterval(POLL_MILLISECONDS)

    def setup(self):
        """Builds the UI; runs no process and imports nothing heavy (a test checks it)."""
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegHiResGradCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegHiResGradCAMLogic()
        from SegHiResGradCAMLib.mrml.slicer_logic import ModelInspector

        self._inspector = ModelInspector()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        # Binding the parameter node fills the bound widgets; their model signals are connected
        # afterwards, so that opening the module inspects no model (enter() does, in the background).
        self.initializeParameterNode()
        self._showModelControls()
        self.ui.modelKindComboBox.connect("currentIndexChanged(int)", lambda _: self.onModelChanged())
        self.ui.modelFileLineEdit.connect("currentPathChanged(QString)", lambda _: self.onModelChanged())
        self.ui.modelFolderLineEdit.connect("currentPathChanged(QString)", lambda _: self.onModelChanged())
        self.ui.trustBundleCheckBox.connect("toggled(bool)", lambda _: self.onModelChanged())
        self.ui.foldsLineEdit.connect("editingFinished()", self.onModelChanged)
        self.ui.usePredictionCheckBox.connect("toggled(bool)", self.ui.segmentSelector.setDisabled)
        for combo, parameter in ((self.ui.targetClassComboBox, "targetClass"), (self.ui.methodComboBox, "method"),
                                 (self.ui.layerComboBox, "layer")):  # fmt: skip
            combo.connect("currentIndexChanged(int)", lambda _, c=combo, p=parameter: self._rememberChoice(c, p))
        self._runTimer.connect("timeout()", self.onRunPoll)
        self._inspectionTimer.connect("timeout()", self.onInspectionPoll)
        self._setupCohortReview()
        self._atlas = []
        self.ui.atlasLayerSlider.visible = self.ui.atlasLayerLabel.visible = False  # shown after an atlas run
        self.ui.atlasLayerSlider.connect("valueChanged(int)", self.onAtlasLayerChanged)

    def cleanup(self):
        self.cancelRuns()
        from SegHiResGradCAMLib.mrml.cohort_review import CohortReview

        CohortReview.unload(slicer.mrmlScene)
        if self._inspector is not None:
            self._inspector.cancel()
        self._inspectionTimer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        self.onModelChanged()

    def exit(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event):
        self.cancelRuns()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # The .ui gives each bound widget a "SlicerParameterName" property. Binding refills
            # the bound widgets; their change signals must not inspect the model meanwhile.
            self._binding = True
            try:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            finally:
                self._binding = False
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._restoreModelPath()
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None):
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        idle = self._run is None
        self.ui.applyButton.enabled = ready or not idle  # while running, Apply is Cancel
        self.ui.compareButton.enabled = ready and idle
        self.ui.applyButton.toolTip = "Compute the heatmap in the background" if ready else "Select the input CT"

    # Model choice ------------------------------------------------------------------------

    def _restoreModelPath(self):
        kind, path = self._parameterNode.modelKind, self._parameterNode.modelPath
        if kind == MODEL_CARD:
            self.ui.modelFileLineEdit.currentPath = path
        elif kind in (MONAI_BUNDLE, NNUNET_FOLDER):
            self.ui.modelFolderLineEdit.currentPath = path

    def _showModelControls(self):
        kind = self.ui.modelKindComboBox.currentText
        folder = kind in (MONAI_BUNDLE, NNUNET_FOLDER)
        shown = {self.ui.modelFileLabel: kind == MODEL_CARD, self.ui.modelFileLineEdit: kind == MODEL_CARD,
                 self.ui.modelFolderLabel: folder, self.ui.modelFolderLineEdit: folder,
                 self.ui.trustBundleCheckBox: kind == MONAI_BUNDLE, self.ui.foldsLabel: kind == NNUNET_FOLDER,
                 self.ui.foldsLineEdit: kind == NNUNET_FOLDER}  # fmt: skip
        for widget, visible in shown.items():
            widget.visible = visible

    def _modelPath(self):
        """The chosen model's path; None for the bundled model."""
        from SegHiResGradCAMLib.errors import ExplainInputError

        kind = self.ui.modelKindComboBox.currentText
        if kind == BUNDLED:
            return None
        editor = self.ui.modelFileLineEdit if kind == MODEL_CARD else self.ui.modelFolderLineEdit
        path = editor.currentPath.strip()
        if not path:
            what = "model card file" if kind == MODEL_CARD else "model folder"
            raise ExplainInputError(f"Choose the {what}, or choose the bundled demo model.")
        return Path(path)

    def _folds(self):
        if self.ui.modelKindComboBox.currentText != NNUNET_FOLDER:
            return None
        return self.ui.foldsLineEdit.text.replace(",", " ").split() or None

    def _trusted(self):
        return self.ui.modelKindComboBox.currentText == MONAI_BUNDLE and self.ui.trustBundleCheckBox.checked

    def onModelChanged(self):
        """Fills the classes from the model card at once (no torch needed), then the methods
        and layers from a background inspection (cached per model file version)."""
        from SegHiResGradCAMLib.models.formats import read_model_card

        if self._binding:
            return
        self._showModelControls()
        self._inspectionTimer.stop()
        self._inspector.cancel()
        try:
            model = self._modelPath()
            card = read_model_card(model, trust_bundle=self._trusted(), folds=self._folds())
        except Exception as error:  # a bad or unfinished choice: say why, keep the UI usable
            self.ui.modelStatusLabel.text = f"Model not usable: {error}"
            return
        if self._parameterNode:
            self._parameterNode.modelPath = "" if model is None else str(model)
        self._fill(self.ui.targetClassComboBox, [(name, name) for name in card.target_classes], "targetClass")
        description = self._inspector.request(model, self._trusted(), self._folds())
        if description is not None:
            self._applyDescription(description)
            return
        self._fill(self.ui.methodComboBox, [(self._remembered("method", DEFAULT_METHOD),) * 2], "method")
        self._fill(self.ui.layerComboBox, [("recommended layer", "")], "layer")
        self.ui.modelStatusLabel.text = f"{card.name}: reading its layers and methods in the background ..."
        self._inspectionTimer.start()

    def onInspectionPoll(self):
        try:
            description = self._inspector.poll()
        except RuntimeError as error:
            self._inspectionTimer.stop()
            self.ui.modelStatusLabel.text = f"Model not usable: {error}"
            return
        if description is not None:
            self._inspectionTimer.stop()
            self._applyDescription(description)

    def _applyDescription(self, description):
        from SegHiResGradCAMLib.mrml.slicer_logic import layer_label

        self._fill(self.ui.methodComboBox, [(m["title"], m["name"]) for m in description["methods"]], "method",
                   default=DEFAULT_METHOD)  # fmt: skip
        layers = [(layer_label(layer), layer["name"]) for layer in description["layers"]]
        recommended = next((layer["name"] for layer in description["layers"] if layer["recommended"]), "")
        self._fill(self.ui.layerComboBox, layers, "layer", default=recommended)
        self.ui.modelStatusLabel.text = f"Model: {description['name']} ({len(description['layers'])} layers)"

    def _remembered(self, parameter, default=""):
        return getattr(self._parameterNode, parameter) if self._parameterNode else default

    def _fill(self, combo, entries, parameter, default=""):
        """Refills a combo box with (label, value) entries and selects the remembered value."""
        wanted = self._remembered(parameter) or default
        values = [value for _, value in entries]
        combo.blockSignals(True)
        combo.clear()
        for label, value in entries:
            combo.addItem(label, value)
        chosen = wanted if wanted in values else default
        combo.currentIndex = values.index(chosen) if chosen in values else 0
        combo.blockSignals(False)
        self._rememberChoice(combo, parameter)

    def _rememberChoice(self, combo, parameter):
        if self._parameterNode and combo.currentIndex >= 0:
            setattr(self._parameterNode, parameter, combo.itemData(combo.currentIndex) or "")

    # Runs ----------------------------------------------------------------------------------

    def _settings(self, method):
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainSettings

        use_prediction = self.ui.usePredictionCheckBox.checked
        layer_index = self.ui.layerComboBox.currentIndex
        return ExplainSettings(
            volume_node=self.ui.inputVolumeSelector.currentNode(),
            target_class=self.ui.targetClassComboBox.currentText,
            method=method,
            segmentation_node=None if use_prediction else self.ui.segmentSelector.currentNode(),
            segment_id=None if use_prediction else self.ui.segmentSelector.currentSegmentID(),
            model=self._modelPath(),
            layer=(self.ui.layerComboBox.itemData(layer_index) if layer_index >= 0 else "") or None,
            device=self.ui.deviceComboBox.currentText,
            with_prediction=self.ui.withPredictionCheckBox.checked,
            with_metrics=self.ui.withMetricsCheckBox.checked,
            trust_bundle=self._trusted(),
            folds=self._folds(),
            replace_previous=self.ui.replaceCheckBox.checked,
            signed=self.ui.signedCheckBox.checked,
            atlas=self.ui.layerAtlasCheckBox.checked,
            volume_rendering_logic=slicer.modules.volumerendering.logic() if self.ui.show3DCheckBox.checked else None,
        )

    def _currentMethod(self):
        index = self.ui.methodComboBox.currentIndex
        return (self.ui.methodComboBox.itemData(index) if index >= 0 else "") or DEFAULT_METHOD

    def onApply(self):
        if self._run is not None:
            self.cancelRuns()
            return
        self._startRunsFor([self._currentMethod()])

    def onCompare(self):
        if self._run is None:
            self._startRunsFor(["seg-grad-cam", DEFAULT_METHOD])

    def _startRunsFor(self, methods):
        """Checks the inputs, installs missing packages after asking (first use), starts the
        runs; any error reaches the user, and the UI stays idle."""
        with slicer.util.tryWithErrorDisplay("Could not start the explanation."):
            settings_list = [self._settings(method) for method in methods]
            if not self.logic.ensureDependencies(settings_list[0].model):
                self.ui.statusLabel.text = "Not started: the Python packages it needs were not installed."
                return
            self._runs, self._finished = settings_list, []
            self._startNext()

    def _startNext(self):
        settings = self._runs.pop(0)
        self.ui.logTextEdit.clear()
        self._loggedLines = 0
        try:
            self._run = self.logic.start(settings)
        except Exception:
            self._run, self._runs = None, []
            self._showIdle()
            raise
        self.ui.applyButton.text = "Cancel"
        self._checkCanApply()
        self._runTimer.start()

    def onRunPoll(self):
        """Progress, log and, at the end, the results; an error here stops the polling and
        is shown once, so a run that cannot continue never repeats its error."""
        try:
            status = self._run.poll()
            self._appendLog(self._run.log)
        except Exception as error:
            logging.exception("Seg-HiRes-Grad CAM: the run failed")
            self.cancelRuns(f"Failed: {error}")
            slicer.util.errorDisplay(f"Explanation failed: {error}")
            return
        self.ui.progressBar.value = int(100 * status.fraction)
        self.ui.statusLabel.text = status.message
        if status.state == "running":
            return
        self._runTimer.stop()
        run, self._run = self._run, None
        self._showIdle()
        if status.state == "failed":
            self._runs = []
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(f"Explanation failed: {status.message}", detailedText="\n".join(run.log))
            return
        if status.state == "finished":
            self._showAtlas(run)
            self._finished.append(run.heatmap_node)
            if self._runs:
                with slicer.util.tryWithErrorDisplay("Could not start the next explanation."):
                    self._startNext()
            elif len(self._finished) == 2:
                self.logic.showSideBySide(run.settings.volume_node, *self._finished)

    def _showAtlas(self, run):
        """A layer atlas's slider: one position per layer, coarsest to finest, the finest shown."""
        self._atlas = [(node, run.settings.volume_node) for node in run.atlas_nodes]
        shown = bool(self._atlas)
        self.ui.atlasLayerSlider.visible = shown
        self.ui.atlasLayerLabel.visible = shown
        if shown:
            self.ui.atlasLayerSlider.blockSignals(True)
            self.ui.atlasLayerSlider.minimum = 0
            self.ui.atlasLayerSlider.maximum = len(self._atlas) - 1
            self.ui.atlasLayerSlider.value = len(self._atlas) - 1
            self.ui.atlasLayerSlider.blockSignals(False)
            self.onAtlasLayerChanged(len(self._atlas) - 1)

    def onAtlasLayerChanged(self, index):
        from SegHiResGradCAMLib.mrml import mrml_adapter

        if not 0 <= index < len(self._atlas):
            return
        node, volume = self._atlas[index]
        if slicer.mrmlScene.IsNodePresent(node):
            mrml_adapter.show_heatmap(node, volume)
            self.ui.atlasLayerLabel.text = (
                f"Layer {index + 1} of {len(self._atlas)}: {node.GetAttribute('SegHiResGradCAM.Layer')}"
            )

    def _appendLog(self, lines):
        for line in lines[self._loggedLines :]:
            self.ui.logTextEdit.appendPlainText(line)
        self._loggedLines = len(lines)

    def _showIdle(self):
        self.ui.applyButton.text = "Apply"
        self._checkCanApply()

    def cancelRuns(self, message="Cancelled."):
        """Kills the running computation's whole process tree, then removes its files."""
        self._runTimer.stop()
        self._runs = []
        if self._run is not None:
            run, self._run = self._run, None
            run.cancel()
            self.ui.statusLabel.text = message
        self._showIdle()

    # Cohort review ---------------------------------------------------------------------------

    def _setupCohortReview(self):
        from SegHiResGradCAMLib.mrml.cohort_review import VERDICTS

        self._review = None
        self._reviewedCase = None
        self.ui.verdictComboBox.addItem("(not reviewed)", "")
        for verdict in VERDICTS:
            self.ui.verdictComboBox.addItem(verdict, verdict)
        table = self.ui.cohortTable
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        self.ui.cohortFolderLineEdit.connect("currentPathChanged(QString)", self.onCohortFolderChanged)
        table.connect("itemSelectionChanged()", self.onCohortCaseSelected)
        self.ui.previousCaseButton.connect("clicked(bool)", lambda _: self._stepCase(-1))
        self.ui.nextCaseButton.connect("clicked(bool)", lambda _: self._stepCase(1))
        self.ui.verdictComboBox.connect("currentIndexChanged(int)", lambda _: self.onVerdictChanged())
        self.ui.verdictNoteLineEdit.connect("editingFinished()", self.onVerdictChanged)

    def onCohortFolderChanged(self, path):
        from SegHiResGradCAMLib.mrml.cohort_review import CohortReview

        with slicer.util.tryWithErrorDisplay("Could not open the cohort results."):
            self._review, self._reviewedCase = CohortReview(Path(path)), None
            self._fillCohortTable()

    def _fillCohortTable(self):
        table = self.ui.cohortTable
        summaries = [self._review.summary(case) for case in self._review.cases]
        columns = list(summaries[0]) if summaries else []
        table.setSortingEnabled(False)
        table.clearContents()
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(summaries))
        for row, summary in enumerate(summaries):
            for column, key in enumerate(columns):
                item = qt.QTableWidgetItem()
                value = summary[key]
                try:  # numbers sort as numbers
                    item.setData(qt.Qt.DisplayRole, round(float(value), 4))
                except (TypeError, ValueError):
                    item.setData(qt.Qt.DisplayRole, str(value))
                table.setItem(row, column, item)
        table.setSortingEnabled(True)
        self.ui.reviewProgressLabel.text = self._review.progress

    def _selectedCase(self):
        row = self.ui.cohortTable.currentRow()
        return self.ui.cohortTable.item(row, 0).text() if row >= 0 and self.ui.cohortTable.item(row, 0) else None

    def onCohortCaseSelected(self):
        case = self._selectedCase()
        if self._review is None or case is None or case == self._reviewedCase:
            return
        with slicer.util.tryWithErrorDisplay(f"Could not load case {case}.", waitCursor=True):
            self._review.load_case(slicer.mrmlScene, case)
            self._reviewedCase = case
            saved = self._review.verdicts.get(case, {})
            self.ui.verdictComboBox.blockSignals(True)
            self.ui.verdictComboBox.currentIndex = max(self.ui.verdictComboBox.findData(saved.get("verdict", "")), 0)
            self.ui.verdictComboBox.blockSignals(False)
            self.ui.verdictNoteLineEdit.text = saved.get("note", "")

    def _stepCase(self, step):
        current = self._reviewedCase or self._selectedCase()
        if self._review is None or current is None:
            return
        wanted = self._review.neighbour(current, step)
        table = self.ui.cohortTable
        for row in range(table.rowCount):
            if table.item(row, 0).text() == wanted:
                table.selectRow(row)

    def onVerdictChanged(self):
        index = self.ui.verdictComboBox.currentIndex
        verdict = self.ui.verdictComboBox.itemData(index) if index >= 0 else ""
        if self._review is None or self._reviewedCase is None or not verdict:
            return
        with slicer.util.tryWithErrorDisplay("Could not save the verdict."):
            self._review.set_verdict(self._reviewedCase, verdict, self.ui.verdictNoteLineEdit.text)
            self._fillCohortTable()


class SegHiResGradCAMLogic(ScriptedLoadableModuleLogic):
    """Thin: the work is in SegHiResGradCAMLib.mrml (Qt-free, tested with slicer-core)."""

    def getParameterNode(self):
        return SegHiResGradCAMParameterNode(super().getParameterNode())

    def start(self, settings):
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun

        return ExplainRun(settings)  # the child runs in PythonSlicer (found on the PATH)

    def ensureDependencies(self, model=None):
        """Installs what the background computation needs and is missing, after one
        confirmation; False when the user declines (nothing is installed then)."""
        from SegHiResGradCAMLib.models.nnunet_folder import is_nnunet_folder
        from SegHiResGradCAMLib.mrml import dependencies

        plan = dependencies.plan_installs(nnunet=model is not None and is_nnunet_folder(Path(model)))
        return dependencies.install(
            plan,
            confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, "Seg-HiRes-Grad CAM: Python packages"),
            install_torch=self._installTorch,
            pip_install=slicer.util.pip_install,
        )

    @staticmethod
    def _installTorch(version_requirement):
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            raise RuntimeError(
                "Seg-HiRes-Grad CAM needs the PyTorch extension to install PyTorch: install 'PyTorch' from the "
                "Extensions Manager, restart Slicer, and try again."
            ) from None
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                             torchVersionRequirement=version_requirement)  # fmt: skip

    def showSideBySide(self, volume_node, left_heatmap, right_heatmap):
        """Red view: the first heatmap, Yellow view: the second, both axial over the CT."""
        layout_manager = slicer.app.layoutManager()
        layout_manager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
        for view, heatmap in (("Red", left_heatmap), ("Yellow", right_heatmap)):
            slice_widget = layout_manager.sliceWidget(view)
            slice_widget.mrmlSliceNode().SetOrientationToAxial()
            composite = slice_widget.mrmlSliceCompositeNode()
            composite.SetBackgroundVolumeID(volume_node.GetID())
            composite.SetForegroundVolumeID(heatmap.GetID())
            composite.SetForegroundOpacity(0.5)
            slice_widget.sliceLogic().FitSliceToAll()


class SegHiResGradCAMTest(ScriptedLoadableModuleTest):
    """The whole flow inside Slicer on the sample case, loaded through Sample Data.

    Slicer's build machines have neither PyTorch nor MONAI (as for TotalSegmentator and
    MONAIAuto3DSeg, installing them there is not wanted): with the application in testing
    mode and packages missing, the explanation is skipped with a message. "Reload and Test"
    in an installed Slicer offers to install them and runs everything."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_explain_the_sample_tumour()

    def test_explain_the_sample_tumour(self):
        import time

        import SampleData

        from SegHiResGradCAMLib.mrml import dependencies
        from SegHiResGradCAMLib.mrml.sample_data import read_sample_case
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainSettings

        self.delayDisplay("Loading the KiTS-like sample through Sample Data")
        registerSampleData()
        volume, segmentation = SampleData.downloadSamples(read_sample_case().name)
        tumour = segmentation.GetSegmentation().GetSegmentIdBySegmentName("tumour")
        self.assertTrue(tumour, "the sample's segmentation has no tumour segment")
        logic = SegHiResGradCAMLogic()
        if dependencies.plan_installs() and slicer.app.testingEnabled():
            logging.warning("SegHiResGradCAM self-test: PyTorch or MONAI is not installed, explanation skipped.")
            self.delayDisplay("Explanation skipped: PyTorch or MONAI is not installed")
            return
        self.assertTrue(logic.ensureDependencies(), "the required Python packages were not installed")
        self.delayDisplay("Explaining the ground-truth tumour in the background")
        settings = ExplainSettings(volume, "tumour", segmentation_node=segmentation, segment_id=tumour,
                                   with_prediction=True)  # fmt: skip
        run = logic.start(settings)
        deadline = time.time() + 600
        while (status := run.poll()).state == "running" and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.2)
        self.assertEqual(status.state, "finished", status.message)
        heat = run.heatmap_node
        self.assertEqual(heat.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        expected, found = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(expected)
        heat.GetIJKToRASMatrix(found)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(expected.GetElement(row, column), found.GetElement(row, column))
        heat_array = slicer.util.arrayFromVolume(heat)
        inside = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, tumour, volume) > 0
        self.assertGreater(heat_array[inside].sum() / heat_array.sum(), 0.5, "most heat should lie in the tumour")
        self.delayDisplay("Test passed")
