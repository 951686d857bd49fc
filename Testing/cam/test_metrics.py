"""Explanation metrics: known maps computed by hand, faithfulness that tells a perfect map
from a random one, the randomisation check, multi-layer fusion."""

import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet
from torch import nn

from conftest import bias_free_cnn
from SegHiResGradCAMLib import ExplainInputError, explain, explain_layers, explanation_metrics
from SegHiResGradCAMLib.cam.metric_table import failed_checks, metric_rows
from SegHiResGradCAMLib.cam.metrics import (
    body_mask,
    faithfulness_curves,
    localisation,
    moved_aside,
    probability_target,
    randomised_copy,
    rank_similarity,
)


def test_localisation_of_a_known_map():
    heatmap = np.array([[0.0, 1.0, 2.0], [3.0, -4.0, 4.0]])  # positive mass 1 + 2 + 3 + 4 = 10
    target = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)  # holds 1 + 2 (and the negative -4)
    kidney = np.array([[1, 0, 0], [1, 0, 1]], dtype=bool)  # holds 0 + 3 + 4
    metrics = localisation(heatmap, target, {"in kidney": kidney, "outside body": ~(target | kidney)})
    assert metrics.mass_in_target == pytest.approx(3 / 10)
    assert metrics.mass_in_regions == {"in kidney": pytest.approx(7 / 10), "outside body": 0.0}
    assert metrics.peak_in_target is False  # the maximum, 4, is in the kidney
    assert localisation(heatmap, kidney).peak_in_target is True
    assert localisation(np.zeros((2, 3)), target).mass_in_target == 0.0
    rows = dict(metric_rows(metrics.as_dict()))
    # M holds 3 of the 6 voxels: a flat map would put half its heat there.
    assert rows["heat mass inside M"] == "30.0 % (flat map 50.0 %)" and rows["heat mass in kidney"] == "70.0 %"
    with pytest.raises(ExplainInputError, match="same grid"):
        localisation(heatmap, target[:, :2])


def test_body_mask_fills_gas_and_drops_the_table():
    hu = np.full((3, 40, 40), -1000.0)
    y, x = np.mgrid[:40, :40]
    hu[:, (y - 18) ** 2 + (x - 20) ** 2 < 14**2] = 40.0  # the body
    hu[:, (y - 18) ** 2 + (x - 20) ** 2 < 3**2] = -1000.0  # bowel gas inside it
    hu[:, 36:38, 5:35] = 200.0  # the table, not connected to the body
    body = body_mask(hu)
    assert body[:, 18, 20].all()  # the gas is inside the body
    assert not body[:, 37, 20].any()  # the table is not
    assert body.sum() == 3 * ((y - 18) ** 2 + (x - 20) ** 2 < 14**2).sum()


class EvidenceNetwork(nn.Module):
    """Class 1's logit everywhere is 4 x (mean input over a fixed evidence region) - 2:
    only the evidence voxels matter, so the perfect explanation is known."""

    def __init__(self, evidence: torch.Tensor):
        super().__init__()
        self.register_buffer("evidence", evidence.float())

    def forward(self, x):
        score = (x[:, 0] * self.evidence).sum((1, 2)) / self.evidence.sum()
        logit = 4 * score - 2
        return torch.stack([torch.zeros_like(x[:, 0]), logit[:, None, None].expand_as(x[:, 0])], dim=1)


def test_a_perfect_map_beats_a_random_map_on_deletion_and_insertion():
    generator = np.random.default_rng(0)
    evidence = torch.zeros(32, 32, dtype=torch.bool)
    evidence[4:9, 20:26] = True  # 30 voxels, 3 % of the image
    image = torch.full((1, 32, 32), 0.1)
    image[0, evidence] = 1.0
    model = EvidenceNetwork(evidence)
    mask = np.zeros((32, 32), dtype=bool)
    mask[20:30, 2:12] = True  # M is elsewhere: the evidence acts at a distance
    score = probability_target(model, 1, mask)
    perfect = evidence.numpy() + 0.01 * generator.random((32, 32))
    random = generator.random((32, 32))
    fractions = np.linspace(0, 0.05, 11)
    perfect_deletion, perfect_insertion = faithfulness_curves(score, image, perfect, fractions, baseline=0.0)
    random_deletion, random_insertion = faithfulness_curves(score, image, random, fractions, baseline=0.0)
    assert perfect_deletion.area < random_deletion.area - 0.2
    assert perfect_insertion.area > random_insertion.area + 0.2
    # Both deletion curves start at P(image), both insertion curves at P(baseline).
    assert perfect_deletion.scores[0] == random_deletion.scores[0] == pytest.approx(torch.sigmoid(torch.tensor(2.0)))
    assert perfect_insertion.scores[0] == pytest.approx(torch.sigmoid(torch.tensor(-2.0)))
    # Once the whole evidence is deleted (by 3 %), P is the baseline's.
    assert perfect_deletion.scores[6] == pytest.approx(perfect_insertion.scores[0])


def test_the_curves_ends_are_measured_once_for_every_map_of_an_image_and_m():
    """No voxel replaced is the image, every voxel replaced is the baseline, whatever the map:
    P of each is measured once and is every deletion and insertion curve's start or end."""
    generator = np.random.default_rng(1)
    evidence = torch.zeros(16, 16, dtype=torch.bool)
    evidence[2:6, 9:13] = True
    image = torch.full((1, 16, 16), 0.1)
    image[0, evidence] = 1.0
    model = EvidenceNetwork(evidence)
    images_run = []
    model.register_forward_hook(lambda module, inputs, output: images_run.append(len(inputs[0])))
    mask = np.zeros((16, 16), dtype=bool)
    mask[10:14, 2:6] = True
    score = probability_target(model, 1, mask)
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    p_image, p_baseline = (float(score(whole[None])[0]) for whole in (image, torch.zeros_like(image)))
    images_run.clear()
    ends: dict[str, float] = {}
    first = faithfulness_curves(score, image, generator.random((16, 16)), fractions, baseline=0.0, ends=ends)
    assert sum(images_run) == 2 + 2 * 3  # the two ends, then the three inner fractions of each curve
    assert ends == {"image": p_image, "baseline": p_baseline}
    second = faithfulness_curves(score, image, evidence.numpy(), fractions, baseline=0.0, ends=ends)
    assert sum(images_run) == 2 + 4 * 3  # the second map measures only its inner fractions
    for deletion, insertion in (first, second):
        assert deletion.scores[0] == insertion.scores[-1] == p_image
        assert deletion.scores[-1] == insertion.scores[0] == p_baseline
    assert second[0].scores[1] == pytest.approx(p_baseline)  # the evidence is the first quarter deleted
    # Metrics given a map's random-order curves read the ends from them, and agree with a fresh measure.
    heatmap = generator.random((16, 16))
    options = dict(fractions=fractions, baseline=0.0, measure=("faithfulness",))
    fresh = explanation_metrics(model, image, 1, mask, heatmap, **options)
    images_run.clear()
    again = explanation_metrics(
        model, image, 1, mask, heatmap, random_curves=(fresh.deletion_random, fresh.insertion_random), **options
    )
    assert sum(images_run) == 2 * 3
    assert (again.deletion, again.insertion) == (fresh.deletion, fresh.insertion)


def test_curve_area_is_the_mean_of_the_trapezoids():
    def constant_half(batch):
        return torch.full((len(batch),), 0.5)

    image = torch.randn(1, 8, 8)
    deletion, insertion = faithfulness_curves(constant_half, image, np.random.rand(8, 8), [0.0, 0.5, 1.0])
    assert deletion.area == pytest.approx(0.5) and insertion.area == pytest.approx(0.5)
    with pytest.raises(ExplainInputError, match="increasing"):
        faithfulness_curves(constant_half, image, np.random.rand(8, 8), [0.5, 0.1])


def test_the_probability_target_over_windows_equals_the_whole_image_one_inside_m():
    torch.manual_seed(0)
    model = BasicUNet(3, 1, 3, features=(4, 4, 8, 8, 16, 4)).eval()
    image = torch.randn(1, 1, 48, 48, 32)
    mask = np.zeros((48, 48, 32), dtype=bool)
    mask[2:10, 3:12, 4:12] = True  # one corner: only the windows that reach it run
    windowed = probability_target(model, 2, mask, window=(32, 32, 32), overlap=0.25)(image)
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        blended = sliding_window_inference(image, (32, 32, 32), 1, model, overlap=0.25, mode="gaussian")
    expected = torch.softmax(blended, 1)[0, 2][torch.from_numpy(mask)].mean()
    assert windowed.item() == pytest.approx(expected.item(), rel=1e-5)


def test_randomised_copy_changes_the_copy_only_and_rank_similarity_by_hand():
    model = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    copy = randomised_copy(model, seed=1)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    changed = [key for key, value in copy.state_dict().items() if not torch.equal(before[key], value)]
    assert any(key.endswith("weight") for key in changed)
    assert rank_similarity([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_similarity([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert rank_similarity([1, 2, 3, 4], [1, 1, 1, 1]) == 0.0
    assert rank_similarity([2, 2, 2], [5, 5, 5]) == 1.0  # constant maps rank alike


def evidence_case():
    """(evidence region, image, a conv layer of positive weights before the evidence network, M)."""
    evidence = torch.zeros(24, 24, dtype=torch.bool)
    evidence[3:8, 14:20] = True
    image = torch.full((1, 24, 24), 0.2)
    image[0, evidence] = 1.0
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), EvidenceNetwork(evidence))
    with torch.no_grad():
        model[0].weight.abs_()
    mask = np.zeros((24, 24), dtype=bool)
    mask[16:22, 2:8] = True
    return evidence, image, model, mask


def test_explanation_metrics_of_a_trained_evidence_network_pass_the_sanity_check():
    """Against the evidence network, HiRes finds the evidence; a map that ignores the
    network (the image itself) would be unchanged by randomisation."""
    evidence, image, model, mask = evidence_case()
    result = explain(model, image, 1, mask, layer="1", method="seg-hires-grad-cam")

    def hires_of(network):
        return explain(network, image, 1, mask, layer="1", method="seg-hires-grad-cam").heatmap

    def image_only(network):
        return image[0].numpy()

    metrics = explanation_metrics(
        model, image, 1, mask, result.heatmap, fractions=np.linspace(0, 0.1, 6), baseline=0.0, explain_again=hires_of
    )
    assert localisation(result.heatmap, evidence.numpy()).mass_in_target > 0.9
    assert metrics.mass_in_target < 0.1  # the evidence is outside M, and so is the heat
    assert metrics.deletion.area < metrics.insertion.area
    blind = explanation_metrics(model, image, 1, mask, image[0].numpy(), fractions=[0, 0.1], explain_again=image_only)
    assert blind.randomisation_similarity == pytest.approx(1.0)
    assert metrics.randomisation_similarity < blind.randomisation_similarity


def test_fused_layers_are_the_mean_or_max_of_normalised_maps():
    torch.manual_seed(0)
    model = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    image = torch.randn(1, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:20, 10:24] = True
    layers = ["upcat_1", "upcat_2", "down_2"]
    maps = [explain(model, image, 1, mask, layer=layer).normalized for layer in layers]
    mean = explain_layers(model, image, 1, layers, mask)
    maximum = explain_layers(model, image, 1, layers, mask, rule="max")
    np.testing.assert_allclose(mean.heatmap, (maps[0] + maps[1] + maps[2]) / 3, rtol=1e-6)
    np.testing.assert_allclose(maximum.heatmap, np.maximum(np.maximum(maps[0], maps[1]), maps[2]), rtol=1e-6)
    assert mean.layer == "upcat_1+upcat_2+down_2" and mean.heatmap.shape == (32, 32)
    with pytest.raises(ExplainInputError, match="fusion rule"):
        explain_layers(model, image, 1, layers, mask, rule="sum")


def test_the_checks_flag_what_the_evidence_network_shows_and_what_a_blind_map_hides():
    """Every number is measured with its baseline, and the comparisons become pass/fail flags.
    The evidence network's class-1 logit is the same everywhere, computed from one fixed
    region: Seg-HiRes-Grad CAM finds that region, beats random order on deletion and
    insertion and changes when the weights are random; but whatever M is, the evidence is
    the same region, so the map does not depend on M, and the check says so. A map that is
    the image itself passes nothing that needs the network."""
    _, image, model, mask = evidence_case()

    def hires(network=model, target=mask):
        return explain(network, image, 1, target, layer="1", method="seg-hires-grad-cam").heatmap

    metrics = explanation_metrics(
        model,
        image,
        1,
        mask,
        hires(),
        fractions=np.linspace(0, 0.1, 6),
        baseline=0.0,
        explain_again=hires,
        explain_for=lambda moved: hires(target=moved),
    )
    assert metrics.mass_in_target_uniform == pytest.approx(36 / 576)
    assert (
        metrics.deletion.area < metrics.deletion_random.area and metrics.insertion.area > metrics.insertion_random.area
    )
    assert metrics.dependence_on_target == pytest.approx(1.0)
    assert failed_checks(metrics.as_dict()) == ["heat in M beyond a random network", "dependence on M"]
    rows = dict(metric_rows(metrics.as_dict()))
    assert rows["check: dependence on M"].startswith("FAIL (rank similarity with the map of M moved aside below 0.9")
    assert rows["check: deletion beyond random order"].startswith("pass (below random order's ")
    assert "random order " in rows["deletion area (lower is better)"]
    blind = explanation_metrics(
        model, image, 1, mask, image[0].numpy(), fractions=[0, 0.1], explain_again=lambda network: image[0].numpy()
    )
    assert "randomisation (inside M)" in failed_checks(blind.as_dict())


def test_a_local_network_s_map_moves_with_m_and_passes_the_dependence_check():
    torch.manual_seed(0)
    model = bias_free_cnn(2, classes=2)
    image = torch.rand(1, 32, 32)
    mask = np.zeros((32, 32), dtype=bool)
    mask[4:10, 6:12] = True

    def hires(target):
        return explain(model, image, 1, target, layer="8", method="seg-hires-grad-cam").heatmap

    metrics = explanation_metrics(model, image, 1, mask, hires(mask), measure=("dependence",), explain_for=hires)
    assert metrics.deletion is None and metrics.randomisation_similarity is None  # not asked for
    assert metrics.dependence_on_target < 0.5
    assert [check.name for check in metrics.checks] == ["dependence on M"] and metrics.checks[0].passed
    with pytest.raises(ExplainInputError, match="choose from localisation, faithfulness"):
        explanation_metrics(model, image, 1, mask, hires(mask), measure=("speed",))


def test_m_moved_aside_keeps_its_shape_and_leaves_its_place():
    mask = np.zeros((10, 20), dtype=bool)
    mask[2:6, 3:7] = True
    moved = moved_aside(mask)
    assert moved.sum() == mask.sum() and not (moved & mask).any()
    rows, columns = np.nonzero(moved)
    assert (rows.min(), columns.min()) in {(2, 7), (6, 3)}  # moved by its own extent along one axis
    assert moved_aside(np.ones((4, 4), dtype=bool)) is None
    assert moved_aside(np.zeros((4, 4), dtype=bool)) is None
