"""Which Slicer the module supports: Slicer 5.10 or newer (Python 3.10+). On Slicer 5.8
(Python 3.9.10) the module file still imports and the panel shows one clear message."""

import ast
import re
import types

from slicer_app import qt
from slicer_app.application import MODULE_FILE, ModuleWidgetParent

CMAKE_FILE = MODULE_FILE.parents[1] / "CMakeLists.txt"


def test_on_python_3_9_the_panel_shows_one_message_instead_of_a_half_built_panel(application, module_file, monkeypatch):
    monkeypatch.setattr(module_file, "sys", types.SimpleNamespace(version_info=(3, 9, 10, "final", 0)))
    widget = module_file.SegHiResGradCAMWidget(ModuleWidgetParent())
    widget.setup()
    labels = [child for child in widget.parent.findChildren(qt.QLabel)]
    assert widget.ui is None and len(labels) == 1
    assert "needs Slicer 5.10 or newer" in labels[0].text and "Python 3.9.10" in labels[0].text
    widget.parent.isEntered = True
    widget.enter()
    widget.exit()
    widget.cleanup()
    assert module_file.registerSampleData() is None  # logs the same message, imports nothing


def annotations_evaluated_at_import(tree: ast.Module):
    """Annotations that Python 3.9 evaluates when the file is imported: of module-level and
    class-level variables and of every function's parameters and return."""
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign):
            yield node.annotation
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
                if argument.annotation is not None:
                    yield argument.annotation
            if node.returns is not None:
                yield node.returns


def test_the_module_file_imports_on_python_3_9():
    source = MODULE_FILE.read_text(encoding="utf-8")
    tree = ast.parse(source, feature_version=(3, 9))  # no syntax newer than 3.9
    assert "from __future__ import annotations" not in source
    unions = [
        ast.unparse(a)
        for a in annotations_evaluated_at_import(tree)
        if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a))
    ]
    assert unions == [], "X | Y annotations raise TypeError on Python 3.9 at import"
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = [alias.name for node in imports if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in imports if isinstance(node, ast.ImportFrom)]
    top_level_imports = {name.split(".")[0] for name in names}
    assert top_level_imports <= {"logging", "sys", "pathlib", "typing", "qt", "slicer", "vtk"}


def test_the_extension_refuses_to_build_for_a_slicer_older_than_5_10():
    guard = re.search(
        r'if\(Slicer_REQUIRED_PYTHON_VERSION VERSION_LESS "([\d.]+)"\)\s*message\(FATAL_ERROR',
        CMAKE_FILE.read_text(encoding="utf-8"),
    )
    assert guard and guard.group(1) == "3.10"
