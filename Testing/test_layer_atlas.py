"""The layer atlas: one explanation per decoder stage (found from the layers' shapes), from
Python and from the command line, with the metrics of every layer; nothing written when a
layer fails."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import BasicUNet, DynUNet

from SegHiResGradCAMLib import explain, list_layers
from SegHiResGradCAMLib.cam.fusion import atlas_layers, layer_atlas
from SegHiResGradCAMLib.cam.metrics import randomised_copy, rank_similarity
from SegHiResGradCAMLib.cam.model_inspection import DEFAULT_LAYER_RULE, LAYER_RULES, decoder_stages
from SegHiResGradCAMLib.cam.volume_runner import region_of_interest
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.models.formats import read_model_card

# The command-line atlas's CT: the demo model's grid makes it 8 windows (2 x 2 x 2).
ATLAS_GRID = Grid.centred((64, 64, 20), (4.8, 4.8, 6.0))


def spatial_size(layer) -> int:
    return int(np.prod(layer.shape[1:]))


def test_decoder_stages_run_from_the_bottleneck_to_the_finest_grid_one_per_resolution():
    model = BasicUNet(2, 1, 3)
    layers = list_layers(model, (1, 64, 48))
    stages = decoder_stages(layers)
    assert [stage.name for stage in stages] == ["down_4", "upcat_4", "upcat_3", "upcat_2", "upcat_1"]
    sizes = [spatial_size(stage) for stage in stages]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # coarsest first, one per grid
    assert sizes[0] == min(spatial_size(layer) for layer in layers)  # from the bottleneck
    # after the bottleneck, every layer's grid has its stage, and the stage is that grid's last layer
    names = [layer.name for layer in layers]
    start = names.index(stages[0].name)
    for index, layer in enumerate(layers[start:], start):
        stage = next(stage for stage in stages if stage.shape[1:] == layer.shape[1:])
        assert names.index(stage.name) >= index


def test_the_demo_network_has_three_stages_and_deep_supervision_heads_are_none():
    card = read_model_card()
    assert atlas_layers(card.build_network(), (1, *card.window)) == [
        "model.1.submodule.1.submodule.1",
        "model.1.submodule.1",
        "model.1",
    ]
    model = DynUNet(
        3,
        1,
        3,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        deep_supervision=True,
        deep_supr_num=1,
    )
    assert not [name for name in atlas_layers(model, (1, 16, 16, 16)) if "supervision" in name]


def test_the_python_atlas_is_explain_at_each_stage():
    torch.manual_seed(0)
    model = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    image, mask = torch.randn(1, 32, 32), torch.zeros(32, 32, dtype=torch.bool)
    mask[8:20, 10:24] = True
    atlas = layer_atlas(model, image, 1, mask)
    assert list(atlas) == atlas_layers(model, (1, 32, 32))
    for layer, result in atlas.items():
        single = explain(model, image, 1, mask, layer=layer)
        np.testing.assert_allclose(result.raw, single.raw)
        assert result.layer == layer
        assert result.heatmap.shape == (32, 32)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas")
    image, labels = case_images(make_case(7, ATLAS_GRID))
    sitk.WriteImage(image, str(folder / "ct.nii.gz"))
    sitk.WriteImage(sitk.Cast(labels == 1, sitk.sitkUInt8), str(folder / "kidney.nrrd"))
    sitk.WriteImage(sitk.Cast(labels == 2, sitk.sitkUInt8), str(folder / "tumour.nrrd"))  # small: few windows per pass
    return folder


@pytest.mark.slow
def test_the_command_line_atlas_writes_a_heatmap_per_stage_with_metrics_a_table_and_a_figure(ct, capsys):
    out = ct / "atlas"
    arguments = [
        "explain",
        "--image",
        str(ct / "ct.nii.gz"),
        "--target-class",
        "kidney",
        "--mask",
        str(ct / "kidney.nrrd"),
        "--layers",
        "atlas",
        "--out",
        str(out),
        "--fractions",  # the plumbing of the table; the curves' maths is tested in cam/test_metrics.py
        "0",
        "0.025",
        "0.05",
        "--progress",
        "none",
    ]
    assert cli_main(arguments) == 0
    stages = ["model.1.submodule.1.submodule.1", "model.1.submodule.1", "model.1"]
    reference = sitk.ReadImage(str(ct / "ct.nii.gz"))
    for layer in stages:
        heat = sitk.ReadImage(str(out / f"heatmap_{layer}.nrrd"))
        assert heat.GetSize() == reference.GetSize() and heat.GetOrigin() == pytest.approx(reference.GetOrigin())
        assert heat.GetMetaData("seghiresgradcam_layer") == layer
    table = json.loads((out / "atlas.json").read_text(encoding="utf-8"))
    assert [row["layer"] for row in table["layers"]] == stages and table["class"] == "kidney"
    for row in table["layers"]:
        assert 0 <= row["metrics"]["mass_in_target"] <= 1 and row["metrics"]["randomisation_similarity"] is not None
        assert row["metrics"]["randomisation_similarity_in_target"] is not None
        assert row["metrics"]["insertion"]["area"] is not None
    assert (out / "atlas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert all(layer in printed for layer in stages) and "randomisation similarity" in printed
    printed_rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()[:1] == ["model.1"]}
    finest = table["layers"][-1]["metrics"]
    whole, inside = finest["randomisation_similarity"], finest["randomisation_similarity_in_target"]
    cells = printed_rows["model.1"]
    assert cells[cells.index(f"{whole:.3f}") + 1] == f"{inside:.3f}"  # inside M, printed beside the whole one
    failed = [check["name"] for check in finest["checks"] if not check["passed"]]
    assert " ".join(cells).endswith(", ".join(failed) or "-")  # and the checks the layer's map fails


@pytest.mark.slow
def test_an_atlas_without_metrics_is_only_the_maps(ct, capsys):
    out = ct / "bare-atlas"
    arguments = [
        "explain",
        "--image",
        str(ct / "ct.nii.gz"),
        "--target-class",
        "kidney",
        "--mask",
        str(ct / "kidney.nrrd"),
        "--layers",
        "atlas",
        "--measure",
        "none",
        "--out",
        str(out),
        "--progress",
        "none",
    ]
    assert cli_main(arguments) == 0
    table = json.loads((out / "atlas.json").read_text(encoding="utf-8"))
    assert [row["metrics"] for row in table["layers"]] == [None] * 3
    assert all(row["evidence"]["target_score"] == row["target_score"] for row in table["layers"])
    assert (out / "atlas.png").is_file() and "randomisation similarity" not in capsys.readouterr().out


@pytest.mark.slow
def test_an_atlas_measures_road_at_every_stage_when_asked(ct, capsys):
    out = ct / "road-atlas"
    arguments = ["explain", "--image", str(ct / "ct.nii.gz"), "--target-class", "tumour"]
    arguments += ["--mask", str(ct / "tumour.nrrd"), "--layers", "atlas", "--out", str(out)]
    arguments += ["--measure", "localisation", "road", "--fractions", "0", "0.05", "--progress", "none"]
    assert cli_main(arguments) == 0, capsys.readouterr().err
    table = json.loads((out / "atlas.json").read_text(encoding="utf-8"))
    for row in table["layers"]:
        most, least = row["metrics"]["road_most_relevant_first"], row["metrics"]["road_least_relevant_first"]
        assert most["fractions"] == least["fractions"] == [0.0, 0.05]
        assert most["scores"][0] == least["scores"][0]  # nothing removed: the same image
        assert row["metrics"]["deletion"] is None  # not asked for
        assert any(check["name"].startswith("ROAD") for check in row["metrics"]["checks"])


def test_an_atlas_with_a_layer_that_fails_writes_nothing(ct, capsys):
    out = ct / "failed-atlas"
    code = cli_main(
        [
            "explain",
            "--image",
            str(ct / "ct.nii.gz"),
            "--target-class",
            "kidney",
            "--mask",
            str(ct / "kidney.nrrd"),
            "--layers",
            "model.1",
            "no.such.layer",
            "--out",
            str(out),
            "--progress",
            "none",
        ]
    )
    assert code == 2 and "no layer named 'no.such.layer'" in capsys.readouterr().err
    assert not out.exists()


def test_on_the_bundled_network_randomising_the_weights_changes_the_default_map_inside_m_only():
    """The layer study's finding (bench/bench_layers.py) on one held-out case: with the weights
    re-initialised, the map at the default layer changes inside M (rank similarity < 0.5) but
    over the whole image stays near M (> 0.8); one decoder stage deeper it changes over the
    whole image too."""
    card = read_model_card()
    network = card.build_network()
    case = make_case(300, Grid.centred((200, 200, 60), card.spacing))  # a seed never trained on
    tumour = case.labels == 2
    box = region_of_interest(tumour, card.window)
    image, mask = card.intensity.apply(case.hu)[None][(slice(None), *box)], tumour[box]
    randomised = randomised_copy(network)
    whole, inside = {}, {}
    for rule in LAYER_RULES:
        trained = explain(network, image, 2, mask, layer=rule)
        again = explain(randomised, image, 2, mask, layer=trained.layer).heatmap
        whole[rule] = rank_similarity(trained.heatmap, again)
        inside[rule] = rank_similarity(trained.heatmap[mask], again[mask])
    assert DEFAULT_LAYER_RULE == "last-before-head"
    assert inside["last-before-head"] < 0.5 < 0.8 < whole["last-before-head"], (whole, inside)
    assert whole["stage-below-finest"] < 0.5, whole
