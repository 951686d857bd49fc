"""3D Slicer module: explain a segmentation network's segment with a CAM heatmap.

Slicer loads this file at start-up, so nothing heavy is imported here: torch and MONAI
are only ever imported by the background processes that run the command-line pipeline.
The widget only wires the UI to SegHiResGradCAMLib.mrml (Qt-free, tested with
slicer-core); it follows Slicer's scripted module template (TemplateKey.py).
"""

import logging
import sys
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cuda", "cpu")
BUNDLED = "bundled KiTS-like demo model"
DEFAULT_METHOD = "seg-hires-grad-cam"
SETTINGS_GROUP = "SegHiResGradCAM"
POLL_MILLISECONDS = 200
DOCUMENTATION = "https://github.com/SegHiResGradCAM/SlicerSegHiResGradCAM#readme"
# Slicer 5.10 ships Python 3.12; Slicer 5.8 ships 3.9, on which the library does not import.
MINIMUM_PYTHON = (3, 10)
TOO_OLD = (  # translated when shown
    "Seg-HiRes-Grad CAM needs Slicer 5.10 or newer (Python 3.10 or newer); this Slicer runs Python {version}. "
    "Install a current Slicer from download.slicer.org to use it."
)


def _modelFormats():
    """Label -> model format, for every registered format (a format file of the library adds
    itself to the model-kind selector); none where the library cannot be imported (the panel
    then says why)."""
    if sys.version_info < MINIMUM_PYTHON:
        return {}
    from SegHiResGradCAMLib.models.formats import listed_formats

    return {modelFormat.label: modelFormat for modelFormat in listed_formats()}


MODEL_FORMATS = _modelFormats()
MODEL_KINDS = (BUNDLED, *MODEL_FORMATS)


def pythonTooOld():
    """The message for a Slicer whose Python cannot run the library, else None. This file
    itself stays importable there, so that the panel can say so."""
    if tuple(sys.version_info[:2]) >= MINIMUM_PYTHON:
        return None
    return _(TOO_OLD).format(version=".".join(map(str, sys.version_info[:3])))


class SegHiResGradCAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Seg-HiRes-Grad CAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["SegHiResGradCAM developers (SegHiResGradCAM project)"]
        self.parent.helpText = _(
            "Explains what a segmentation network looked at when it segmented a chosen segment: "
            "computes a class activation map with Seg-HiRes-Grad CAM (Rheude, Wirtz, Wesarg, Kuijper: "
            "Leveraging CAM Algorithms for Explaining Medical Semantic Segmentation) or Seg-Grad CAM "
            "(Vinogradova, Dibrov, Myers, AAAI 2020) and overlays it on the CT in the CT's geometry. "
            "The network runs in a separate process (GPU when available), so Slicer stays responsive. "
            'See the <a href="{documentation}">documentation</a>.'
        ).format(documentation=DOCUMENTATION)
        self.parent.acknowledgementText = _(
            "Seg-HiRes-Grad CAM builds on HiResCAM (Draelos and Carin) and Seg-Grad CAM (Vinogradova et al.)."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Offers the synthetic KiTS-like case in the Sample Data module. The files ship with the
    extension, so Sample Data copies them (file:// URIs) instead of downloading, and checks
    their SHA256 as for any sample."""
    if pythonTooOld():
        logging.warning(pythonTooOld())
        return
    import SampleData

    from SegHiResGradCAMLib.mrml.sample_data import sample_data_source

    SampleData.SampleDataLogic.registerCustomSampleDataSource(**sample_data_source())


def provenanceText(provenance):
    """How a heatmap was made, in one short paragraph for the panel."""
    if not provenance.get("Method"):
        return _("No provenance is recorded on this heatmap (made by an earlier version, or a cohort case).")
    shown = [
        ("Method", _("method")),
        ("Layer", _("layer")),
        ("Model", _("model")),
        ("ModelFile", _("model file")),
        ("Class", _("class")),
        ("Segment", "M"),
        ("TargetScore", "T"),
        ("Device", _("device")),
        ("Version", "SegHiResGradCAM"),
        ("Warnings", _("warning")),
    ]
    return "; ".join(f"{label}: {provenance[key]}" for key, label in shown if provenance.get(key))


@parameterNodeWrapper
class SegHiResGradCAMParameterNode:
    """What the user chose. Widgets with a SlicerParameterName in the .ui are bound by
    connectGui; the model's path, class, method and layer are kept here by hand, since their
    combo boxes are refilled for each model and an empty path must stay empty. Trust in a
    MONAI bundle is not a parameter: a saved scene must never bring it back."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    usePrediction: bool = True
    modelKind: Annotated[str, Choice(MODEL_KINDS)] = BUNDLED
    modelPath: str = ""
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
    perComponent: bool = False
    replacePrevious: bool = True


class SegHiResGradCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._modelChoice = None
        self._inspectionWanted = None  # (model, trusted, folds) to inspect at the next timer tick
        self._device = None  # the machine's device, as the last inspection found it
        self._installing = False  # Python packages are being installed; Apply and Compare wait
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
        if pythonTooOld():  # one clear message instead of a half-built panel (self.ui stays None)
            message = qt.QLabel(pythonTooOld())
            message.wordWrap = True
            self.layout.addWidget(message)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegHiResGradCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegHiResGradCAMLogic()
        from SegHiResGradCAMLib.mrml.slicer_logic import ModelInspector

        self._inspector = ModelInspector(worker=self.logic.worker)  # inspecting warms the worker for Apply

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.releaseButton.connect("clicked(bool)", self.onRelease)
        # The model kind is bound to the parameter node; the module reacts to the node's value,
        # never to the combo box's signal, whose slots run before or after the binding's
        # depending on when connectGui last ran.
        self._applyToolTip = self.ui.applyButton.toolTip  # the .ui's text, shown whenever Apply can run
        settings = qt.QSettings()
        self.ui.modelFileLineEdit.currentPath = settings.value(f"{SETTINGS_GROUP}/modelCard", "")
        self.ui.modelFolderLineEdit.currentPath = settings.value(f"{SETTINGS_GROUP}/modelFolder", "")
        self.ui.modelFileLineEdit.connect("currentPathChanged(QString)", lambda _: self._onModelPathEdited())
        self.ui.modelFolderLineEdit.connect("currentPathChanged(QString)", lambda _: self._onModelPathEdited())
        self.ui.trustBundleCheckBox.connect("toggled(bool)", lambda _: self.onModelChanged())
        self.ui.foldsLineEdit.connect("editingFinished()", self.onModelChanged)
        self.ui.usePredictionCheckBox.connect("toggled(bool)", lambda _: self._updateSegmentSelector())
        for combo, parameter in (
            (self.ui.targetClassComboBox, "targetClass"),
            (self.ui.methodComboBox, "method"),
            (self.ui.layerComboBox, "layer"),
        ):
            combo.connect("currentIndexChanged(int)", lambda _, c=combo, p=parameter: self._rememberChoice(c, p))
        self.initializeParameterNode()
        self._runTimer.connect("timeout()", self.onRunPoll)
        self._inspectionTimer.connect("timeout()", self.onInspectionPoll)
        self._setupCohortReview()
        self._hideAtlas()  # shown after an atlas run
        from SegHiResGradCAMLib.mrml import mrml_adapter

        self.ui.resultSelector.addAttribute("vtkMRMLScalarVolumeNode", mrml_adapter.OUTPUT_ATTRIBUTE, "heatmap")
        self.ui.resultSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onResultSelected)
        self.ui.atlasLayerSlider.connect("valueChanged(int)", self.onAtlasLayerChanged)
        self._showWarmState()

    def cleanup(self):
        if self.ui is None:  # a Slicer too old: nothing was set up
            return
        self.cancelRuns()
        self.logic.releaseWorker()
        from SegHiResGradCAMLib.mrml.cohort_review import CohortReview

        CohortReview.unload(slicer.mrmlScene)
        if self._inspector is not None:
            self._inspector.cancel()
        self._inspectionTimer.stop()
        self.removeObservers()

    def enter(self):
        if self.ui is not None:
            self.initializeParameterNode()
            self._showWarmState()

    def exit(self):
        if self.ui is not None:
            self.setParameterNode(None)
            if self._run is None:  # else when the run ends (onRunPoll)
                self._releaseWorker()

    def onSceneStartClose(self, caller, event):
        self.cancelRuns()
        self._releaseWorker()  # the CT it holds is gone
        self.setParameterNode(None)
        self._closeCohortReview()
        self._hideAtlas()

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        fresh = not self.logic.hasModelChoice()
        parameterNode = self.logic.getParameterNode()
        if fresh:  # a new scene, or a closed one: start from the model used last
            remembered = qt.QSettings().value(f"{SETTINGS_GROUP}/modelKind", BUNDLED)
            if remembered in MODEL_KINDS and remembered != BUNDLED:
                parameterNode.modelKind = remembered
                parameterNode.modelPath = self._modelEditor(remembered).currentPath.strip()
        self.setParameterNode(parameterNode)
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._modelChoice = None  # (kind, path) the model controls were last filled for
        if self._parameterNode:
            # The .ui gives each bound widget a "SlicerParameterName" property.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None):
        """Every change of the parameter node, from the GUI's bindings or from code: Apply's
        state, the segment selector, and the model controls when the model choice changed."""
        if not self._parameterNode:
            return
        self._checkCanApply()
        self._updateSegmentSelector()
        kind = self._parameterNode.modelKind
        if self._modelChoice is None or kind != self._modelChoice[0]:
            editor = self._modelEditor(kind)
            path = editor.currentPath.strip() if editor is not None else ""
            if self._modelChoice is not None and path != self._parameterNode.modelPath:
                self._parameterNode.modelPath = path  # comes back here, with the kind's own path
                return
            self._modelEditorFor(kind, self._parameterNode.modelPath)
        choice = (kind, self._parameterNode.modelPath)
        if choice == self._modelChoice:
            return
        self._modelChoice = choice
        self.ui.trustBundleCheckBox.checked = False  # trust is given to one bundle, and only by the user
        self._showModelControls()
        self._rememberModelChoice()
        self.onModelChanged()

    def _updateSegmentSelector(self):
        self.ui.segmentSelector.enabled = not self.ui.usePredictionCheckBox.checked

    def _checkCanApply(self, caller=None, event=None):
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        idle = self._run is None and not self._installing
        self.ui.applyButton.enabled = (ready and not self._installing) or self._run is not None  # running: Cancel
        self.ui.compareButton.enabled = ready and idle
        self.ui.applyButton.toolTip = self._applyToolTip if ready else _("Select the input CT")

    # Model choice ------------------------------------------------------------------------

    def _modelEditor(self, kind):
        """The path box of a model kind (a file or a folder picker, as its format says); None
        for the bundled model."""
        modelFormat = MODEL_FORMATS.get(kind)
        if modelFormat is None:
            return None
        return self.ui.modelFileLineEdit if modelFormat.picks == "file" else self.ui.modelFolderLineEdit

    def _takes(self, option):
        """Whether the chosen model kind takes an option (trusting a bundle, choosing folds)."""
        modelFormat = MODEL_FORMATS.get(self._parameterNode.modelKind) if self._parameterNode else None
        return modelFormat is not None and option in modelFormat.options

    def _modelEditorFor(self, kind, path):
        """Shows a kind's stored path in its path box (an empty one keeps what the box holds)."""
        editor = self._modelEditor(kind)
        if editor is not None and path and editor.currentPath != path:
            editor.currentPath = path

    def _onModelPathEdited(self):
        if not self._parameterNode:
            return
        editor = self._modelEditor(self._parameterNode.modelKind)
        if editor is not None:
            self._parameterNode.modelPath = editor.currentPath.strip()

    def _rememberModelChoice(self):
        """The last model kind and paths, for the next Slicer session (as the anchors remember folders)."""
        settings = qt.QSettings()
        settings.setValue(f"{SETTINGS_GROUP}/modelKind", self._parameterNode.modelKind)
        for key, editor in (("modelCard", self.ui.modelFileLineEdit), ("modelFolder", self.ui.modelFolderLineEdit)):
            if editor.currentPath.strip():
                settings.setValue(f"{SETTINGS_GROUP}/{key}", editor.currentPath.strip())

    def _showModelControls(self):
        from SegHiResGradCAMLib.models.formats import FOLDS, TRUST

        editor = self._modelEditor(self._parameterNode.modelKind if self._parameterNode else BUNDLED)
        picksFile, picksFolder = editor is self.ui.modelFileLineEdit, editor is self.ui.modelFolderLineEdit
        shown = {
            self.ui.modelFileLabel: picksFile,
            self.ui.modelFileLineEdit: picksFile,
            self.ui.modelFolderLabel: picksFolder,
            self.ui.modelFolderLineEdit: picksFolder,
            self.ui.trustBundleCheckBox: self._takes(TRUST),
            self.ui.foldsLabel: self._takes(FOLDS),
            self.ui.foldsLineEdit: self._takes(FOLDS),
        }
        for widget, visible in shown.items():
            widget.visible = visible

    def _modelSource(self):
        """The chosen model with its options (a ModelSource); the bundled model's has no path."""
        from SegHiResGradCAMLib.errors import ExplainInputError
        from SegHiResGradCAMLib.models.formats import FOLDS, TRUST, ModelSource

        kind = self._parameterNode.modelKind
        if kind == BUNDLED:
            return ModelSource()
        path = self._parameterNode.modelPath.strip()
        if not path:
            what = _("model card file") if MODEL_FORMATS[kind].picks == "file" else _("model folder")
            raise ExplainInputError(_("Choose the {what}, or choose the bundled demo model.").format(what=what))
        folds = self.ui.foldsLineEdit.text.replace(",", " ").split() if self._takes(FOLDS) else None
        trusted = self._takes(TRUST) and self.ui.trustBundleCheckBox.checked
        return ModelSource(Path(path), trusted, tuple(folds) if folds else None)

    def onModelChanged(self):
        """Fills the classes from the model card at once (no torch needed), then the methods
        and layers from a background inspection (cached per model file version), started by
        the next timer tick, so that setting up the panel starts no process; nothing is
        inspected while packages are missing."""
        if not self._parameterNode:
            return
        self._inspectionTimer.stop()
        self._inspector.cancel()
        self._inspectionWanted = None
        try:
            model = self._modelSource()
            card = model.read()
        except Exception as error:  # a bad or unfinished choice: say why, keep the UI usable
            self.ui.modelStatusLabel.text = _("Model not usable: {error}").format(error=error)
            return
        self._fill(self.ui.targetClassComboBox, [(name, name) for name in card.target_classes], "targetClass")
        self._fill(self.ui.methodComboBox, [(self._remembered("method", DEFAULT_METHOD),) * 2], "method")
        self._fill(self.ui.layerComboBox, [(_("recommended layer"), "")], "layer")
        missing = self.logic.missingPackages(model)
        if missing:
            self.ui.modelStatusLabel.text = _(
                "{model}: its layers and methods are read once {packages} installed (Apply offers to install them)."
            ).format(model=card.name, packages=missing)
            return
        self.ui.modelStatusLabel.text = _("{model}: reading its layers and methods in the background ...").format(
            model=card.name
        )
        self._inspectionWanted = model  # asked at the next timer tick
        self._inspectionTimer.start()

    def _inspecting(self):
        return self._inspectionWanted is not None or self._inspector.busy

    def onInspectionPoll(self):
        if self._inspectionWanted is not None:
            wanted, self._inspectionWanted = self._inspectionWanted, None
            description = self._inspector.request(wanted)
            if description is not None:
                self._inspectionTimer.stop()
                self._applyDescription(description)
            return
        try:
            description = self._inspector.poll()
        except RuntimeError as error:
            self._inspectionTimer.stop()
            self.ui.modelStatusLabel.text = _("Model not usable: {error}").format(error=error)
            return
        if description is not None:
            self._inspectionTimer.stop()
            self._applyDescription(description)
            self._showWarmState()  # the inspection left the model loaded

    def _applyDescription(self, description):
        from SegHiResGradCAMLib.mrml.slicer_logic import layer_label

        self._fill(
            self.ui.methodComboBox,
            [(m["title"], m["name"]) for m in description["methods"]],
            "method",
            default=DEFAULT_METHOD,
        )
        layers = [(layer_label(layer), layer["name"]) for layer in description["layers"]]
        recommended = next((layer["name"] for layer in description["layers"] if layer["recommended"]), "")
        self._fill(self.ui.layerComboBox, layers, "layer", default=recommended)
        self._device = description.get("device")
        self.ui.modelStatusLabel.text = _("Model: {model} ({count} layers); runs on {device}").format(
            model=description["name"], count=len(description["layers"]), device=self._deviceText()
        )

    def _deviceText(self):
        """Where a run will compute, as the inspection found the machine and the device choice says."""
        chosen = self.ui.deviceComboBox.currentText
        found = self._device or {}
        if chosen == "cpu" or (chosen == "auto" and found.get("kind") == "cpu"):
            return _("the CPU")
        if chosen == "cuda" and found.get("kind") not in (None, "cuda"):
            return _("CUDA, which this computer does not have: the run will fail; choose auto or cpu")
        name = found.get("name", _("the GPU when there is one, else the CPU"))
        if found.get("memory_gb"):
            return _("{name} ({memory} GB)").format(name=name, memory=found["memory_gb"])
        return name

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
            model=self._modelSource(),
            layer=(self.ui.layerComboBox.itemData(layer_index) if layer_index >= 0 else "") or None,
            device=self.ui.deviceComboBox.currentText,
            with_prediction=self.ui.withPredictionCheckBox.checked,
            with_metrics=self.ui.withMetricsCheckBox.checked,
            replace_previous=self.ui.replaceCheckBox.checked,
            signed=self.ui.signedCheckBox.checked,
            atlas=self.ui.layerAtlasCheckBox.checked,
            per_component=self.ui.perComponentCheckBox.checked,
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
        if self._installing or self._run is not None:
            return  # a click that came through while packages install or a run starts
        with slicer.util.tryWithErrorDisplay(_("Could not start the explanation.")):
            settings_list = [self._settings(method) for method in methods]
            if self.logic.missingPackages(settings_list[0].model) and not self._installPackages(settings_list[0].model):
                self.ui.statusLabel.text = _("Not started: the Python packages it needs were not installed.")
                return
            warning = self.logic.memoryWarning(settings_list[0])
            if warning:  # the run would be refused: say so now, with the estimate
                self.ui.statusLabel.text = _("Not started: the CT would not fit in memory.")
                slicer.util.warningDisplay(warning, windowTitle=_("Seg-HiRes-Grad CAM"))
                return
            self._runs, self._finished = settings_list, []
            self._startNext()

    def _installPackages(self, model):
        """Installs what is missing, after one confirmation. Meanwhile the installers keep
        Slicer's events going, so Apply and Compare are disabled, the cursor waits and the
        status says what is being installed; afterwards the model is inspected again."""
        cursor = []

        def showStep(text):
            if not cursor:
                slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
                cursor.append(True)
            self.ui.statusLabel.text = text
            slicer.app.processEvents()  # show the text before the installer blocks

        self._installing = True
        self._checkCanApply()
        try:
            installed = self.logic.ensureDependencies(model, progress=showStep)
        finally:
            if cursor:
                slicer.app.restoreOverrideCursor()
            self._installing = False
            self._checkCanApply()
        if installed:
            self.ui.statusLabel.text = _("Python packages installed.")
            self.onModelChanged()  # the layers and methods can be read now
        return installed

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
        self.ui.applyButton.text = _("Cancel")
        self.ui.statusLabel.text = _("Starting on {device} ...").format(device=self._deviceText())
        self._checkCanApply()
        self._showWarmState()
        self._runTimer.start()

    def onRunPoll(self):
        """Progress, log and, at the end, the results; an error here stops the polling and
        is shown once, so a run that cannot continue never repeats its error."""
        try:
            status = self._run.poll()
            self._appendLog(self._run.log)
        except Exception as error:
            logging.exception("Seg-HiRes-Grad CAM: the run failed")
            self.cancelRuns(_("Failed: {error}").format(error=error))
            slicer.util.errorDisplay(_("Explanation failed: {error}").format(error=error))
            return
        self.ui.progressBar.value = int(100 * status.fraction)
        self.ui.statusLabel.text = status.message
        if status.state == "running":
            return
        self._runTimer.stop()
        run, self._run = self._run, None
        if not self.parent.isEntered:  # the module was left while the run went on
            self.logic.releaseWorker()
        self._showIdle()
        if status.state == "failed":
            self._runs = []
            self.ui.logCollapsibleButton.collapsed = False
            slicer.util.errorDisplay(
                _("Explanation failed: {error}").format(error=status.message), detailedText="\n".join(run.log)
            )
            return
        if status.state == "finished":
            if run.warnings:  # the map is shown, and why not to trust it is said where the user looks
                self.ui.statusLabel.text = _("Done, with a warning: {warnings}").format(warnings=" ".join(run.warnings))
            self._showAtlas(run)
            self._finished.append(run.heatmap_node)
            self.ui.resultSelector.setCurrentNode(run.heatmap_node)
            if self._runs:
                with slicer.util.tryWithErrorDisplay(_("Could not start the next explanation.")):
                    self._startNext()
            elif len(self._finished) == 2:
                self.logic.showSideBySide(run.settings.volume_node, *self._finished)

    def onResultSelected(self, node):
        """Shows a heatmap of this module over the CT it explains, and how it was made."""
        from SegHiResGradCAMLib.mrml import mrml_adapter

        if node is None:
            self.ui.provenanceLabel.text = ""
            return
        volume = node.GetNodeReference(mrml_adapter.EXPLAINED_VOLUME)
        if volume is not None:
            mrml_adapter.show_heatmap(node, volume)
        self.ui.provenanceLabel.text = provenanceText(mrml_adapter.provenance_of(node))

    def _hideAtlas(self):
        self._atlas = []
        self.ui.atlasLayerSlider.visible = self.ui.atlasLayerLabel.visible = False

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
            if node.GetAttribute("SegHiResGradCAM.Component"):
                self.ui.atlasLayerLabel.text = _("Part {index} of {count}: {volume} ml").format(
                    index=index + 1, count=len(self._atlas), volume=node.GetAttribute("SegHiResGradCAM.VolumeMl")
                )
            else:
                self.ui.atlasLayerLabel.text = _("Layer {index} of {count}: {layer}").format(
                    index=index + 1, count=len(self._atlas), layer=node.GetAttribute("SegHiResGradCAM.Layer")
                )

    def _appendLog(self, lines):
        for line in lines[self._loggedLines :]:
            self.ui.logTextEdit.appendPlainText(line)
        self._loggedLines = len(lines)

    def _showIdle(self):
        self.ui.applyButton.text = _("Apply")
        self._checkCanApply()
        self._showWarmState()

    def _showWarmState(self):
        """Whether the background process holds a model (the next question is faster), and
        the Release button while it does and no run goes on."""
        loaded = self.logic.loadedModel()
        self.ui.warmLabel.text = (
            _("Warm: {model} loaded; the next question about this CT answers faster.").format(model=loaded)
            if loaded
            else _("Model not loaded: the next run loads it.")
        )
        self.ui.releaseButton.enabled = bool(loaded) and self._run is None

    def onRelease(self):
        if self._run is None:
            self._releaseWorker()

    def _releaseWorker(self):
        self.logic.releaseWorker()
        self._showWarmState()

    def cancelRuns(self, message=None):
        """Kills the running computation's whole process tree, then removes its files."""
        self._runTimer.stop()
        self._runs = []
        if self._run is not None:
            run, self._run = self._run, None
            run.cancel()
            self.ui.statusLabel.text = message or _("Cancelled.")
        self._showIdle()

    # Cohort review ---------------------------------------------------------------------------

    def _setupCohortReview(self):
        from SegHiResGradCAMLib.mrml.cohort_review import VERDICTS

        self._review = None
        self._reviewedCase = None
        self.ui.verdictComboBox.addItem(_("(not reviewed)"), "")
        for verdict in VERDICTS:
            self.ui.verdictComboBox.addItem(verdict, verdict)
        table = self.ui.cohortTable
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        table.setSelectionMode(qt.QAbstractItemView.SingleSelection)
        # QHeaderView starts with a descending indicator on the first column; cases read best upwards.
        table.horizontalHeader().setSortIndicator(0, qt.Qt.AscendingOrder)
        self.ui.cohortFolderLineEdit.connect("currentPathChanged(QString)", self.onCohortFolderChanged)
        table.connect("itemSelectionChanged()", self.onCohortCaseSelected)
        self.ui.previousCaseButton.connect("clicked(bool)", lambda _: self._stepCase(-1))
        self.ui.nextCaseButton.connect("clicked(bool)", lambda _: self._stepCase(1))
        self.ui.verdictComboBox.connect("currentIndexChanged(int)", lambda _: self.onVerdictChanged())
        self.ui.verdictNoteLineEdit.connect("editingFinished()", self.onVerdictChanged)
        self._showVerdictControls()

    def onCohortFolderChanged(self, path):
        """Opens a results folder once the path names one; a path being typed, or a folder
        without results, is only described in the label (ctkPathLineEdit reports every
        keystroke)."""
        from SegHiResGradCAMLib.mrml.cohort_review import CohortReview, is_results_folder

        folder = Path(path.strip()) if path.strip() else None
        if folder is None or not is_results_folder(folder):
            self._closeCohortReview()
            self._review = None
            self.ui.cohortTable.setRowCount(0)
            self.ui.reviewProgressLabel.text = _("Choose a folder made by 'seghiresgradcam cohort' (with results.csv).")
            return
        if self._review is not None and self._review.results == folder:
            return
        self._closeCohortReview()
        with slicer.util.tryWithErrorDisplay(_("Could not open the cohort results.")):
            self._review = CohortReview(folder)
            self._fillCohortTable()

    def _closeCohortReview(self):
        """Forgets the reviewed case (its nodes went with the scene, or go now)."""
        from SegHiResGradCAMLib.mrml.cohort_review import CohortReview

        if self._reviewedCase is not None and slicer.mrmlScene is not None:
            CohortReview.unload(slicer.mrmlScene)
        self._reviewedCase = None
        self.ui.cohortTable.clearSelection()
        self._showVerdictControls()

    def _fillCohortTable(self):
        table = self.ui.cohortTable
        summaries = [self._review.summary(case) for case in self._review.cases]
        columns = list(summaries[0]) if summaries else []
        table.blockSignals(True)  # refilling moves the selection; the reviewed case is selected again below
        table.setSortingEnabled(False)
        table.clearContents()
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(summaries))
        for row, summary in enumerate(summaries):
            failure = self._review.failure(summary["case"])
            for column, key in enumerate(columns):
                item = qt.QTableWidgetItem()
                value = summary[key]
                try:  # numbers sort as numbers
                    item.setData(qt.Qt.DisplayRole, round(float(value), 4))
                except (TypeError, ValueError):
                    item.setData(qt.Qt.DisplayRole, str(value))
                if failure:
                    item.setToolTip(_("Not reviewable: {reason}").format(reason=failure))
                table.setItem(row, column, item)
        table.setSortingEnabled(True)
        self._selectCaseRow(self._reviewedCase)
        table.blockSignals(False)
        self.ui.reviewProgressLabel.text = self._review.progress

    def _visibleCases(self):
        table = self.ui.cohortTable
        return [table.item(row, 0).text() for row in range(table.rowCount) if table.item(row, 0)]

    def _selectCaseRow(self, case):
        cases = self._visibleCases()
        if case in cases:
            self.ui.cohortTable.selectRow(cases.index(case))
        else:
            self.ui.cohortTable.clearSelection()

    def _selectedCase(self):
        row = self.ui.cohortTable.currentRow()
        return self.ui.cohortTable.item(row, 0).text() if row >= 0 and self.ui.cohortTable.item(row, 0) else None

    def onCohortCaseSelected(self):
        from SegHiResGradCAMLib.mrml.cohort_review import CohortReview

        case = self._selectedCase()
        if self._review is None or case is None or case == self._reviewedCase:
            return
        failure = self._review.failure(case)
        if failure:  # nothing to show: the previous case goes, and no verdict can be given
            CohortReview.unload(slicer.mrmlScene)
            self._reviewedCase = None
            self._showVerdictControls(_("{case} failed in the cohort run: {reason}").format(case=case, reason=failure))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load case {case}.").format(case=case), waitCursor=True):
            self._reviewedCase = None
            self._showVerdictControls()
            self._review.load_case(slicer.mrmlScene, case)
            self._reviewedCase = case
            self._showVerdictControls()

    def _showVerdictControls(self, message=None):
        """The verdict and note of the reviewed case; disabled without one, so that a verdict
        can never be saved for another case than the one shown."""
        reviewed = self._reviewedCase
        saved = self._review.verdicts.get(reviewed, {}) if self._review is not None and reviewed else {}
        self.ui.verdictComboBox.blockSignals(True)
        self.ui.verdictComboBox.currentIndex = max(self.ui.verdictComboBox.findData(saved.get("verdict", "")), 0)
        self.ui.verdictComboBox.blockSignals(False)
        self.ui.verdictNoteLineEdit.text = saved.get("note", "")
        for widget in (self.ui.verdictComboBox, self.ui.verdictNoteLineEdit):
            widget.enabled = reviewed is not None
        if self._review is not None:
            self.ui.reviewProgressLabel.text = message or self._review.progress

    def _stepCase(self, step):
        """The next or previous reviewable case in the order the table shows."""
        if self._review is None:
            return
        cases = self._visibleCases()
        current = self._reviewedCase or self._selectedCase()
        start = cases.index(current) if current in cases else (-1 if step > 0 else len(cases))
        index = start + step
        while 0 <= index < len(cases) and self._review.failure(cases[index]):
            index += step
        if 0 <= index < len(cases):
            self.ui.cohortTable.selectRow(index)

    def onVerdictChanged(self):
        if self._review is None or self._reviewedCase is None:
            return
        index = self.ui.verdictComboBox.currentIndex
        verdict = self.ui.verdictComboBox.itemData(index) if index >= 0 else ""
        note = self.ui.verdictNoteLineEdit.text
        with slicer.util.tryWithErrorDisplay(_("Could not save the verdict.")):
            if verdict:
                self._review.set_verdict(self._reviewedCase, verdict, note)
            elif self._reviewedCase in self._review.verdicts:  # cleared: the verdict and its note go
                self._review.clear_verdict(self._reviewedCase)
                self.ui.verdictNoteLineEdit.text = note = ""
            self._fillCohortTable()
            if note.strip() and not verdict:
                self.ui.reviewProgressLabel.text = _("The note is saved with a verdict: choose one.")


class SegHiResGradCAMLogic(ScriptedLoadableModuleLogic):
    """Thin: the work is in SegHiResGradCAMLib.mrml (Qt-free, tested with slicer-core)."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        from SegHiResGradCAMLib.mrml.background import WarmWorker

        self.worker = WarmWorker()  # started by the first run, kept between runs (see releaseWorker)

    def getParameterNode(self):
        return SegHiResGradCAMParameterNode(super().getParameterNode())

    def hasModelChoice(self):
        """Whether the scene's parameter node holds a model choice (a new or closed scene's does not)."""
        return bool(super().getParameterNode().GetParameter("modelKind"))

    @staticmethod
    def missingPackages(model=None):
        """What must be installed before the model can be inspected or run ("" when nothing),
        read from package metadata without importing anything."""
        from SegHiResGradCAMLib.mrml import dependencies

        return dependencies.missing_summary(dependencies.plan_for_model(model))

    @staticmethod
    def memoryWarning(settings):
        from SegHiResGradCAMLib.mrml.slicer_logic import memory_warning

        return memory_warning(settings)

    def start(self, settings):
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun

        return ExplainRun(settings, worker=self.worker)  # the worker runs in PythonSlicer (found on the PATH)

    def loadedModel(self):
        """The model the warm worker holds ("" when there is none: never started, released, ended idle)."""
        return self.worker.loaded if self.worker.alive else ""

    def releaseWorker(self):
        """Ends the warm worker; its memory (network, CT, logits) goes with it."""
        self.worker.release()

    def ensureDependencies(self, model=None, progress=None):
        """Installs what the background computation needs and is missing, after one
        confirmation; False when the user declines (nothing is installed then).
        ``progress(text)`` is told each step before it runs."""
        from SegHiResGradCAMLib.mrml import dependencies

        plan = dependencies.plan_for_model(model)
        return dependencies.install(
            plan,
            confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, _("Seg-HiRes-Grad CAM: Python packages")),
            install_torch=self._installTorch,
            pip_install=slicer.util.pip_install,
            progress=progress,
            install_nnunet=self._installNNUNet,
        )

    @staticmethod
    def _installNNUNet(arguments):
        """nnU-Net through the SlicerNNUNet extension's installer where that extension is
        installed (it keeps Slicer's SimpleITK and PyTorch, and leaves a compatible nnU-Net
        alone, as TotalSegmentator does); otherwise with pip, without dependencies."""
        nnunet = next((argument for argument in arguments if argument.startswith("nnunetv2")), None)
        try:
            from SlicerNNUNetLib.InstallLogic import InstallLogic
        except ImportError:
            InstallLogic = None
        if InstallLogic is None or nnunet is None:
            slicer.util.pip_install(arguments)
            return
        if not InstallLogic(doAskConfirmation=False).setupPythonRequirements(nnunet):
            raise RuntimeError(
                "The nnUNet extension could not install nnU-Net: see the Python console, or install it in the "
                "nnUNet module, then try again."
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
        return PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=False, torchVersionRequirement=version_requirement
        )

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
        if pythonTooOld():
            self.delayDisplay(pythonTooOld())
            return
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
        settings = ExplainSettings(
            volume, "tumour", segmentation_node=segmentation, segment_id=tumour, with_prediction=True
        )
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
