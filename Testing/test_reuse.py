"""A process that keeps the prepared CT and the logits between runs (the warm worker, a
command with several targets) gives exactly the maps of a fresh run, and never serves a
changed CT or model from what it kept."""

import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import assert_warm_maps_equal_cold, bias_free_model_card, write_small_case
from SegHiResGradCAMLib.cam.methods import METHODS
from SegHiResGradCAMLib.pipeline import ExplainJob, run
from SegHiResGradCAMLib.reuse import content_key, keep_prepared_inputs, kept_inputs


@pytest.fixture
def keeping():
    """Keeping on for one test, off again after it (other tests run one-shot)."""
    store = keep_prepared_inputs()
    store.clear()
    yield store
    keep_prepared_inputs(False)


def small_case(folder):
    """The small kidney case and a bias-free model whose 16x32x32 window tiles its 20x48x40 grid."""
    write_small_case(folder)
    return folder / "ct.nrrd", bias_free_model_card(folder, (6.0, 6.0, 6.0))


def explain_job(ct, card, out, method="seg-hires-grad-cam", target="kidney", mask=None, layer=None):
    return ExplainJob(
        image=ct, target_class=target, methods=[method], heatmaps=[out], model=card, mask=mask, layer=layer
    )


def heat(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_every_method_and_target_gives_the_map_of_a_fresh_run(tmp_path):
    """One CT kept; questions that change the method, the class and the layer in turn, over
    sliding windows (a 16 x 32 x 32 window on a 20 x 48 x 40 grid)."""
    ct, card = small_case(tmp_path)
    questions = [(method, "kidney", None) for method in METHODS]
    questions += [("seg-hires-grad-cam", "tumour", None), ("seg-hires-grad-cam", "kidney", "model.0")]

    def make_job(question, out):
        method, target, layer = question
        return explain_job(ct, card, out, method, target, tmp_path / "kidney.nrrd", layer)

    assert_warm_maps_equal_cold(make_job, questions, tmp_path)


def test_a_changed_ct_a_changed_model_file_and_changed_weights_are_computed_again(tmp_path, keeping):
    ct, card = small_case(tmp_path)
    first = run(explain_job(ct, card, tmp_path / "first.nrrd"))
    # The same CT under another name (as each Slicer run exports it) is the same CT.
    shutil.copy(ct, tmp_path / "export.nrrd")
    again = run(explain_job(tmp_path / "export.nrrd", card, tmp_path / "again.nrrd"))
    assert again.seconds["inference"] == 0.0 and again.scores == first.scores

    # A CT changed in place, with its modification time put back: computed again.
    image = sitk.ReadImage(str(ct))
    status = os.stat(ct)
    shifted = sitk.Cast(image + 40, image.GetPixelID())
    shifted.CopyInformation(image)
    sitk.WriteImage(shifted, str(ct))
    os.utime(ct, ns=(status.st_atime_ns, status.st_mtime_ns))
    changed_ct = run(explain_job(ct, card, tmp_path / "changed_ct.nrrd"))
    assert changed_ct.seconds["inference"] > 0 and changed_ct.scores != first.scores

    # New weights in the same file: the network and the logits are made again.
    weights = tmp_path / "bias_free.pt"
    state = torch.load(weights, weights_only=True)
    torch.save({name: 1.5 * value for name, value in state.items()}, weights)
    changed_weights = run(explain_job(ct, card, tmp_path / "changed_weights.nrrd"))
    assert changed_weights.seconds["inference"] > 0 and changed_weights.scores != changed_ct.scores
    keep_prepared_inputs(False)
    cold = run(explain_job(ct, card, tmp_path / "cold.nrrd"))
    assert cold.scores == changed_weights.scores

    # A changed model card (another overlap changes the logits): not served either.
    keep_prepared_inputs()
    card.write_text(card.read_text().replace('"overlap": 0.25', '"overlap": 0.5'))
    changed_card = run(explain_job(ct, card, tmp_path / "changed_card.nrrd"))
    assert changed_card.seconds["inference"] > 0


def test_the_store_holds_one_ct(tmp_path, keeping):
    ct, card = small_case(tmp_path)
    run(explain_job(ct, card, tmp_path / "one.nrrd"))
    other = tmp_path / "other"
    other.mkdir()
    other_ct, _ = small_case(other)
    image = sitk.ReadImage(str(other_ct))
    flipped = sitk.Flip(image, [True, False, False])
    sitk.WriteImage(flipped, str(other_ct))
    run(explain_job(other_ct, card, tmp_path / "two.nrrd", mask=other / "kidney.nrrd"))
    assert kept_inputs().case.image_key == content_key(other_ct)
    assert kept_inputs().case.image_key != content_key(ct)


def test_a_detached_header_s_key_follows_its_data_file(tmp_path):
    """An .nhdr names its data in another file: changing only that file changes the key."""
    image = sitk.GetImageFromArray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    sitk.WriteImage(image, str(tmp_path / "ct.nhdr"))
    before = content_key(tmp_path / "ct.nhdr")
    data = next(path for path in tmp_path.iterdir() if path.suffix != ".nhdr")
    data.write_bytes(data.read_bytes()[::-1])
    assert content_key(tmp_path / "ct.nhdr") != before
