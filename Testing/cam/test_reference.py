"""The engine's maps against an independent computation with plain, full autograd."""

import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet, UNet

from conftest import plain_autograd_layer
from SegHiResGradCAMLib import explain


def reference_maps(model, image, target_class, mask, layer, output="logits", head="softmax"):
    """Seg-Grad CAM and Seg-HiRes-Grad CAM from an ordinary forward pass with autograd on
    everywhere and a hook that keeps the layer's (non-leaf) output."""
    activation, gradient, target = plain_autograd_layer(model, image, target_class, mask, layer, output, head)
    hires = (gradient * activation).sum(0)
    spatial = tuple(range(1, gradient.dim()))
    grad_cam = (gradient.mean(spatial, keepdim=True) * activation).sum(0)
    return {"seg-hires-grad-cam": hires.numpy(), "seg-grad-cam": grad_cam.numpy()}, target


def assert_relative_close(actual, expected, rtol=1e-5):
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


CASES = [
    (
        "unet-2d",
        lambda: UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=2),
        (1, 48, 40),
        ["model.0", "model.1.submodule.1", "model.1", "model.2.0"],
    ),
    (
        "unet-3d",
        lambda: UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
        (1, 24, 20, 16),
        ["model.0", "model.1.submodule", "model.1"],
    ),
    (
        "basicunet-2d",
        lambda: BasicUNet(2, 2, 3, features=(4, 4, 8, 8, 16, 4)),
        (2, 32, 48),
        ["conv_0", "down_2", "upcat_3", "upcat_1"],
    ),
    (
        "basicunet-3d",
        lambda: BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4)),
        (1, 32, 32, 16),
        ["down_1", "upcat_2", "upcat_1.convs.conv_0"],
    ),
]


@pytest.mark.parametrize("name,build,shape,layers", CASES, ids=[case[0] for case in CASES])
def test_raw_maps_match_plain_autograd(name, build, shape, layers):
    model = build()
    image = torch.randn(shape)
    mask = torch.zeros(shape[1:], dtype=torch.bool)
    mask[tuple(slice(s // 4, s // 2) for s in shape[1:])] = True
    for layer in layers:
        expected, expected_score = reference_maps(model, image, 1, mask, layer)
        for method, reference in expected.items():
            result = explain(model, image, target_class=1, mask=mask.numpy(), layer=layer, method=method)
            assert result.raw.shape == reference.shape
            assert_relative_close(result.raw, reference)
            assert result.target_score == pytest.approx(expected_score, rel=1e-5)


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_probability_score_matches_plain_autograd(head):
    model = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    image = torch.randn(1, 32, 32)
    mask = torch.rand(32, 32) > 0.7
    expected, expected_score = reference_maps(model, image, 2, mask, "upcat_1", output="probability", head=head)
    result = explain(model, image, 2, mask=mask, layer="upcat_1", output="probability", head=head)
    assert_relative_close(result.raw, expected["seg-hires-grad-cam"])
    assert result.target_score == pytest.approx(expected_score, rel=1e-5)
    # A probability target is bounded by the number of voxels in M.
    assert 0 < result.target_score < int(mask.sum())


def test_whole_image_target_when_mask_is_none():
    model = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    image = torch.randn(1, 16, 16)
    everywhere = torch.ones(16, 16, dtype=torch.bool)
    expected, expected_score = reference_maps(model, image, 0, everywhere, "model.1")
    result = explain(model, image, 0, mask=None, layer="model.1")
    assert_relative_close(result.raw, expected["seg-hires-grad-cam"])
    assert result.target_score == pytest.approx(expected_score, rel=1e-5)


def test_heatmap_is_relu_of_raw_on_the_image_grid():
    model = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    image = torch.randn(1, 32, 24)
    full_resolution = explain(model, image, 1, layer="upcat_1")
    np.testing.assert_array_equal(full_resolution.heatmap, np.maximum(full_resolution.raw, 0))

    coarse = explain(model, image, 1, layer="down_2")
    assert coarse.raw.shape == (8, 6)
    assert coarse.heatmap.shape == (32, 24)
    positive = np.maximum(coarse.raw, 0)
    # Bilinear interpolation only forms convex combinations of the layer's values.
    assert coarse.heatmap.min() >= positive.min() - 1e-6
    assert coarse.heatmap.max() <= positive.max() + 1e-6
    assert coarse.heatmap.max() > 0
    assert coarse.normalized.max() == pytest.approx(1.0)
    # Each 4x4 block of the image grid is centred on one layer voxel, whose value it keeps
    # on average up to the blend with its neighbours: the coarse shape must be preserved.
    block_means = coarse.heatmap.reshape(8, 4, 6, 4).mean(axis=(1, 3))
    assert np.corrcoef(block_means.ravel(), positive.ravel())[0, 1] > 0.9


def test_normalized_is_all_zeros_when_nothing_is_positive():
    model = BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))
    result = explain(model, torch.randn(1, 32, 32), 1, layer="upcat_1")
    silent = type(result)(
        raw=-np.abs(result.raw),
        heatmap=np.zeros_like(result.heatmap),
        target_score=result.target_score,
        method=result.method,
        layer=result.layer,
        target_class=1,
    )
    assert not silent.normalized.any()
