"""The Slicer extension's packaging (the import rules are in test_import_rules.py)."""

import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SegHiResGradCAM"


def test_every_core_file_is_packaged_by_the_module_cmake_file():
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"\$\{MODULE_NAME\}Lib/(\S+\.py)", cmake))
    # the model formats' folder is globbed whole: a new format file needs no line here
    globbed = (
        "file(GLOB MODEL_FORMAT_SCRIPTS RELATIVE ${CMAKE_CURRENT_SOURCE_DIR} ${MODULE_NAME}Lib/models/formats/*.py)"
    )
    assert globbed in cmake and "list(APPEND MODULE_PYTHON_SCRIPTS ${MODEL_FORMAT_SCRIPTS})" in cmake
    listed = {name for name in listed if name != "models/formats/*.py"}
    listed |= {
        f"models/formats/{path.name}" for path in (MODULE / "SegHiResGradCAMLib" / "models" / "formats").glob("*.py")
    }
    present = {
        path.relative_to(MODULE / "SegHiResGradCAMLib").as_posix()
        for path in (MODULE / "SegHiResGradCAMLib").rglob("*.py")
    }
    assert listed == present


def test_every_resource_file_is_packaged_by_the_module_cmake_file():
    cmake = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    start = cmake.index("set(MODULE_PYTHON_RESOURCES")
    block = cmake[start : cmake.index(")", start)]
    lines = [line.strip() for line in block.splitlines()[1:]]
    listed = {line.replace("${MODULE_NAME}", "SegHiResGradCAM") for line in lines if line}
    present = {path.relative_to(MODULE).as_posix() for path in (MODULE / "Resources").rglob("*") if path.is_file()}
    library = (path for path in (MODULE / "SegHiResGradCAMLib").rglob("*") if "__pycache__" not in path.parts)
    present |= {path.relative_to(MODULE).as_posix() for path in library if path.is_file() and path.suffix != ".py"}
    assert listed == present


def test_the_module_self_test_is_registered_under_testing_python():
    cmake = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = re.findall(r"slicer_add_python_unittest\(SCRIPT (\S+)\)", cmake)
    assert scripts, "no self-test registered"
    for script in scripts:
        path = Path(
            script.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(MODULE / "Testing" / "Python")).replace(
                "${MODULE_NAME}", "SegHiResGradCAM"
            )
        ).resolve()
        # Slicer's runUnitTest imports the script by name and runs its test case classes.
        classes = [node for node in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(node, ast.ClassDef)]
        bases = {base.id for node in classes for base in node.bases if isinstance(base, ast.Name)}
        assert "ScriptedLoadableModuleTest" in bases
    assert "add_subdirectory(Testing)" in (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")


def test_the_slicer_module_file_imports_nothing_heavy_at_start_up():
    tree = ast.parse((MODULE / "SegHiResGradCAM.py").read_text(encoding="utf-8"))
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = {alias.name for node in top_level if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in top_level if isinstance(node, ast.ImportFrom)}
    assert not names & {"torch", "monai", "nnunetv2", "numpy", "SegHiResGradCAMLib.cam.engine"}


def test_the_extension_declares_its_pytorch_dependency_and_icon():
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"project\(SegHiResGradCAM\)", cmake)
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', cmake)
    assert "add_subdirectory(SegHiResGradCAM)" in cmake
    for icon in (ROOT / "SegHiResGradCAM.png", MODULE / "Resources" / "Icons" / "SegHiResGradCAM.png"):
        assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_extensions_index_entry_names_category_repository_and_pytorch():

    entry = json.loads((ROOT / "SegHiResGradCAM.json").read_text(encoding="utf-8"))
    assert entry["category"] == "Segmentation"
    assert entry["scm_url"].endswith(".git")
    assert entry["build_dependencies"] == ["PyTorch"]


def test_the_recorded_version_is_the_package_s_version():
    """Every Slicer output records SegHiResGradCAMLib.__version__; it must be the released one."""
    import tomllib

    import SegHiResGradCAMLib

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"
    ]
    assert SegHiResGradCAMLib.__version__ == project["version"]


def test_make_demo_installs_only_the_package_and_make_test_adds_the_extras(tmp_path):
    """What the two commands would run in a fresh environment (make's dry run)."""
    import subprocess

    def planned(target):
        return subprocess.run(
            ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    demo = [line for line in planned("demo").splitlines() if "pip install" in line and "-e" in line]
    assert len(demo) == 1 and demo[0].rstrip().endswith("-e .")  # no extras: no Ray, nnU-Net, slicer-core
    assert "requirements-nnunet" not in planned("demo")
    test = planned("test")
    assert '-e ".[dev,nnunet,bundle,cohort,cluster,segmentation,training,torchio]"' in test
    assert "requirements-nnunet.txt" in test


def test_no_file_points_to_a_planning_note_outside_the_repository():
    """What the code relies on is written down here (README, docstrings), not in notes that
    ship elsewhere."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pointing = [
        name
        for name in tracked.split()
        if (ROOT / name).is_file()
        and name != "Testing/test_packaging.py"
        and "DESIGN.md" in (ROOT / name).read_text(errors="ignore")
    ]
    assert pointing == []


# APIs the code calls, and the release that introduced each: the declared minimum must be at least that.
NEWER_APIS = {
    "torch": {"safe_globals": "2.5", "torch.OutOfMemoryError": "2.5"},
    "numpy": {"np.trapezoid": "2.0", "np._core": "2.0"},
}


def test_declared_minimum_versions_cover_the_apis_the_code_calls_and_are_declared_once():
    from importlib.metadata import requires

    from SegHiResGradCAMLib.mrml.dependencies import declared_minimums

    def version(text):
        return tuple(int(part) for part in text.split("."))

    source = "\n".join(path.read_text(encoding="utf-8") for path in (MODULE / "SegHiResGradCAMLib").rglob("*.py"))
    minimums = declared_minimums()
    for package, apis in NEWER_APIS.items():
        for api, introduced in apis.items():
            if api in source:
                assert version(minimums[package]) >= version(introduced), f"{api} needs {package} {introduced}"
    # The installed package declares exactly these: pyproject.toml reads the same file (the
    # Slicer install plan's side is checked in mrml/test_dependencies.py).
    declared = {line.split(">=")[0]: line.split(">=")[1] for line in requires("seghiresgradcam") if ";" not in line}
    assert declared == minimums


def test_every_commit_hook_runs_a_tool_that_make_installs():
    """The hooks call the environment's own tools (no network at commit time)."""
    import sys

    config = (ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    entries = re.findall(r"entry: \.venv/bin/(\S+)", config)
    assert {"ruff", "codespell", "mypy", "check-added-large-files"} <= set(entries)
    installed = Path(sys.executable).parent
    assert [entry for entry in entries if not (installed / entry).exists()] == []
