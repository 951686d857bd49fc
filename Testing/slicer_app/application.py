"""The application around the module: ``slicer.app``, the module's loading from its file,
``slicer.util``'s dialogs and ``loadUI`` (a .ui file's widgets built as stand-ins, with their
properties and the .ui's signal connections), ScriptedLoadableModule, and a PythonSlicer
launcher that runs the interpreter as its child, as CTK's AppLauncher does.

Read in Slicer's source (commit 583e9b37d5): Base/Python/slicer/util.py (loadUI,
childWidgetVariables, tryWithErrorDisplay, errorDisplay, confirmOkCancelDisplay,
executePythonModule) and Base/Python/slicer/ScriptedLoadableModule.py (getParameterNode).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import slicer
import slicer.util

from work_clock import wait_while_working

from . import ctk, mrml_widgets, parameter_node, qt

MODULE_FOLDER = Path(__file__).resolve().parents[2] / "SegHiResGradCAM"
MODULE_FILE = MODULE_FOLDER / "SegHiResGradCAM.py"

WIDGET_CLASSES = {
    cls.__name__: cls
    for cls in (
        qt.QWidget,
        qt.QLabel,
        qt.QPushButton,
        qt.QCheckBox,
        qt.QComboBox,
        qt.QLineEdit,
        qt.QPlainTextEdit,
        qt.QProgressBar,
        qt.QSlider,
        qt.QTableWidget,
        ctk.ctkPathLineEdit,
        ctk.ctkCollapsibleButton,
        ctk.ctkCheckBox,
        ctk.ctkComboBox,
        mrml_widgets.qMRMLWidget,
        mrml_widgets.qMRMLNodeComboBox,
        mrml_widgets.qMRMLSegmentSelectorWidget,
    )
}


def _property_value(element):
    child = next(iter(element))
    if child.tag == "string":
        return child.text or ""
    if child.tag == "bool":
        return child.text == "true"
    if child.tag == "number":
        return int(child.text)
    if child.tag == "stringlist":
        return [item.text or "" for item in child.findall("string")]
    if child.tag in ("set", "enum"):
        return child.text
    return None


def load_ui(path) -> qt.QWidget:
    """The .ui's widget tree as stand-ins: an unknown widget class fails, each property is
    set (a dynamic one, ``stdset="0"``, with setProperty), and the .ui's connections are
    made as QUiLoader makes them."""
    tree = ElementTree.parse(path)
    named = {}

    def build(element, parent):
        class_name = element.get("class")
        if class_name not in WIDGET_CLASSES:
            raise RuntimeError(f"the .ui uses {class_name}, which these tests do not model")
        widget = WIDGET_CLASSES[class_name](parent)
        widget.name = element.get("name")
        named[widget.name] = widget
        for prop in element.findall("property"):
            value = _property_value(prop)
            if prop.get("stdset") == "0":
                widget.setProperty(prop.get("name"), value)
            elif prop.get("name") not in ("geometry", "sizePolicy", "orientation", "alignment", "filters"):
                setattr(widget, prop.get("name"), value)
        for child in element.iter("widget"):
            if child is not element and _direct_widget_child(element, child):
                build(child, widget)
        return widget

    root = build(tree.getroot().find("widget"), None)
    for connection in tree.getroot().iter("connection"):
        sender, receiver = named[connection.findtext("sender")], named[connection.findtext("receiver")]
        slot = getattr(receiver, connection.findtext("slot").split("(")[0])
        sender.connect(connection.findtext("signal"), slot)
    return root


def _direct_widget_child(parent, candidate) -> bool:
    """Whether ``candidate`` is a widget of ``parent`` with no widget between them (layouts
    and items may be)."""
    stack = list(parent)
    while stack:
        element = stack.pop()
        if element is candidate:
            return True
        if element.tag != "widget":
            stack.extend(element)
    return False


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = parent.categories = parent.dependencies = parent.contributors = None
        parent.helpText = parent.acknowledgementText = ""


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else ModuleWidgetParent()
        self.layout = self.parent.layout()
        self.moduleName = type(self).__name__.removesuffix("Widget")

    def resourcePath(self, filename: str) -> str:
        return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        """As Slicer does: the scene's singleton node tagged with the module's name (its
        ModuleName attribute put back after a scene close), or a new one added."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node:
            if node.GetAttribute("ModuleName") != self.moduleName:
                node.SetAttribute("ModuleName", self.moduleName)
            return node
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(scene.GenerateUniqueName(self.moduleName))
        return scene.AddNode(node)


class ScriptedLoadableModuleTest:
    pass


class ModuleWidgetParent(qt.QWidget):
    """qSlicerScriptedLoadableModuleWidget: the panel, with its isEntered property."""

    def __init__(self):
        super().__init__()
        self.isEntered = False


class SliceWidget:
    def __init__(self, scene, layout_name):
        self._scene = scene
        self._name = layout_name
        self.fitted = 0

    def mrmlSliceNode(self):
        return next(node for node in _nodes(self._scene, "vtkMRMLSliceNode") if node.GetLayoutName() == self._name)

    def mrmlSliceCompositeNode(self):
        nodes = _nodes(self._scene, "vtkMRMLSliceCompositeNode")
        return next(node for node in nodes if node.GetLayoutName() == self._name)

    def sliceLogic(self):
        return self

    def FitSliceToAll(self):
        self.fitted += 1


def _nodes(scene, class_name):
    return [scene.GetNthNodeByClass(index, class_name) for index in range(scene.GetNumberOfNodesByClass(class_name))]


class LayoutManager:
    def __init__(self, scene):
        self.layout = None
        self._widgets = {name: SliceWidget(scene, name) for name in ("Red", "Yellow", "Green")}
        for name in self._widgets:
            if not any(node.GetLayoutName() == name for node in _nodes(scene, "vtkMRMLSliceNode")):
                node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
                node.SetLayoutName(name)

    def setLayout(self, layout):
        self.layout = layout

    def sliceWidget(self, name):
        return self._widgets[name]


class Application(qt.QObject):
    """``slicer.app`` and the person in front of it: dialogs are recorded and answered
    from ``answers``; ``processEvents`` runs what the person does meanwhile
    (``during_events``) and fires due timers."""

    SIGNALS = ("startupCompleted",)

    def __init__(self, scene):
        super().__init__()
        self.scene = scene
        self.errors: list[str] = []  # texts of error pop-ups
        self.messages: list[str] = []  # texts of info and warning pop-ups
        self.confirmations: list[str] = []
        self.answers: list[bool] = []  # answers to confirmation dialogs; True (OK) when empty
        self.cursor_overrides = 0
        self.during_events: list = []  # what the person does during the next processEvents()
        self._layout_manager = None
        self.modules = types.SimpleNamespace()

    # slicer.app -----------------------------------------------------------------------------
    def testingEnabled(self) -> bool:
        return False

    def setOverrideCursor(self, cursor) -> None:
        self.cursor_overrides += 1

    def restoreOverrideCursor(self) -> None:
        self.cursor_overrides -= 1

    def processEvents(self, *arguments) -> None:
        actions, self.during_events = self.during_events, []
        for action in actions:
            action()
        for timer in list(qt.QTimer.ALL):
            timer.fire()

    def layoutManager(self):
        if self._layout_manager is None:
            self._layout_manager = LayoutManager(self.scene)
        return self._layout_manager

    # slicer.util dialogs -------------------------------------------------------------------------
    def error_display(self, text, *arguments, **keywords) -> None:
        self.errors.append(str(text))

    def message_display(self, text, *arguments, **keywords) -> None:
        self.messages.append(str(text))

    def confirm(self, text, *arguments, **keywords) -> bool:
        self.confirmations.append(str(text))
        return self.answers.pop(0) if self.answers else True

    # time -----------------------------------------------------------------------------------
    def wait_until(self, condition, stall: float = 120.0, what: str = "the condition") -> None:
        """Lets time pass (timers fire, as in Slicer's event loop) until ``condition()``; fails
        when the background processes do no work for ``stall`` seconds (see work_clock)."""
        wait_while_working(condition, stall, what, between=self.processEvents)


def python_slicer_launcher(folder: Path) -> Path:
    """A PythonSlicer on the PATH that, like CTK's AppLauncher, runs the interpreter as its
    child process (not replacing itself)."""
    launcher = Path(folder) / "PythonSlicer"
    launcher.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n')
    launcher.chmod(launcher.stat().st_mode | stat.S_IEXEC)
    return launcher


def install(monkeypatch, scene, launcher_folder: Path) -> Application:
    """Puts the stand-ins in place for one test; monkeypatch undoes it all afterwards."""
    application = Application(scene)
    qt.SLOT_ERRORS.clear()
    monkeypatch.setattr(qt.QTimer, "ALL", [])
    monkeypatch.setattr(qt.QSettings, "STORE", {})
    i18n = types.ModuleType("slicer.i18n")  # Slicer's: the application's translation; here, the text itself
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper_module = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper_module.parameterNodeWrapper = parameter_node.parameterNodeWrapper
    wrapper_module.Choice = parameter_node.Choice
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (
        ScriptedLoadableModule,
        ScriptedLoadableModuleWidget,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
    ):
        setattr(scripted, cls.__name__, cls)
    for name, module in (
        ("qt", qt),
        ("ctk", ctk),
        ("slicer.i18n", i18n),
        ("slicer.parameterNodeWrapper", wrapper_module),
        ("slicer.ScriptedLoadableModule", scripted),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    for name, value in (
        ("mrmlScene", scene),
        ("app", application),
        ("modules", application.modules),
        ("i18n", i18n),
        ("parameterNodeWrapper", wrapper_module),
        ("ScriptedLoadableModule", scripted),
        ("qMRMLNodeComboBox", mrml_widgets.qMRMLNodeComboBox),
        ("qMRMLSegmentSelectorWidget", mrml_widgets.qMRMLSegmentSelectorWidget),
    ):
        monkeypatch.setattr(slicer, name, value, raising=False)
    for name, value in (
        ("loadUI", load_ui),
        ("errorDisplay", application.error_display),
        ("warningDisplay", application.message_display),
        ("infoDisplay", application.message_display),
        ("confirmOkCancelDisplay", application.confirm),
    ):
        monkeypatch.setattr(slicer.util, name, value)
    python_slicer_launcher(launcher_folder)
    monkeypatch.setenv("PATH", f"{launcher_folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return application


def load_module_file(monkeypatch, path: Path = MODULE_FILE):
    """Imports the module's file as Slicer does (by its name, after the stand-ins are in place)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, path.stem, module)
    spec.loader.exec_module(module)
    return module


class ModuleSession:
    """The module as Slicer shows it: created, set up and entered."""

    def __init__(self, module_file, application: Application):
        self.module_file = module_file
        self.application = application
        self.module_parent = types.SimpleNamespace()
        self.module = module_file.SegHiResGradCAM(self.module_parent)
        self.panel = ModuleWidgetParent()
        self.widget = module_file.SegHiResGradCAMWidget(self.panel)
        self.widget.setup()
        self.ui = self.widget.ui
        self.enter()

    def enter(self):
        self.panel.isEntered = True
        self.widget.enter()

    def exit(self):
        # qSlicerScriptedLoadableModuleWidget::exit: the base class clears isEntered first,
        # then the Python exit() runs.
        self.panel.isEntered = False
        self.widget.exit()

    def close_scene(self):
        """File > Close Scene (qSlicerCoreApplication clears the scene, keeping singletons)."""
        self.application.scene.Clear(0)
