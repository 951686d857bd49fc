"""The README and docs/ stay true: their Python examples run, their command lines use the
commands and options the command line has, their model card is one the reader accepts, and
their links lead to files of the repository."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _python_blocks(document: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", document.read_text(encoding="utf-8"), flags=re.S)


def _command_lines(document: Path) -> list[str]:
    """Every `seghiresgradcam ...` line of the document's code (indented or fenced), with its
    continuation lines (after a backslash, or indented deeper) joined."""
    commands: list[str] = []
    indent = None
    for line in document.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        depth = len(line) - len(line.lstrip())
        if re.match(r"\s*seghiresgradcam \w", line):
            commands.append(line.strip())
            indent = depth
        elif indent is not None and depth > indent and line.strip():
            commands[-1] += " " + line.strip()
        else:
            indent = None
    return commands


def test_the_documents_are_the_readme_and_the_subjects_it_links():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", readme))
    assert linked == {path.relative_to(ROOT).as_posix() for path in DOCUMENTS[1:]}
    assert "CHANGELOG.md" in readme and (ROOT / "CHANGELOG.md").is_file()


EXAMPLES = [document for document in DOCUMENTS if _python_blocks(document)]
# Runs each document's blocks, in order, in a namespace and folder of its own, in this fresh
# interpreter; what a document prints and its traceback go under its own heading.
EXAMPLE_RUNNER = """
import json, os, sys, traceback
for name, script, folder in json.loads(sys.argv[1]):
    os.chdir(folder)
    print("@@@ " + name, flush=True)
    print("@@@ " + name, file=sys.stderr, flush=True)
    try:
        exec(compile(script, name, "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        print("!!! this example failed", flush=True)
"""


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """(printed, errors) of each document's examples, all run in one fresh interpreter: each as
    a reader pastes its blocks into a new session, with names this package deprecated counted
    as failures (one interpreter for all: starting one costs seconds of imports)."""
    plan = [
        (document.name, "\n".join(_python_blocks(document)), str(tmp_path_factory.mktemp(document.stem)))
        for document in EXAMPLES
    ]
    run = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning:__main__", "-c", EXAMPLE_RUNNER, json.dumps(plan)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed, errors = (
        dict(re.findall(r"^@@@ (\S+)\n(.*?)(?=^@@@ \S+\n|\Z)", text, flags=re.S | re.M))
        for text in (run.stdout, run.stderr)
    )
    return {name: (printed[name], errors[name]) for name, _, _ in plan}


@pytest.mark.parametrize("document", EXAMPLES, ids=lambda d: d.name)
def test_the_python_examples_run_as_written(document, example_runs):
    printed, errors = example_runs[document.name]
    assert "!!! this example failed" not in printed, errors[-3000:]
    if document.name == "README.md":
        assert "upcat_1" in printed and "(recommended)" in printed
        score, shape = printed.strip().splitlines()[-1].split(" ", 1)
        assert float(score) != 0 and shape == "(64, 64, 64)"


def _options_of_each_command() -> dict[str, set[str]]:
    from SegHiResGradCAMLib.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions if action.dest == "command")
    return {
        name: {option for action in sub._actions for option in action.option_strings}
        for name, sub in commands.choices.items()
    }


def test_every_documented_command_line_uses_commands_and_options_that_exist():
    known = _options_of_each_command()
    lines = [(document.name, line) for document in DOCUMENTS for line in _command_lines(document)]
    assert len(lines) >= 10
    unknown = []
    for name, line in lines:
        usage = line.split("#")[0]  # the usage's brackets, bars and parentheses are not part of an option
        words = shlex.split(re.sub(r"[][|()]", " ", usage))
        command = words[1]
        if command not in known:
            unknown.append((name, command))
            continue
        options = {word.split("=")[0] for word in words[2:] if word.startswith("--")}
        unknown += [(name, f"{command} {option}") for option in options - known[command]]
    assert unknown == []


def test_the_documented_model_card_is_one_the_reader_accepts(tmp_path):
    import torch
    from monai.networks.nets import UNet

    from SegHiResGradCAMLib.models.formats import read_model_card

    text = (ROOT / "docs" / "models.md").read_text(encoding="utf-8")
    card_text = re.search(r"```json\n(.*?)```", text, flags=re.S).group(1)
    entries = json.loads(card_text)
    torch.save(UNet(**entries["kwargs"]).state_dict(), tmp_path / entries["weights"])
    (tmp_path / "card.json").write_text(card_text, encoding="utf-8")
    card = read_model_card(tmp_path / "card.json")
    assert card.classes == tuple(entries["classes"]) and card.window == tuple(entries["sliding_window"]["size"])


def test_every_link_and_named_document_leads_to_a_file_of_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    missing = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".md", ".py", ".txt", ".toml"} or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        for target in re.findall(r"\b(docs/[\w-]+\.md)", text):
            missing += [] if (ROOT / target).is_file() else [(name, target)]
        if path.suffix == ".md":
            for target in re.findall(r"\]\(([^)#\s]+)\)", text):
                if "://" not in target and not (path.parent / target).exists():
                    missing.append((name, target))
    assert missing == []


def test_the_architecture_names_every_file_of_the_library():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    library = ROOT / "SegHiResGradCAM" / "SegHiResGradCAMLib"
    files = [path for path in library.rglob("*.py") if path.name != "__init__.py"]
    assert [path.relative_to(library).as_posix() for path in files if path.name not in text] == []


def _exports():
    import SegHiResGradCAMLib

    return {name: getattr(SegHiResGradCAMLib, name) for name in SegHiResGradCAMLib.__all__}


def test_every_public_name_has_a_reference_docstring():
    import inspect

    missing = []
    for name, value in _exports().items():
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue  # METHODS, a registry dict: described by register_method and CamMethod
        text = inspect.getdoc(value) or ""
        if inspect.isclass(value) and issubclass(value, Exception):
            wanted = []  # raised, not called: a docstring saying when is enough
        elif inspect.isclass(value):
            wanted = ["Attributes:" if "Attributes:" in text else "Args:"]
        else:
            wanted = ["Args:", "Returns:", "Example:"]
        missing += [f"{name}: {section}" for section in wanted if section not in text]
        missing += [f"{name}: no docstring"] if not text else []
    assert missing == []


def test_the_public_api_s_docstring_examples_run():
    """Each example runs as written (doctest), in a fresh interpreter per module, so that an
    example's registration cannot leak into other tests."""
    modules = sorted({value.__module__ for value in _exports().values() if hasattr(value, "__module__")})
    assert "SegHiResGradCAMLib.cam.explainer" in modules
    script = (
        "import doctest, importlib, sys\n"
        "results = [doctest.testmod(importlib.import_module(name)) for name in sys.argv[1:]]\n"
        "print(sum(r.attempted for r in results)); sys.exit(sum(r.failed for r in results))\n"
    )
    run = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) >= 40
