"""Fixtures of the widget-flow tests: the module's widget built from its real .ui over a real MRML scene."""

import pytest

from mrml_scene import new_scene
from slicer_app import qt
from slicer_app.application import ModuleSession, install, load_module_file


@pytest.fixture
def application(monkeypatch, tmp_path):
    scene = new_scene()
    app = install(monkeypatch, scene, tmp_path / "bin" if (tmp_path / "bin").mkdir() is None else None)
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
