"""Seg-Ablation CAM and Seg-Occlusion, the gradient-free references over M, against what
must hold exactly where T is linear: a channel's ablation removes sum_u G_k(u) A_k(u) from
T, and an occluded box removes the gradient times the input summed over the box."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import plain_autograd_layer
from SegHiResGradCAMLib import METHODS, explain
from SegHiResGradCAMLib.cam.ablation import _occluder_positions


def linear_head_network(channels: int = 5, classes: int = 3) -> nn.Sequential:
    """conv -> ReLU (the explained layer, "1") -> 1x1 conv head without bias: T over M is
    linear in the layer's activations."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, classes, 1, bias=False)
    ).eval()


def test_ablation_weights_are_each_channel_s_share_of_t_when_t_is_linear_in_the_layer():
    model = linear_head_network()
    image = torch.randn(1, 24, 24)
    mask = torch.zeros(24, 24, dtype=torch.bool)
    mask[6:14, 8:18] = True
    result = explain(model, image, 1, mask=mask, layer="1", method="seg-ablation-cam", batch_size=2)
    activations, gradients, target = plain_autograd_layer(model, image, 1, mask, "1")
    contributions = (gradients * activations).flatten(1).sum(1)  # what zeroing each channel removes from T
    assert float(contributions.sum()) == pytest.approx(target, rel=1e-5)  # linear: the channels add up to T
    expected = torch.einsum("k,k...->...", contributions / abs(target), activations)
    assert result.target_score == pytest.approx(target, rel=1e-6)
    np.testing.assert_allclose(result.raw, expected.numpy(), rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_occlusion_credits_each_box_with_gradient_times_input_when_the_network_is_linear():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Conv2d(4, 3, 1, bias=False)).eval()
    image = torch.randn(1, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[12:18, 10:20] = True
    result = explain(model, image, 2, mask=mask, layer="0", method="seg-occlusion", batch_size=8)
    leaf = image[None].clone().requires_grad_(True)
    target = model(leaf)[0, 2][mask].sum()
    (gradient,) = torch.autograd.grad(target, leaf)
    attribution = (gradient * leaf).detach()[0, 0]  # T - T(box set to 0) = attribution summed over the box
    reached = np.zeros((32, 32), dtype=bool)
    for box in _occluder_positions((32, 32), mask, 8, 8, 16):
        reached[box] = True
        assert result.heatmap[box] == pytest.approx(max(float(attribution[box].sum()), 0.0), rel=1e-4, abs=1e-5)
    assert reached[mask.numpy()].all() and (result.heatmap[~reached] == 0).all()
    assert result.target_score == pytest.approx(float(target.detach()), rel=1e-6)


def test_only_occluders_within_reach_of_m_are_run():
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[2:6, 2:6] = True
    near = list(_occluder_positions((64, 64), mask, 8, 8, 8))
    everywhere = list(_occluder_positions((64, 64), None, 8, 8, 8))
    assert len(everywhere) == 64 and len(near) == 4  # boxes starting at 0 and 8 on each axis
    edge = list(_occluder_positions((20,), None, 8, 8, 0))  # the last box ends at the edge
    assert [box[0] for box in edge] == [slice(0, 8), slice(8, 16), slice(12, 20)]


@pytest.mark.parametrize("method", ["seg-ablation-cam", "seg-occlusion"])
def test_both_are_registered_with_their_cost_and_explain_a_3d_sliding_window_network(method, tmp_path):
    """Through the command line on a small CT: the crop around M, written in the CT's geometry."""
    import SimpleITK as sitk

    from conftest import bias_free_model_card, explain_small_case, write_small_case

    assert METHODS[method].cost.startswith("gradient-free") and not METHODS[method].windowed
    write_small_case(tmp_path)
    card = bias_free_model_card(tmp_path, (6.0, 6.0, 6.0))
    assert explain_small_case(tmp_path, card, tmp_path / "heat.nrrd", "--method", method, "--device", "cpu") == 0
    heat, ct = (sitk.ReadImage(str(tmp_path / name)) for name in ("heat.nrrd", "ct.nrrd"))
    assert heat.GetSize() == ct.GetSize() and sitk.GetArrayFromImage(heat).max() == pytest.approx(1.0)
