"""2D networks on 3D volumes, slice by slice: each slice explained with its own target."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import UNet

from conftest import bias_free_cnn
from SegHiResGradCAMLib import explain
from SegHiResGradCAMLib.cam.slices import explain_slices, slice_logits
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.volumes.volume_io import reorient


def counting_forward_calls(model):
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    return calls


def test_each_slice_is_explained_alone_and_slices_without_m_never_run():
    torch.manual_seed(0)
    model = UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    volume = torch.randn(1, 6, 32, 24)
    mask = np.zeros((6, 32, 24), dtype=bool)
    mask[1, 4:12, 5:15] = mask[2, 10:20, 3:9] = mask[4, 20:30, 10:22] = True
    calls = counting_forward_calls(model)
    result = explain_slices(model, volume, 1, mask, layer="model.1", method="seg-hires-grad-cam")
    assert len(calls) == 3  # one forward (and backward) pass per slice that holds M
    expected_score = 0.0
    for z in range(6):
        if mask[z].any():
            alone = explain(model, volume[:, z], 1, mask[z], layer="model.1", method="seg-hires-grad-cam")
            np.testing.assert_allclose(result.heatmap[z], alone.heatmap, rtol=1e-6, atol=1e-7)
            with torch.no_grad():
                expected_score += model(volume[None, :, z])[0, 1][torch.from_numpy(mask[z])].sum().item()
        else:
            assert not result.heatmap[z].any() and not result.raw[z].any()
    assert result.target_score == pytest.approx(expected_score, rel=1e-5)


def test_the_stacked_hires_map_sums_to_the_volume_target_for_a_bias_free_network():
    torch.manual_seed(1)
    model = bias_free_cnn(2)
    volume = torch.randn(1, 5, 20, 20)
    mask = np.random.default_rng(1).random((5, 20, 20)) > 0.6
    mask[3] = False
    result = explain_slices(model, volume, 2, mask, layer="3")
    assert result.raw.sum(dtype=np.float64) == pytest.approx(result.target_score, rel=1e-4)
    assert not result.raw[3].any()


def test_slice_logits_equal_the_network_on_each_slice_and_skip_what_is_not_required():
    torch.manual_seed(2)
    model = UNet(2, 1, 3, channels=(8, 16), strides=(2,), num_res_units=0).eval()
    volume = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        expected = torch.stack([model(volume[None, :, z])[0] for z in range(4)], dim=1)
    np.testing.assert_allclose(slice_logits(model, volume).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    required = np.zeros((4, 16, 16), dtype=bool)
    required[2, 3, 3] = True
    calls = counting_forward_calls(model)
    partial = slice_logits(model, volume, mask=required)
    assert len(calls) == 1 and not partial[:, [0, 1, 3]].any()
    np.testing.assert_allclose(partial[:, 2].numpy(), expected[:, 2].numpy(), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def two_d_model_and_case(tmp_path_factory):
    """A 2D MONAI U-Net with its own model card, and a small KiTS-like CT on the same
    3 mm grid (so that model slices and CT slices coincide)."""
    folder = tmp_path_factory.mktemp("two_d")
    torch.manual_seed(3)
    network = UNet(2, 1, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=0)
    torch.save(network.state_dict(), folder / "weights.pt")
    card = {
        "name": "2D test network",
        "architecture": "UNet",
        "kwargs": {
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 4,
            "channels": [8, 16, 32],
            "strides": [2, 2],
            "num_res_units": 0,
        },
        "weights": "weights.pt",
        "preprocessing": {
            "orientation": "LPS",
            "spacing": [3.0, 3.0, 3.0],
            "intensity": {"low": -250, "high": 350, "centre": 50, "scale": 150},
        },
        "head": "softmax",
        "classes": ["background", "kidney", "tumour", "cyst"],
        "sliding_window": {"size": [64, 64], "overlap": 0.25},
    }
    (folder / "card.json").write_text(json.dumps(card))
    case = make_case(5, Grid.centred((96, 96, 16), (3.0, 3.0, 3.0)))
    ct, labels = case_images(case)
    sitk.WriteImage(reorient(ct, "IPL"), str(folder / "ct.nii.gz"))
    sitk.WriteImage(reorient(sitk.Equal(labels, 2), "IPL"), str(folder / "tumour.nii.gz"))
    return folder, case


@pytest.mark.slow
@pytest.mark.parametrize("method", ["seg-hires-grad-cam", "seg-score-cam"])
def test_the_command_runs_a_2d_model_slice_by_slice_on_a_ct(two_d_model_and_case, method, tmp_path, capsys):
    folder, case = two_d_model_and_case
    arguments = [
        "explain",
        "--image",
        folder / "ct.nii.gz",
        "--model",
        folder / "card.json",
        "--target-class",
        "tumour",
        "--mask",
        folder / "tumour.nii.gz",
        "--method",
        method,
        "--out",
        tmp_path / "heat.nrrd",
        "--progress",
        "none",
    ]
    if method == "seg-hires-grad-cam":
        arguments += ["--metrics", tmp_path / "metrics.json"]
    assert cli_main([str(argument) for argument in arguments]) == 0, capsys.readouterr().err
    heat_image = sitk.ReadImage(str(tmp_path / "heat.nrrd"))
    ct = sitk.ReadImage(str(folder / "ct.nii.gz"))
    assert heat_image.GetSize() == ct.GetSize() and np.allclose(heat_image.GetDirection(), ct.GetDirection())
    heat = sitk.GetArrayFromImage(reorient(heat_image, "LPS"))  # [z, y, x] like the phantom's labels
    tumour_slices = (case.labels == 2).any(axis=(1, 2))
    assert heat[tumour_slices].max() == pytest.approx(1.0, abs=1e-3)
    assert not heat[~tumour_slices].any()  # slices without M get no heat
    if method == "seg-hires-grad-cam":
        metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
        assert 0 <= metrics["mass_in_target"] <= 1 and len(metrics["deletion"]["scores"]) == 11
