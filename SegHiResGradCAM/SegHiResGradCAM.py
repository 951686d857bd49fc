"""3D Slicer module: explain a segmentation network's segment with a CAM heatmap.

Slicer loads this file at start-up, so nothing heavy is imported here: torch and MONAI
are only ever imported by the background process that runs the command-line pipeline.
The widget only wires the UI to SegHiResGradCAMLib.mrml.slicer_logic, which is Qt-free.
"""

import json
import subprocess
import sys
from pathlib import Path

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = ("auto", "cuda", "cpu")
POLL_MILLISECONDS = 200


class SegHiResGradCAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Seg-HiRes-Grad CAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["SegHiResGradCAM contributors"]
        self.parent.helpText = (
            "Explains what a segmentation network looked at when it segmented a chosen segment: "
            "computes a class activation map with Seg-HiRes-Grad CAM (Rheude, Wirtz, Wesarg, Kuijper: "
            "Leveraging CAM Algorithms for Explaining Medical Semantic Segmentation) or Seg-Grad CAM "
            "(Vinogradova, Dibrov, Myers, AAAI 2020) and overlays it on the CT in the CT's geometry. "
            "The network runs in a separate process (GPU when available), so Slicer stays responsive."
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
    inputVolume: slicer.vtkMRMLScalarVolumeNode
    usePrediction: bool = True
    targetClass: str = "tumour"
    method: str = "seg-hires-grad-cam"
    layer: str = ""
    device: str = "auto"
    modelPath: str = ""
    withPrediction: bool = False
    withMetrics: bool = False
    trustBundle: bool = False
    folds: str = ""
    replacePrevious: bool = True


def _command_json(*arguments):
    """JSON printed by the command line, run in a separate process (torch stays out of Slicer)."""
    python = slicer.app.applicationDirPath() + "/PythonSlicer" if hasattr(slicer, "app") else sys.executable
    package_parent = str(Path(__file__).resolve().parent)
    code = f"import sys; sys.path.insert(0, {package_parent!r}); from SegHiResGradCAMLib.cli import main; main()"
    output = subprocess.run([python, "-c", code, *arguments, "--json"], capture_output=True, text=True, timeout=300)
    if output.returncode != 0:
        raise RuntimeError(output.stderr.strip().splitlines()[-1] if output.stderr.strip() else "failed")
    return json.loads(output.stdout)


class SegHiResGradCAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._runs = []  # runs still to start (Compare queues two)
        self._run = None
        self._finished = []
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_MILLISECONDS)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SegHiResGradCAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SegHiResGradCAMLogic()
        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelChanged)
        self.ui.trustBundleCheckBox.connect(
            "toggled(bool)", lambda _: self.onModelChanged(self.ui.modelPathLineEdit.currentPath)
        )
        self.ui.foldsLineEdit.connect(
            "editingFinished()", lambda: self.onModelChanged(self.ui.modelPathLineEdit.currentPath)
        )
        self.ui.usePredictionCheckBox.connect("toggled(bool)", self.ui.segmentSelector.setDisabled)
        self._timer.connect("timeout()", self.onPoll)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.initializeParameterNode()
        self.onModelChanged(self.ui.modelPathLineEdit.currentPath)

    def cleanup(self):
        self.cancelRuns()
        self.removeObservers()

    def onSceneStartClose(self, caller, event):
        self.cancelRuns()

    def initializeParameterNode(self):
        self._parameterNode = SegHiResGradCAMParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._parameterNode.connectGui(
            {
                "inputVolume": self.ui.inputVolumeSelector,
                "usePrediction": self.ui.usePredictionCheckBox,
                "targetClass": self.ui.targetClassComboBox,
                "method": self.ui.methodComboBox,
                "layer": self.ui.layerComboBox,
                "device": self.ui.deviceComboBox,
                "modelPath": self.ui.modelPathLineEdit,
                "withPrediction": self.ui.withPredictionCheckBox,
                "withMetrics": self.ui.withMetricsCheckBox,
                "trustBundle": self.ui.trustBundleCheckBox,
                "folds": self.ui.foldsLineEdit,
                "replacePrevious": self.ui.replaceCheckBox,
            }
        )

    def onModelChanged(self, path):
        """Fills classes, methods and layers for the chosen (or bundled) model."""
        from SegHiResGradCAMLib.models.formats import read_model_card

        model = path or None
        trusted = self.ui.trustBundleCheckBox.checked
        folds = self._folds()
        try:
            card = read_model_card(model, trust_bundle=trusted, folds=folds)
            with slicer.util.WaitCursor():
                methods = _command_json("methods")
                model_arguments = (["--model", model] if model else []) + (["--trust-bundle"] if trusted else [])
                model_arguments += ["--folds", *folds] if folds else []
                layers = _command_json("layers", *model_arguments)
        except Exception as error:  # a bad model file: say why, keep the UI usable
            self.ui.statusLabel.text = f"Model not usable: {error}"
            return
        for combo, entries in (
            (self.ui.targetClassComboBox, card.classes[1:] if card.head == "softmax" else card.classes),
            (self.ui.methodComboBox, [method["name"] for method in methods]),
            (self.ui.layerComboBox, [layer["name"] for layer in layers]),
        ):
            combo.clear()
            for entry in entries:
                combo.addItem(entry)
        recommended = next((layer["name"] for layer in layers if layer["recommended"]), "")
        self.ui.layerComboBox.currentText = recommended
        self.ui.methodComboBox.currentText = "seg-hires-grad-cam"
        self.ui.statusLabel.text = f"Model: {card.name}"

    def _folds(self):
        return self.ui.foldsLineEdit.text.replace(",", " ").split() or None

    def _settings(self, method):
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainSettings

        use_prediction = self.ui.usePredictionCheckBox.checked
        model = self.ui.modelPathLineEdit.currentPath or None
        return ExplainSettings(
            volume_node=self.ui.inputVolumeSelector.currentNode(),
            target_class=self.ui.targetClassComboBox.currentText,
            method=method,
            segmentation_node=None if use_prediction else self.ui.segmentSelector.currentNode(),
            segment_id=None if use_prediction else self.ui.segmentSelector.currentSegmentID(),
            model=Path(model) if model else None,
            layer=self.ui.layerComboBox.currentText or None,
            device=self.ui.deviceComboBox.currentText,
            with_prediction=self.ui.withPredictionCheckBox.checked,
            with_metrics=self.ui.withMetricsCheckBox.checked,
            trust_bundle=self.ui.trustBundleCheckBox.checked,
            folds=self._folds(),
            replace_previous=self.ui.replaceCheckBox.checked,
        )

    def onApply(self):
        if self._run is not None:
            self.cancelRuns()
            return
        self.startRuns([self._settings(self.ui.methodComboBox.currentText)])

    def onCompare(self):
        if self._run is None:
            self.startRuns([self._settings("seg-grad-cam"), self._settings("seg-hires-grad-cam")])

    def startRuns(self, settings_list):
        self._runs, self._finished = list(settings_list), []
        self._startNext()

    def _startNext(self):
        from SegHiResGradCAMLib.errors import ExplainInputError

        settings = self._runs.pop(0)
        try:
            self._run = self.logic.start(settings)
        except ExplainInputError as error:
            self._run, self._runs = None, []
            slicer.util.errorDisplay(str(error))
            return
        self.ui.applyButton.text = "Cancel"
        self.ui.compareButton.enabled = False
        self._timer.start()

    def onPoll(self):
        status = self._run.poll()
        self.ui.progressBar.value = int(100 * status.fraction)
        self.ui.statusLabel.text = status.message
        if status.state == "running":
            return
        self._timer.stop()
        run, self._run = self._run, None
        self.ui.applyButton.text = "Apply"
        self.ui.compareButton.enabled = True
        if status.state == "failed":
            self._runs = []
            slicer.util.errorDisplay(f"Explanation failed: {status.message}")
            return
        if status.state == "finished":
            self._finished.append(run.heatmap_node)
            if self._runs:
                self._startNext()
            elif len(self._finished) == 2:
                self.logic.showSideBySide(run.settings.volume_node, *self._finished)

    def cancelRuns(self):
        self._timer.stop()
        self._runs = []
        if self._run is not None:
            self._run.cancel()
            self._run = None
        self.ui.applyButton.text = "Apply"
        self.ui.compareButton.enabled = True
        self.ui.statusLabel.text = "Cancelled."


class SegHiResGradCAMLogic(ScriptedLoadableModuleLogic):
    """Thin: the work is in SegHiResGradCAMLib.mrml.slicer_logic (Qt-free, tested with slicer-core)."""

    def getParameterNode(self):
        return ScriptedLoadableModuleLogic.getParameterNode(self)

    def start(self, settings):
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun

        python = str(Path(slicer.app.applicationDirPath()) / "PythonSlicer")
        return ExplainRun(settings, python=python)

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
    """Runs the whole flow inside Slicer on the sample case, loaded through Sample Data."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_explain_the_sample_tumour()

    def test_explain_the_sample_tumour(self):
        import time

        import SampleData

        from SegHiResGradCAMLib.mrml.sample_data import read_sample_case
        from SegHiResGradCAMLib.mrml.slicer_logic import ExplainSettings

        self.delayDisplay("Loading the KiTS-like sample through Sample Data")
        registerSampleData()
        volume, segmentation = SampleData.downloadSamples(read_sample_case().name)
        tumour = segmentation.GetSegmentation().GetSegmentIdBySegmentName("tumour")
        self.assertTrue(tumour, "the sample's segmentation has no tumour segment")
        self.delayDisplay("Explaining the ground-truth tumour in the background")
        settings = ExplainSettings(volume, "tumour", segmentation_node=segmentation, segment_id=tumour,
                                   with_prediction=True)  # fmt: skip
        run = SegHiResGradCAMLogic().start(settings)
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
