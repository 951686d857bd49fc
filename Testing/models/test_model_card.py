"""Model card entries that change the computation are honoured, never ignored: the network's
array axis order and the windows' blending."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import bias_free_model_card, write_small_case
from SegHiResGradCAMLib.cli import main as cli_main

SPACING = (6.0, 6.0, 6.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = write_small_case(tmp_path_factory.mktemp("card"), SPACING)
    return folder


def heatmap(folder, card_path, name):
    code = cli_main(
        [
            "explain",
            "--image",
            str(folder / "ct.nrrd"),
            "--model",
            str(card_path),
            "--target-class",
            "kidney",
            "--mask",
            str(folder / "kidney.nrrd"),
            "--out",
            str(folder / f"{name}.nrrd"),
            "--summary",
            str(folder / f"{name}.json"),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    score = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))["methods"]["seg-hires-grad-cam"][
        "target_score"
    ]
    return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{name}.nrrd"))), score


def test_a_network_that_reads_its_arrays_x_first_is_explained_like_its_z_first_twin(case, tmp_path):
    """The same convolutions with their kernels' axes reversed, told by ``axis_order: xyz``
    that their input arrays are (x, y, z): the explanation on the CT is the same."""
    card_path = bias_free_model_card(tmp_path, SPACING, window=(16, 32, 32))
    reference, reference_score = heatmap(case, card_path, "zyx")
    state = torch.load(tmp_path / "bias_free.pt", weights_only=True)
    torch.save(
        {key: value.permute(0, 1, 4, 3, 2).contiguous() for key, value in state.items()}, tmp_path / "bias_free.pt"
    )
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["sliding_window"] |= {"size": [32, 32, 16], "axis_order": "xyz"}
    card_path.write_text(json.dumps(card))
    transposed, transposed_score = heatmap(case, card_path, "xyz")
    assert transposed_score == pytest.approx(reference_score, rel=1e-4)
    np.testing.assert_allclose(transposed, reference, atol=1e-4)
    card["sliding_window"]["axis_order"] = "zyx"  # the same weights read z first: another computation
    card_path.write_text(json.dumps(card))
    assert heatmap(case, card_path, "wrong")[1] != pytest.approx(reference_score, rel=1e-3)


def test_constant_blending_is_used_when_the_card_asks_for_it(case, tmp_path):
    card_path = bias_free_model_card(tmp_path, SPACING, window=(16, 32, 32))
    _, gaussian = heatmap(case, card_path, "gaussian")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card["sliding_window"]["blend"] = "constant"
    card_path.write_text(json.dumps(card))
    _, constant = heatmap(case, card_path, "constant")
    assert constant != pytest.approx(gaussian, rel=1e-3)  # the windows overlap, so the blend changes T


def test_the_network_is_built_once_while_its_files_stay_the_same(tmp_path):
    import os

    from SegHiResGradCAMLib.models.formats import BUNDLED_MODEL, read_model_card

    for source in BUNDLED_MODEL.parent.glob(f"{BUNDLED_MODEL.stem}.*"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    card = read_model_card(tmp_path / BUNDLED_MODEL.name)
    first = card.network()
    assert read_model_card(tmp_path / BUNDLED_MODEL.name).network() is first
    weights = tmp_path / BUNDLED_MODEL.with_suffix(".pt").name
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))  # the weights changed
    again = read_model_card(tmp_path / BUNDLED_MODEL.name).network()
    assert again is not first and not again.training
    for name, tensor in first.state_dict().items():
        assert (tensor == again.state_dict()[name]).all()
