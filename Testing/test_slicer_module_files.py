"""What can be checked of the Slicer module without the Slicer application: the widget
only uses widgets that the .ui file declares, with members their classes have; every
widget bound to the parameter node has a type Slicer's GUI connectors accept; opening the
module imports nothing heavy and starts no process."""

import ast
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from conftest import loaded_by_importing

MODULE = Path(__file__).resolve().parents[1] / "SegHiResGradCAM"
MODULE_FILE = MODULE / "SegHiResGradCAM.py"
UI_FILE = MODULE / "Resources" / "UI" / "SegHiResGradCAM.ui"

# Members the widget may use, per widget class (Qt, CTK and Slicer's MRML widgets, as PythonQt
# exposes them: properties such as currentText, slots and methods such as addItem).
COMMON = {"connect", "visible", "enabled", "toolTip", "blockSignals"}
MEMBERS = {
    "QComboBox": COMMON | {"addItem", "clear", "currentText", "currentIndex", "itemData", "findData"},
    "QTableWidget": COMMON
    | {
        "setEditTriggers",
        "setSelectionBehavior",
        "setSelectionMode",
        "setSortingEnabled",
        "clearContents",
        "setColumnCount",
        "setHorizontalHeaderLabels",
        "setRowCount",
        "setItem",
        "currentRow",
        "item",
        "rowCount",
        "selectRow",
        "clearSelection",
        "horizontalHeader",
    },
    "QCheckBox": COMMON | {"checked"},
    "QPushButton": COMMON | {"text"},
    "QLabel": COMMON | {"text"},
    "QLineEdit": COMMON | {"text"},
    "QProgressBar": COMMON | {"value"},
    "QSlider": COMMON | {"minimum", "maximum", "value"},
    "QPlainTextEdit": COMMON | {"appendPlainText", "clear"},
    "ctkCollapsibleButton": COMMON | {"collapsed"},
    "qMRMLNodeComboBox": COMMON | {"currentNode", "setMRMLScene", "setCurrentNode", "addAttribute"},
    "qMRMLSegmentSelectorWidget": COMMON | {"currentNode", "currentSegmentID", "setDisabled", "setMRMLScene"},
    "ctkPathLineEdit": COMMON | {"currentPath"},
}

# Which parameter types Slicer's GUI connectors bind to which widget classes: the
# canRepresent() of each GuiConnector in Slicer's Base/Python/slicer/parameterNodeWrapper/
# guiConnectors.py (read at Slicer commit 583e9b37d5). A connector matches the widget's
# exact class (type(widget) == ...), and a QComboBox bound to int/float/str/bool needs a
# Choice annotation (the connector refills the combo box with those choices).
PATH_TYPES = {"pathlib.Path", "Path", "pathlib.PurePath", "pathlib.PosixPath", "pathlib.WindowsPath"}
CONNECTORS = {
    ("QCheckBox", "ctkCheckBox", "QPushButton", "ctkCheckablePushButton"): {"bool"},
    ("QSlider", "QSpinBox"): {"int"},
    ("QDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget", "ctkDoubleSlider", "ctkDoubleSpinBox", "qMRMLSpinBox"): {
        "float",
        "int",
    },
    ("QComboBox", "ctkComboBox"): {"Choice", "Enum"},
    ("QLineEdit", "QLabel", "QTextEdit"): {"str"},
    ("ctkRangeWidget", "ctkDoubleRangeSlider", "qMRMLRangeWidget"): {"FloatRange"},
    ("ctkPathLineEdit", "ctkDirectoryButton"): PATH_TYPES,
    ("qMRMLNodeComboBox",): {"MRML node"},
    ("ctkColorPickerButton",): {"qt.QColor"},
}
ACCEPTED = {widget: types for widgets, types in CONNECTORS.items() for widget in widgets}


def declared_widgets() -> dict[str, str]:
    tree = ElementTree.parse(UI_FILE)
    return {widget.get("name"): widget.get("class") for widget in tree.iter("widget")}


def bound_widgets() -> dict[str, tuple[str, str]]:
    """SlicerParameterName -> (widget name, widget class) from the .ui file."""
    bound = {}
    for widget in ElementTree.parse(UI_FILE).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = (widget.get("name"), widget.get("class"))
    return bound


MODULE_TREE = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def module_class(name: str) -> ast.ClassDef:
    return next(node for node in MODULE_TREE.body if isinstance(node, ast.ClassDef) and node.name == name)


def module_constants() -> dict:
    """Module-level names bound to literals (also through tuple unpacking)."""
    constants = {}
    for node in MODULE_TREE.body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                constants[target.id] = value
            elif isinstance(target, ast.Tuple):
                constants.update({element.id: item for element, item in zip(target.elts, value, strict=True)})
    # The model kinds are the bundled model and the registered formats' labels, made at load time.
    from SegHiResGradCAMLib.models.formats import listed_formats

    constants["MODEL_KINDS"] = (constants["BUNDLED"], *(model_format.label for model_format in listed_formats()))
    return constants


def parameters() -> dict[str, tuple[ast.expr, ast.expr | None]]:
    """The parameter node class's annotations and defaults."""

    def wrapped(node) -> bool:
        return any(ast.unparse(decorator) == "parameterNodeWrapper" for decorator in node.decorator_list)

    classes = [node for node in MODULE_TREE.body if isinstance(node, ast.ClassDef) and wrapped(node)]
    assert len(classes) == 1, "one @parameterNodeWrapper class"
    fields = [node for node in classes[0].body if isinstance(node, ast.AnnAssign)]
    return {node.target.id: (node.annotation, node.value) for node in fields}


def annotation_kind(annotation: ast.expr) -> str:
    """The connector-relevant kind of a parameter's annotation."""
    text = ast.unparse(annotation)
    if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) in ("Annotated", "typing.Annotated"):
        base, *extras = annotation.slice.elts
        if any(isinstance(extra, ast.Call) and ast.unparse(extra.func).endswith("Choice") for extra in extras):
            return "Choice" if ast.unparse(base) in ("int", "float", "str", "bool") else ast.unparse(base)
        return ast.unparse(base)
    if text.startswith("slicer.vtkMRML") and text.endswith("Node"):
        return "MRML node"
    return text


def test_every_ui_name_the_widget_uses_is_declared_with_a_fitting_class():
    widgets = declared_widgets()
    source = MODULE_FILE.read_text(encoding="utf-8")
    uses = re_uses(source)
    assert len(uses) > 20
    for name, member in uses:
        assert name in widgets, f"self.ui.{name} is not in the .ui file"
        if member:
            assert member in MEMBERS[widgets[name]], f"self.ui.{name}.{member}: not a {widgets[name]} member"


def re_uses(source: str) -> list[tuple[str, str]]:
    import re

    return re.findall(r"self\.ui\.(\w+)(?:\.(\w+))?", source)


def test_the_ui_declares_the_controls_the_module_needs():
    widgets = declared_widgets()
    needed = {
        "inputVolumeSelector": "qMRMLNodeComboBox",
        "segmentSelector": "qMRMLSegmentSelectorWidget",
        "usePredictionCheckBox": "QCheckBox",
        "targetClassComboBox": "QComboBox",
        "methodComboBox": "QComboBox",
        "layerComboBox": "QComboBox",
        "deviceComboBox": "QComboBox",
        "modelKindComboBox": "QComboBox",
        "modelFileLineEdit": "ctkPathLineEdit",
        "modelFolderLineEdit": "ctkPathLineEdit",
        "applyButton": "QPushButton",
        "compareButton": "QPushButton",
        "progressBar": "QProgressBar",
        "statusLabel": "QLabel",
        "modelStatusLabel": "QLabel",
        "trustBundleCheckBox": "QCheckBox",
        "foldsLineEdit": "QLineEdit",
        "signedCheckBox": "QCheckBox",
        "show3DCheckBox": "QCheckBox",
        "logTextEdit": "QPlainTextEdit",
        "logCollapsibleButton": "ctkCollapsibleButton",
    }
    assert {name: widgets.get(name) for name in needed} == needed


def test_every_bound_widget_names_a_parameter_of_a_type_its_connector_accepts():
    params, bound = parameters(), bound_widgets()
    assert len(bound) >= 10
    for parameter, (widget, widget_class) in bound.items():
        assert parameter in params, f"{widget} is bound to {parameter!r}, which the parameter node lacks"
        kind = annotation_kind(params[parameter][0])
        assert kind in ACCEPTED.get(widget_class, set()), (
            f"{widget} ({widget_class}) cannot be bound to {parameter}: {ast.unparse(params[parameter][0])}"
        )


def test_model_dependent_widgets_are_not_bound_and_model_paths_are_plain_strings():
    """Their entries change with the model, which a Choice-bound combo box would overwrite;
    ctkPathLineEdit binds only to pathlib types, whose empty value would show as '.'."""
    bound_names = {widget for widget, _ in bound_widgets().values()}
    for widget in (
        "targetClassComboBox",
        "methodComboBox",
        "layerComboBox",
        "modelFileLineEdit",
        "modelFolderLineEdit",
        "segmentSelector",
    ):
        assert widget not in bound_names
    for parameter in ("targetClass", "method", "layer", "modelPath"):
        assert annotation_kind(parameters()[parameter][0]) == "str"


def test_choice_parameters_default_to_one_of_their_choices():
    constants = module_constants()
    checked = 0
    for name, (annotation, default) in parameters().items():
        if annotation_kind(annotation) != "Choice":
            continue
        choice = next(extra for extra in annotation.slice.elts[1:] if isinstance(extra, ast.Call))
        choices = (
            constants[ast.unparse(choice.args[0])]
            if isinstance(choice.args[0], ast.Name)
            else ast.literal_eval(choice.args[0])
        )
        value = constants[default.id] if isinstance(default, ast.Name) else ast.literal_eval(default)
        assert value in choices, f"{name} defaults to {value!r}, not one of {choices}"
        checked += 1
    assert checked >= 2


def test_the_module_is_bound_with_connect_gui_of_the_ui_object_not_a_dict():
    """wrapper.py's _connectGui walks gui.__dict__ (or a widget's children): a dict has none."""
    calls = [
        node
        for node in ast.walk(MODULE_TREE)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connectGui"
    ]
    assert calls
    assert all(ast.unparse(call.args[0]) == "self.ui" for call in calls)


# Opening the module: what setup() (and the constructor) reach through calls on self.
HEAVY_MODULES = {"torch", "monai", "nnunetv2", "SimpleITK", "numpy", "subprocess"}
PROCESS_STARTERS = {
    "Popen",
    "run",
    "BackgroundRun",
    "BackgroundQuery",
    "ExplainRun",
    "request",
    "ensureDependencies",
    "pip_install",
}


def walk_now(node: ast.AST):
    """The nodes that run when ``node`` runs: lambdas (slots connected for later) are skipped."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.Lambda):
            yield from walk_now(child)


def reached_methods(class_name: str, roots: tuple[str, ...]) -> dict[str, ast.FunctionDef]:
    methods = {node.name: node for node in module_class(class_name).body if isinstance(node, ast.FunctionDef)}
    reached, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if name in reached or name not in methods:
            continue
        reached[name] = methods[name]
        for node in walk_now(methods[name]):
            # self.method(...) runs now; a method passed as a slot (connect(..., self.method)) does not.
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if called and isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
                todo.append(node.func.attr)
    return reached


def opening_violations() -> tuple[list[str], set[str]]:
    """What setup() and the constructor would do that is heavy: imports of heavy modules and
    calls that start a process; and the library modules they import."""
    reached = reached_methods("SegHiResGradCAMWidget", ("__init__", "setup"))
    assert {"setup", "initializeParameterNode", "setParameterNode"} <= set(reached)
    violations, library_modules = [], set()
    for name, method in reached.items():
        for node in walk_now(method):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
                heavy = [module for module in modules if module.split(".")[0] in HEAVY_MODULES]
                violations += [f"{name} imports {module}" for module in heavy]
                library_modules |= {module for module in modules if module.startswith("SegHiResGradCAMLib")}
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                violations += [f"{name} calls {called}"] if called in PROCESS_STARTERS else []
    return violations, library_modules


def test_opening_the_module_imports_nothing_heavy_and_starts_no_process():
    violations, library_modules = opening_violations()
    assert violations == []
    # The library modules imported on the way must themselves load nothing heavy.
    assert library_modules
    assert loaded_by_importing(sorted(library_modules), ["torch", "monai", "nnunetv2", "SimpleITK"]) == []


def test_the_check_sees_a_process_started_or_torch_imported_in_setup():
    """Negative control: the same check fails when setup inspects the model or imports torch."""
    setup = next(
        node
        for node in module_class("SegHiResGradCAMWidget").body
        if isinstance(node, ast.FunctionDef) and node.name == "setup"
    )
    setup.body += ast.parse("self.onInspectionPoll()\nimport torch").body
    try:
        violations, _ = opening_violations()
    finally:
        del setup.body[-2:]
    assert set(violations) >= {"setup imports torch", "onInspectionPoll calls request"}
    assert opening_violations()[0] == []


def test_the_extensions_index_entry_follows_the_catalog_schema_and_the_index_style():
    """Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json: required $schema,
    category, scm_url; no other keys than these; the index's own files use two-space indent,
    sorted keys and a one-line build_dependencies list."""
    path = MODULE.parent / "SegHiResGradCAM.json"
    entry = json.loads(path.read_text(encoding="utf-8"))
    allowed = {
        "$schema": str,
        "category": str,
        "scm_url": str,
        "scm_revision": str,
        "scm_type": str,
        "build_dependencies": list,
        "build_subdirectory": str,
        "enabled": bool,
        "tier": int,
    }
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert all(isinstance(value, allowed[key]) for key, value in entry.items())
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert list(entry) == sorted(entry)
    expected = json.dumps(entry, indent=2).replace('[\n    "PyTorch"\n  ]', '["PyTorch"]') + "\n"
    assert path.read_text(encoding="utf-8") == expected


def test_contributors_are_given_as_name_and_organisation_and_help_links_the_documentation():
    init = next(node for node in module_class("SegHiResGradCAM").body if isinstance(node, ast.FunctionDef))
    source = ast.unparse(init)
    contributors = next(
        node.value
        for node in ast.walk(init)
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "self.parent.contributors"
    )
    for name in ast.literal_eval(contributors):
        assert name.count("(") == 1 and name.endswith(")") and not name.startswith("("), name
    assert "<a href=" in source and "DOCUMENTATION" in source


def untranslated_strings(tree) -> list[str]:
    """User-visible text in the widget that does not pass through Slicer's tr (imported as _):
    literal or f-string values of .text/.toolTip, and literal messages of the dialogs."""
    shown = {"text", "toolTip"}
    dialogs = {"errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "tryWithErrorDisplay"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr in shown for t in node.targets):
            value = node.value
            if isinstance(value, ast.JoinedStr) or (isinstance(value, ast.Constant) and value.value):
                found.append(ast.unparse(node))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in dialogs:
            literal = [arg for arg in node.args if isinstance(arg, ast.JoinedStr | ast.Constant)]
            found += [ast.unparse(node)] if literal else []
    return found


def test_user_visible_strings_are_translatable():
    """Slicer's i18n convention: text shown to the user goes through slicer.i18n's tr."""
    assert untranslated_strings(MODULE_TREE) == []
    negative = ast.parse('self.ui.statusLabel.text = f"Done: {x}"\nslicer.util.errorDisplay("Failed")')
    assert len(untranslated_strings(negative)) == 2
