"""The library's layout is its architecture: each room imports only the rooms below it,
no two files import each other in a loop, and the torch-free rooms stay torch-free.

Imports are read from the source (every ``import`` statement, function-level ones too,
since a lazy import is still a dependency), and the run-time rules are checked by what a
fresh interpreter has loaded.
"""

import ast
from pathlib import Path

import pytest

from conftest import loaded_by_importing

PACKAGE = "SegHiResGradCAMLib"
LIBRARY = Path(__file__).resolve().parents[1] / "SegHiResGradCAM" / PACKAGE
ROOMS = ("cam", "models", "volumes", "mrml", "demo", "cohort")
# Which rooms (sub-packages, or top-level modules) a room's files may import; the
# direction is one way: worker -> cli -> cohort -> demo -> pipeline -> reuse, models -> volumes, cam -> errors.
ALLOWED = {
    "cam": {"errors"},
    "volumes": {"errors"},
    "models": {"errors", "cam", "volumes"},
    "mrml": {
        "errors",
        "models",
        "cam",
        "volumes",
        "__init__",
    },  # torch-free parts only (see below); __init__: the version
    "reuse": {"volumes"},
    "pipeline": {"errors", "cam", "models", "volumes", "reuse", "__init__"},  # __init__: the version in the record
    "demo": {"errors", "cam", "models", "volumes", "pipeline"},
    "cohort": {"errors", "cam", "models", "volumes", "pipeline", "demo", "__init__"},  # __init__: the version
    # __init__: --version
    "cli": {"errors", "cam", "models", "volumes", "pipeline", "reuse", "demo", "cohort", "__init__"},
    "worker": {"cli", "reuse", "__init__"},
    "integrations": {"errors", "cam", "models", "volumes", "demo", "__init__"},  # MONAI, Ignite, TorchIO; demo: figures
    "errors": set(),
    "__init__": {"errors", "cam"},  # the public API, loaded lazily
}


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY).with_suffix("").parts
    return ".".join((PACKAGE, *parts)).removesuffix(".__init__")


def imported_modules(path: Path, library_modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its body (``from . import x``
    counts as importing ``x``)."""
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in candidates if name in library_modules}
    return found - {own}


def room_of(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def library_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in LIBRARY.rglob("*.py")}
    return {module: imported_modules(path, set(files)) for module, path in files.items()}


def test_every_file_lives_in_a_known_room():
    rooms = {room_of(module) for module in library_graph()}
    assert rooms == set(ALLOWED), rooms ^ set(ALLOWED)
    for room in ROOMS:
        init = LIBRARY / room / "__init__.py"
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), f"{room}/__init__.py says what the room holds"
        assert not [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)], (
            f"{room}/__init__.py imports nothing, so importing one file of the room loads no other"
        )


def wrong_way_imports(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            source_room, target_room = room_of(module), room_of(target)
            if target_room != source_room and target_room not in ALLOWED[source_room]:
                wrong.append(f"{module} -> {target}")
    return sorted(wrong)


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one file (Tarjan's algorithm)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return groups


def test_imports_go_one_way_between_rooms():
    assert wrong_way_imports(library_graph()) == []


def test_no_two_files_import_each_other_in_a_loop():
    assert import_loops(library_graph()) == []


def test_the_checks_see_a_wrong_way_import_and_a_loop():
    """Negative control: the same checks on a graph with one added edge fail."""
    graph = library_graph()
    graph[f"{PACKAGE}.cam.engine"] = graph[f"{PACKAGE}.cam.engine"] | {f"{PACKAGE}.models.card"}
    assert wrong_way_imports(graph) == [f"{PACKAGE}.cam.engine -> {PACKAGE}.models.card"]
    graph = library_graph()
    graph[f"{PACKAGE}.cam.passes"] = graph[f"{PACKAGE}.cam.passes"] | {f"{PACKAGE}.cam.engine"}
    assert any({f"{PACKAGE}.cam.engine", f"{PACKAGE}.cam.passes"} <= set(loop) for loop in import_loops(graph))


def room_modules(room: str) -> list[str]:
    return sorted(module_name(path) for path in (LIBRARY / room).glob("*.py"))


def test_the_slicer_side_of_the_package_imports_without_loading_torch():
    slicer_side = [PACKAGE, *room_modules("mrml")]
    assert loaded_by_importing(slicer_side, ["torch", "monai"]) == []


@pytest.mark.parametrize("room", ["volumes"])
def test_volume_handling_needs_no_torch(room):
    assert loaded_by_importing(room_modules(room), ["torch", "monai"]) == []


def test_reading_a_model_card_of_any_format_loads_no_torch():
    readers = [f"{PACKAGE}.models.formats", f"{PACKAGE}.models.nnunet_folder", f"{PACKAGE}.models.monai_bundle"]
    assert loaded_by_importing(readers, ["torch", "monai", "nnunetv2"]) == []


@pytest.mark.slow
def test_the_engine_imports_neither_slicer_nor_qt_nor_simpleitk():
    engine = room_modules("cam")
    assert loaded_by_importing(engine, ["slicer", "vtk", "qt", "SimpleITK"]) == []
    assert loaded_by_importing(engine, ["torch"]) == ["torch"]  # the check sees what is loaded
