"""Cascading model-parameter randomisation (Adebayo et al. 2018): the layers are randomised
from the output down, step by step, and the map is made again after each step."""

import numpy as np
import torch

from conftest import bundled_network_tumour_crop
from SegHiResGradCAMLib import explain, explanation_metrics
from SegHiResGradCAMLib.cam.metric_table import metric_rows
from SegHiResGradCAMLib.cam.metrics import cascade_groups
from SegHiResGradCAMLib.cohort.case import _metric_columns

TUMOUR = 2


def test_a_trained_network_s_hires_map_passes_and_a_map_that_ignores_the_weights_fails():
    network, image, tumour = bundled_network_tumour_crop()

    def hires(net):
        return explain(net, image, TUMOUR, tumour, layer="model.1").heatmap

    measured = explanation_metrics(
        network, image, TUMOUR, tumour, hires(network), explain_again=hires, measure=("localisation", "cascade")
    )
    groups = cascade_groups(network)
    assert len(measured.cascade) == 4 and [step["layers"] for step in measured.cascade][-1] == sum(map(len, groups))
    assert groups[0][0].startswith("model.2.") and groups[-1][-1].startswith("model.0.")  # head first, stem last
    (check,) = [check for check in measured.checks if check.name.startswith("cascading")]
    assert check.passed, measured.cascade
    assert measured.cascade[-1]["similarity_in_target"] < measured.cascade[0]["similarity_in_target"]

    the_mask = tumour.astype(np.float32)  # a "map" that no weight can change
    ignoring = explanation_metrics(
        network, image, TUMOUR, tumour, the_mask, explain_again=lambda net: the_mask, measure=("cascade",)
    )
    (check,) = [check for check in ignoring.checks if check.name.startswith("cascading")]
    assert not check.passed and all(step["similarity"] == 1.0 for step in ignoring.cascade)

    rows = dict(metric_rows(measured.as_dict()))
    assert any(name.startswith("cascade step 4: randomised down to") for name in rows)
    columns = _metric_columns(measured.as_dict())
    assert columns["cascade_similarity_in_m"] == measured.cascade[-1]["similarity_in_target"]


def test_the_network_is_left_as_it_was():
    network, image, tumour = bundled_network_tumour_crop()
    before = {name: value.clone() for name, value in network.state_dict().items()}
    explanation_metrics(
        network,
        image,
        TUMOUR,
        tumour,
        tumour.astype(np.float32),
        explain_again=lambda net: explain(net, image, TUMOUR, tumour, layer="model.1").heatmap,
        measure=("cascade",),
    )
    assert all(torch.equal(before[name], value) for name, value in network.state_dict().items())


def test_the_command_line_measures_the_cascade_when_asked_and_not_by_default(tmp_path, capsys):
    import json

    from conftest import bias_free_model_card, explain_small_case, write_small_case

    write_small_case(tmp_path)
    card = bias_free_model_card(tmp_path, (6.0, 6.0, 6.0))
    metrics = tmp_path / "metrics.json"
    asked = ["--metrics", str(metrics), "--measure", "localisation", "cascade"]
    assert explain_small_case(tmp_path, card, tmp_path / "heat.nrrd", *asked) == 0
    steps = json.loads(metrics.read_text(encoding="utf-8"))["cascade"]
    # The small U-Net has 3 layers with weights: one step each (4 steps for 4 layers or more).
    assert [step["step"] for step in steps] == [1, 2, 3] and "cascade step 3" in capsys.readouterr().out
    default = ["--metrics", str(metrics), "--fractions", "0", "0.05"]
    assert explain_small_case(tmp_path, card, tmp_path / "heat2.nrrd", *default) == 0
    assert json.loads(metrics.read_text(encoding="utf-8"))["cascade"] is None
