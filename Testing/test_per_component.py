"""Each tumour on its own: --per-component explains every connected component of M
separately, largest first, with a row each."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import bias_free_model_card, explain_small_case, write_small_case

SPACING = (6.0, 6.0, 6.0)


@pytest.fixture(scope="module")
def two_kidneys(tmp_path_factory):
    folder = write_small_case(tmp_path_factory.mktemp("components"), SPACING)
    kidneys = sitk.ReadImage(str(folder / "kidney.nrrd"))
    _, count = ndimage.label(sitk.GetArrayFromImage(kidneys), structure=np.ones((3, 3, 3)))
    assert count == 2, "the case has a left and a right kidney, apart"
    return folder, bias_free_model_card(folder, SPACING)


def test_each_component_is_explained_alone_and_their_targets_add_up_to_the_whole(two_kidneys, capsys):
    folder, card = two_kidneys
    assert explain_small_case(folder, card, folder / "whole.nrrd", "--summary", str(folder / "whole.json")) == 0
    whole = json.loads((folder / "whole.json").read_text(encoding="utf-8"))["methods"]["seg-hires-grad-cam"][
        "target_score"
    ]
    out = folder / "components"
    assert explain_small_case(folder, card, out, "--per-component", "--measure", "dependence") == 0
    printed = capsys.readouterr().out
    table = json.loads((out / "components.json").read_text(encoding="utf-8"))
    rows = table["components"]
    assert [row["component"] for row in rows] == ["component_1", "component_2"]
    assert rows[0]["volume_ml"] >= rows[1]["volume_ml"] > 0  # largest first
    kidneys = sitk.ReadImage(str(folder / "kidney.nrrd"))
    total_ml = sitk.GetArrayFromImage(kidneys).sum() * np.prod(kidneys.GetSpacing()) / 1000
    assert rows[0]["volume_ml"] + rows[1]["volume_ml"] == pytest.approx(total_ml, rel=0.02)
    # T is a sum over M, so the components' T add up to the whole segment's.
    assert rows[0]["target_score"] + rows[1]["target_score"] == pytest.approx(whole, rel=1e-4)
    assert all(row["metrics"]["dependence_on_target"] is not None for row in rows)
    labelled, _ = ndimage.label(sitk.GetArrayFromImage(kidneys), structure=np.ones((3, 3, 3)))
    for row in rows:
        heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"heatmap_{row['component']}.nrrd")))
        assert heat.shape == labelled.shape and heat.max() == pytest.approx(1.0)
        centre = np.array(kidneys.TransformPhysicalPointToIndex(row["centre_lps_mm"]))[::-1]
        own = labelled[tuple(centre)]  # the component the row's centre lies in
        assert own > 0
        # Its heat lies on its own kidney, not on the other one.
        assert heat[labelled == own].sum() > 5 * heat[(labelled > 0) & (labelled != own)].sum()
    assert "component_1" in printed and "volume (ml)" in printed


def test_per_component_refuses_what_it_cannot_write(two_kidneys, capsys):
    folder, card = two_kidneys
    code = explain_small_case(folder, card, folder / "refused", "--per-component", "--signed", str(folder / "s.nrrd"))
    assert code == 2 and "leave out --layers, --signed" in capsys.readouterr().err
    assert not (folder / "refused").exists()
