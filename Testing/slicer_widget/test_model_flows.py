"""Flows of the model choice, driven through the widget built from the real .ui: opening the
module, switching between every kind of model in both directions, closing the scene while
the module is shown, and re-opening a scene that was saved with a trusted bundle."""

import shutil
from pathlib import Path

import pytest

from conftest import bias_free_model_card
from SegHiResGradCAMLib.models.formats import BUNDLED_MODEL, ModelSource, listed_formats
from slicer_app.application import ModuleSession, ModuleWidgetParent

KINDS = ("bundled KiTS-like demo model", "model card (JSON file)", "MONAI bundle (folder)", "nnU-Net results (folder)")
BUNDLED, CARD, BUNDLE, NNUNET = KINDS


@pytest.fixture
def card_copy(tmp_path) -> Path:
    """The bundled model under another name: a model card the user picked."""
    folder = tmp_path / "my model"
    folder.mkdir()
    for source in BUNDLED_MODEL.parent.glob(f"{BUNDLED_MODEL.stem}.*"):
        shutil.copy(source, folder / source.name)
    card = folder / BUNDLED_MODEL.name
    card.write_text(card.read_text(encoding="utf-8").replace('"name": "', '"name": "my copy of ', 1))
    return card


def inspected(session, application):
    application.wait_until(lambda: not session.widget._inspecting(), 120, "the model inspection")
    return session.ui.modelStatusLabel.text


@pytest.mark.slow
def test_opening_the_module_shows_the_bundled_model_and_disables_the_segment_selector(session, application):
    ui = session.ui
    assert ui.modelKindComboBox.currentText == BUNDLED
    # the kinds are the bundled model and each registered format (models/formats/), as they are listed
    offered = [ui.modelKindComboBox.itemText(index) for index in range(ui.modelKindComboBox.count())]
    assert offered == [BUNDLED, *(model_format.label for model_format in listed_formats())] == list(KINDS)
    assert ui.usePredictionCheckBox.checked
    assert not ui.segmentSelector.enabled, "M is the prediction: a picked segment would be ignored"
    assert not ui.modelFileLineEdit.visible and not ui.modelFolderLineEdit.visible
    assert inspected(session, application).startswith("Model: KiTS-like demo")
    assert ui.modelStatusLabel.text.endswith("runs on the CPU")  # this machine has no CUDA GPU
    assert ui.targetClassComboBox.currentText == "tumour"
    ui.usePredictionCheckBox.click()
    assert ui.segmentSelector.enabled


@pytest.mark.slow
def test_setting_up_the_panel_starts_no_process(application, module_file, monkeypatch):
    """Slicer calls setup() when the panel is first built; the model is inspected from the
    first timer tick on, once the panel is shown, in the warm worker (which keeps the network
    built for the first Apply)."""
    import subprocess

    started = []
    popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or popen(*a, **k))
    widget = module_file.SegHiResGradCAMWidget(ModuleWidgetParent())
    widget.setup()
    assert started == [] and widget.ui.modelStatusLabel.text.startswith("KiTS-like demo")
    widget.parent.isEntered = True
    widget.enter()
    application.processEvents()
    assert len(started) == 1 and "SegHiResGradCAMLib.worker" in started[0][0]
    application.wait_until(lambda: not widget._inspecting(), 120, "the model inspection")
    assert widget.ui.warmLabel.text.startswith("Warm: KiTS-like demo") and widget.ui.releaseButton.enabled
    widget.cleanup()
    assert not widget.logic.worker.alive


@pytest.mark.slow
def test_switching_to_a_card_and_back_to_the_bundled_model(session, application, card_copy):
    ui = session.ui
    inspected(session, application)
    ui.modelKindComboBox.user_choose(CARD)
    assert ui.modelKindComboBox.currentText == CARD and ui.modelFileLineEdit.visible
    ui.modelFileLineEdit.user_browse(str(card_copy))
    assert "my copy of" in inspected(session, application)
    node = session.widget.logic.getParameterNode()
    assert (node.modelKind, node.modelPath) == (CARD, str(card_copy))

    ui.modelKindComboBox.user_choose(BUNDLED)
    assert ui.modelKindComboBox.currentText == BUNDLED, "the combo snapped back to the previous kind"
    assert node.modelKind == BUNDLED and not ui.modelFileLineEdit.visible
    assert inspected(session, application).startswith("Model: KiTS-like demo")
    assert session.widget._settings("seg-hires-grad-cam").model.path is None  # the bundled model

    ui.modelKindComboBox.user_choose(CARD)  # the card's path is still there
    assert ui.modelKindComboBox.currentText == CARD and ui.modelFileLineEdit.currentPath == str(card_copy)
    assert "my copy of" in inspected(session, application)


def test_switching_between_two_folder_kinds_with_a_path(session, application, tmp_path):
    ui = session.ui
    folder = tmp_path / "some results"
    folder.mkdir()
    for first, second in ((BUNDLE, NNUNET), (NNUNET, BUNDLE), (BUNDLE, CARD), (CARD, NNUNET), (NNUNET, BUNDLED)):
        ui.modelKindComboBox.user_choose(first)
        if first != CARD and not ui.modelFolderLineEdit.currentPath:
            ui.modelFolderLineEdit.user_browse(str(folder))
        ui.modelKindComboBox.user_choose(second)
        assert ui.modelKindComboBox.currentText == second, f"{first} -> {second} snapped back"
        assert session.widget.logic.getParameterNode().modelKind == second
    session.widget._inspector.cancel()
    session.widget._inspectionWanted = None


@pytest.mark.slow
def test_the_kind_and_paths_are_remembered_across_restarts(application, module_file, card_copy):
    first = ModuleSession(module_file, application)
    first.ui.modelKindComboBox.user_choose(CARD)
    first.ui.modelFileLineEdit.user_browse(str(card_copy))
    inspected(first, application)
    first.widget.cleanup()
    application.scene.Clear(1)  # a new Slicer: a new scene, the same settings file
    second = ModuleSession(module_file, application)
    try:
        assert second.ui.modelKindComboBox.currentText == CARD
        assert second.ui.modelFileLineEdit.currentPath == str(card_copy)
        assert "my copy of" in inspected(second, application)
    finally:
        second.widget.cleanup()


@pytest.mark.slow
def test_closing_the_scene_while_shown_leaves_no_stale_model_control(session, application, tmp_path):
    """After File > Close Scene the module starts again from the model used last: the kind,
    its path box, the classes and the layers all belong to that one model."""
    ui = session.ui
    card = bias_free_model_card(tmp_path, (4.0, 4.0, 6.0))
    ui.modelKindComboBox.user_choose(CARD)
    ui.modelFileLineEdit.user_browse(str(card))
    inspected(session, application)
    ui.layerComboBox.user_choose(
        next(
            ui.layerComboBox.itemText(index)
            for index in range(ui.layerComboBox.count())
            if not ui.layerComboBox.itemText(index).endswith("(recommended)")
        )
    )
    ui.modelKindComboBox.user_choose(BUNDLED)
    ui.modelKindComboBox.user_choose(CARD)
    session.close_scene()
    assert ui.modelKindComboBox.currentText == CARD and ui.modelFileLineEdit.visible
    assert not ui.modelFolderLineEdit.visible and ui.modelFileLineEdit.currentPath == str(card)
    assert "bias-free UNet" in inspected(session, application)
    settings = session.widget._settings("seg-hires-grad-cam")
    description = session.widget._inspector.request(settings.model)
    assert settings.model == ModelSource(card) and description["name"] == "bias-free UNet"
    assert [ui.layerComboBox.itemData(index) for index in range(ui.layerComboBox.count())] == [
        layer["name"] for layer in description["layers"]
    ]
    assert ui.layerComboBox.currentText.endswith("(recommended)"), "a new scene starts from the recommended layer"
    assert [ui.targetClassComboBox.itemText(i) for i in range(ui.targetClassComboBox.count())] == ["kidney", "tumour"]

    ui.modelKindComboBox.user_choose(BUNDLED)  # the bundled model last: a closed scene starts from it
    inspected(session, application)
    session.close_scene()
    assert ui.modelKindComboBox.currentText == BUNDLED and not ui.modelFileLineEdit.visible
    assert inspected(session, application).startswith("Model: KiTS-like demo")
    assert session.widget._settings("seg-hires-grad-cam").model.path is None  # the bundled model
    assert ui.targetClassComboBox.count() == 3


def test_a_saved_scene_never_brings_back_trust_in_a_bundle(application, module_file, tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    first = ModuleSession(module_file, application)
    first.ui.modelKindComboBox.user_choose(BUNDLE)
    first.ui.modelFolderLineEdit.user_browse(str(bundle))
    first.ui.trustBundleCheckBox.click()
    assert first.widget.logic.getParameterNode().modelPath == str(bundle)
    first.exit()
    first.widget.cleanup()
    scene_file = tmp_path / "saved.mrml"
    application.scene.SetURL(str(scene_file))
    assert application.scene.Commit()
    application.scene.Clear(1)
    application.scene.SetURL(str(scene_file))
    assert application.scene.Connect()  # File > Load Scene

    second = ModuleSession(module_file, application)
    try:
        assert second.ui.modelKindComboBox.currentText == BUNDLE
        assert not second.ui.trustBundleCheckBox.checked, "trust came back from the scene file"
        assert not second.widget._modelSource().trust_bundle
        application.processEvents()
        assert not second.widget._inspector.busy or not second.widget._inspector._pending[0][1]
    finally:
        second.widget.cleanup()
