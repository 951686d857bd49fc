"""Fixtures of the widget-flow tests: the module's widget built from its real .ui over a real MRML scene."""

import pytest

from mrml_scene import new_scene
from slicer_app import qt
from slicer_app.application import ModuleSession, install, load_module_file


@pytest.fixture
def application(monkeypatch, tmp_path):
    """slicer.app over a new scene; a slot that raised (PythonQt only prints it) fails the test."""
    launcher_folder = tmp_path / "bin"
    launcher_folder.mkdir()
    app = install(monkeypatch, new_scene(), launcher_folder)
    yield app
    assert not qt.SLOT_ERRORS, "a slot raised:\n" + "\n".join(qt.SLOT_ERRORS)


@pytest.fixture
def module_file(application, monkeypatch):
    return load_module_file(monkeypatch)


@pytest.fixture
def session(application, module_file):
    opened = ModuleSession(module_file, application)
    yield opened
    opened.widget.cleanup()
