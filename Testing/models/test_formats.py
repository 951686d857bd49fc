"""The model-format registry: every format file is found, recognises its own kind of path, and
the command line's help, the Slicer module's model kinds and the install plan all come from
it, so that a new format is one new file."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from SegHiResGradCAMLib.cli import build_parser
from SegHiResGradCAMLib.models.formats import (
    BUNDLED_MODEL,
    FOLDS,
    TRUST,
    ModelSource,
    format_of,
    listed_formats,
    read_model_card,
    registered_formats,
)
from SegHiResGradCAMLib.mrml.dependencies import plan_for_model

LIBRARY = Path(__file__).resolve().parents[2] / "SegHiResGradCAM" / "SegHiResGradCAMLib"


def _bundle(folder: Path, config: str) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / config).write_text("{}", encoding="utf-8")
    return folder


def _nnunet(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text("{}", encoding="utf-8")
    return folder


def test_each_format_file_registers_one_format_with_its_own_name_and_label():
    formats = registered_formats()
    files = sorted(path.stem for path in (LIBRARY / "models" / "formats").glob("[!_]*.py"))
    assert len(formats) == len(files) == 3
    assert [model_format.name for model_format in formats] == ["bundle", "nnunet", "card"]  # the card is asked last
    assert [model_format.name for model_format in listed_formats()] == ["card", "bundle", "nnunet"]  # simplest first
    assert len({model_format.label for model_format in formats}) == 3
    assert {model_format.name: model_format.options for model_format in formats} == {
        "bundle": {TRUST},
        "nnunet": {FOLDS},
        "card": set(),
    }


def test_each_path_is_read_by_the_format_that_recognises_it(tmp_path):
    assert format_of(_bundle(tmp_path / "bundle", "inference.json")).name == "bundle"
    assert format_of(_nnunet(tmp_path / "Dataset1_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres")).name == "nnunet"
    assert format_of(BUNDLED_MODEL).name == "card"
    assert ModelSource().format.name == "card" and read_model_card().name == ModelSource().read().name


def test_a_source_carries_the_options_to_the_command_line_and_accepts_a_bare_path(tmp_path):
    source = ModelSource(str(tmp_path / "bundle"), trust_bundle=True, folds=[0, 1])
    assert source.path == tmp_path / "bundle" and source.folds == ("0", "1")
    assert source.arguments() == [
        "--model",
        str((tmp_path / "bundle").resolve()),
        "--trust-bundle",
        "--folds",
        "0",
        "1",
    ]
    assert ModelSource.of(tmp_path) == ModelSource(tmp_path) and ModelSource.of(source) is source
    assert ModelSource().arguments() == []


def test_the_command_line_help_names_every_format():
    explain = next(action for action in build_parser()._actions if action.dest == "command").choices["explain"]
    model_help = next(action.help for action in explain._actions if "--model" in action.option_strings)
    assert all(model_format.help in model_help for model_format in registered_formats())


def test_the_install_plan_adds_what_the_model_s_format_needs(tmp_path):
    everything = lambda requirement: "99"  # noqa: E731 (every package installed, new enough)
    nothing = lambda requirement: None  # noqa: E731

    def wanted(model):
        return [argument for step in plan_for_model(model, nothing) for argument in step.arguments]

    assert plan_for_model(None, everything) == []
    assert not any("PyYAML" in argument for argument in wanted(_bundle(tmp_path / "json", "inference.json")))
    assert "PyYAML>=6" in wanted(_bundle(tmp_path / "yaml", "inference.yaml"))
    nnunet_plan = plan_for_model(_nnunet(tmp_path / "Dataset1_X" / "T__P__3d_fullres"), nothing)
    assert nnunet_plan[-1].installer == "nnunet" and "nnunetv2>=2.5" in nnunet_plan[-1].arguments
    assert "--no-deps" in nnunet_plan[-1].arguments
    assert wanted(BUNDLED_MODEL) == wanted(None)


TOY_FORMAT = '''
"""A toy format: a model card stored under the ending .toycard."""

from . import ModelFormat, Package, Packages


def _reads(source):
    from ..card_json import read_card_json

    return read_card_json(source.path)


FORMAT = ModelFormat(
    name="toy",
    label="toy card (file)",
    help="a .toycard file",
    picks="file",
    detects=lambda path: path.suffix == ".toycard",
    reads=_reads,
    order=30,
    packages=lambda path: Packages(plain=(Package("toy-package", "toy_package", "1.0"),)),
)
'''


def test_a_new_format_is_one_new_file(tmp_path):
    """A copy of the library with one more file in models/formats/ knows the format in the
    command line's help, in reading a model and in the install plan."""
    library = tmp_path / "SegHiResGradCAMLib"
    shutil.copytree(LIBRARY, library, ignore=shutil.ignore_patterns("__pycache__", "SampleData"))
    (library / "models" / "formats" / "toy_card.py").write_text(textwrap.dedent(TOY_FORMAT), encoding="utf-8")
    model = tmp_path / "model"
    model.mkdir()
    card = json.loads(BUNDLED_MODEL.read_text(encoding="utf-8"))
    card["weights"] = str(BUNDLED_MODEL.with_suffix(".pt").name)
    shutil.copy(BUNDLED_MODEL.with_suffix(".pt"), model)
    (model / "demo.toycard").write_text(json.dumps(card), encoding="utf-8")
    script = textwrap.dedent(f"""
        import SegHiResGradCAMLib
        from SegHiResGradCAMLib.cli import model_help
        from SegHiResGradCAMLib.models.formats import ModelSource, registered_formats
        from SegHiResGradCAMLib.mrml.dependencies import plan_for_model
        assert SegHiResGradCAMLib.__file__.startswith({str(tmp_path)!r})
        source = ModelSource({str(model / "demo.toycard")!r})
        plan = plan_for_model(source, lambda requirement: "99" if requirement.module != "toy_package" else None)
        print([f.name for f in registered_formats()], source.format.name, source.read().name)
        print("a .toycard file" in model_help(), plan[0].arguments)
    """)
    run = subprocess.run(
        [sys.executable, "-c", script], env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    formats, help_and_plan = run.stdout.strip().splitlines()
    assert formats == "['bundle', 'nnunet', 'toy', 'card'] toy KiTS-like demo 3D U-Net"
    assert help_and_plan == "True ('toy-package>=1.0',)"


@pytest.mark.parametrize("kind", ["trust", "folds"])
def test_an_option_the_format_does_not_take_is_carried_but_not_used(kind, tmp_path):
    """A card given --trust-bundle or --folds is read as the card it is (as before the registry)."""
    options = {"trust": {"trust_bundle": True}, "folds": {"folds": ("0",)}}[kind]
    assert ModelSource(BUNDLED_MODEL, **options).read().name == read_model_card().name
