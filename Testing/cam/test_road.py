"""ROAD for segmentation targets: voxels removed by noisy linear imputation, most and least
relevant first."""

import json

import numpy as np

from conftest import bias_free_model_card, bundled_network_tumour_crop, explain_small_case, write_small_case
from SegHiResGradCAMLib import explain, explanation_metrics
from SegHiResGradCAMLib.cam.metric_table import metric_rows
from SegHiResGradCAMLib.cam.road import noisy_linear_imputation, relevance_order
from SegHiResGradCAMLib.cohort.case import _metric_columns

TUMOUR = 2


def ramps(shape):
    """Two channels, each a linear function of the position (harmonic: its own neighbours' mean)."""
    z, y, x = np.meshgrid(*(np.arange(size, dtype=np.float64) for size in shape), indexing="ij")
    return np.stack([0.3 * z - 0.2 * y + 0.1 * x + 5.0, -1.5 * x + 0.25 * z])


def ball(shape, centre, radius):
    grid = np.meshgrid(*(np.arange(size) for size in shape), indexing="ij")
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre, strict=True)) <= radius**2


def test_imputation_fills_a_linear_image_exactly_and_leaves_the_kept_voxels_alone():
    shape = (12, 16, 14)
    image = ramps(shape)
    removed = ball(shape, (6, 8, 7), 4) | ball(shape, (3, 3, 10), 1.5)  # two holes, off the border
    filled = noisy_linear_imputation(image, removed, noise=0.0).numpy()
    assert np.array_equal(filled[:, ~removed], image[:, ~removed].astype(np.float32))
    # A linear function is the mean of its neighbours, so the Laplace fill gives it back:
    # removing voxels by imputation removes no information that the surroundings hold.
    assert np.abs(filled - image).max() < 1e-3


def test_each_imputed_voxel_is_the_mean_of_its_neighbours_also_at_the_border():
    generator = np.random.default_rng(1)
    shape = (9, 11, 10)
    image = generator.normal(size=(1, *shape))
    removed = (generator.random(shape) < 0.2) | ball(shape, (0, 5, 9), 3)  # scattered, and touching two faces
    filled = noisy_linear_imputation(image, removed, noise=0.0).numpy()[0].astype(np.float64)
    padded = np.pad(filled, 1)
    inside = np.pad(np.ones(shape, dtype=bool), 1)
    total, count = np.zeros(shape), np.zeros(shape)
    for axis in range(3):
        for step in (-1, 1):
            window = tuple(
                slice(1 + step, 1 + step + size) if a == axis else slice(1, 1 + size) for a, size in enumerate(shape)
            )
            total += padded[window]
            count += inside[window]
    neighbour_mean = total / count
    assert np.abs(filled[removed] - neighbour_mean[removed]).max() < 1e-4
    assert not np.allclose(filled[~removed], neighbour_mean[~removed], atol=1e-2)  # the check can fail


def test_the_noise_has_the_stated_spread_and_is_reproducible():
    generator = np.random.default_rng(2)
    image = np.stack([generator.normal(0, 3.0, (20, 20, 20)), generator.normal(0, 0.5, (20, 20, 20))])
    removed = ball((20, 20, 20), (10, 10, 10), 6)
    quiet = noisy_linear_imputation(image, removed, noise=0.0).numpy()
    noisy = noisy_linear_imputation(image, removed).numpy()
    for channel in range(2):
        spread = (noisy[channel] - quiet[channel])[removed].std()
        assert abs(spread / (0.01 * image[channel].std()) - 1) < 0.1
    assert np.array_equal(noisy, noisy_linear_imputation(image, removed).numpy())
    everything = noisy_linear_imputation(image, np.ones((20, 20, 20), bool), noise=0.0).numpy()
    assert np.allclose(everything.mean(axis=(1, 2, 3)), image.mean(axis=(1, 2, 3)), atol=1e-3)


def test_ties_are_broken_at_random_not_in_voxel_order():
    heatmap = np.zeros((40, 40))
    heatmap[5, 5] = 2.0
    heatmap[30, 30] = 1.0
    order = relevance_order(heatmap)
    assert list(order[:2]) == [5 * 40 + 5, 30 * 40 + 30]
    zero_first = order[2:402]  # the first 400 of the 1598 zeros: spread over the image, not its first rows
    assert np.unravel_index(zero_first, heatmap.shape)[0].max() > 30


def test_a_trained_network_s_map_passes_and_a_map_pointing_away_from_m_fails():
    network, image, tumour = bundled_network_tumour_crop()
    fractions = (0.0, 0.01, 0.02, 0.04)
    hires = explain(network, image, TUMOUR, tumour, layer="model.1").heatmap
    measured = explanation_metrics(
        network, image, TUMOUR, tumour, hires, measure=("localisation", "road"), fractions=fractions
    )
    most, least = measured.road_most_relevant_first, measured.road_least_relevant_first
    assert most.scores[0] == least.scores[0]  # nothing removed yet: the same image
    # Removing the map's hottest 4 % (all of M and around it) lowers P; its coldest 4 % leaves P.
    assert most.scores[-1] < least.scores[-1] - 0.05 and abs(least.scores[-1] - least.scores[0]) < 0.01, (most, least)
    (check,) = [check for check in measured.checks if check.name.startswith("ROAD")]
    assert check.passed

    elsewhere = (~tumour).astype(np.float32)  # hot everywhere but M: M's voxels are its least relevant
    away = explanation_metrics(
        network, image, TUMOUR, tumour, elsewhere, measure=("localisation", "road"), fractions=fractions
    )
    (check,) = [check for check in away.checks if check.name.startswith("ROAD")]
    assert not check.passed, (away.road_most_relevant_first, away.road_least_relevant_first)

    rows = dict(metric_rows(measured.as_dict()))
    assert rows["ROAD area, most relevant removed first (lower is better)"].startswith(f"{most.area:.4f}")
    columns = _metric_columns(measured.as_dict())
    assert (columns["road_area"], columns["road_area_least_relevant_first"]) == (most.area, least.area)


def test_the_command_line_measures_road_when_asked_and_not_by_default(tmp_path, capsys):
    write_small_case(tmp_path)
    card = bias_free_model_card(tmp_path, (6.0, 6.0, 6.0))
    metrics = tmp_path / "metrics.json"
    asked = ["--metrics", str(metrics), "--measure", "localisation", "road", "--fractions", "0", "0.02", "0.05"]
    assert explain_small_case(tmp_path, card, tmp_path / "heat.nrrd", *asked) == 0
    measured = json.loads(metrics.read_text(encoding="utf-8"))
    assert measured["road_most_relevant_first"]["fractions"] == [0.0, 0.02, 0.05]
    assert "ROAD area, most relevant removed first" in capsys.readouterr().out
    default = ["--metrics", str(metrics), "--fractions", "0", "0.05"]
    assert explain_small_case(tmp_path, card, tmp_path / "heat2.nrrd", *default) == 0
    assert json.loads(metrics.read_text(encoding="utf-8"))["road_most_relevant_first"] is None
