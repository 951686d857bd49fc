"""Euler's identity for positively homogeneous networks: the HiRes map sums to T.

For convolutions and ReLUs without biases, T is positively homogeneous of degree one in
the activations of any layer that every input-to-output path passes through, so
sum_u sum_k G_k(u) A_k(u) = T. Nothing but an exact gradient-times-activation map on the
right layer can satisfy this.
"""

import numpy as np
import pytest
import torch

from conftest import BiasFreeUNet, bias_free_cnn
from SegHiResGradCAMLib import explain


def random_region(shape, generator):
    mask = torch.zeros(shape, dtype=torch.bool)
    corner = [int(torch.randint(0, s // 2, (1,), generator=generator)) for s in shape]
    mask[tuple(slice(c, c + s // 2) for c, s in zip(corner, shape, strict=True))] = True
    return mask


def assert_hires_maps_sum_to_the_target(model, shape, seed, target_class, layers):
    """At each layer, on a random image and a random region M: the raw map sums to T."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn((1, *shape), generator=generator)
    mask = random_region(shape, generator)
    for layer in layers:
        result = explain(model, image, target_class=target_class, mask=mask, layer=layer)
        assert abs(result.target_score) > 1e-3
        assert result.raw.sum(dtype=np.float64) == pytest.approx(result.target_score, rel=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_hires_map_of_a_bias_free_cnn_sums_to_the_target(seed, spatial_dims):
    torch.manual_seed(seed)
    shape = (24, 20) if spatial_dims == 2 else (12, 16, 10)
    assert_hires_maps_sum_to_the_target(bias_free_cnn(spatial_dims), shape, seed, seed % 3, ["1", "3", "5", "7", "8"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_hires_map_of_a_bias_free_unet_sums_to_the_target_after_the_merge(seed, spatial_dims):
    torch.manual_seed(seed)
    shape = (16, 24) if spatial_dims == 2 else (8, 12, 16)
    assert_hires_maps_sum_to_the_target(BiasFreeUNet(spatial_dims), shape, seed, 1, ["decoder", "decoder.0"])


def test_identity_separates_the_methods_and_the_layers():
    """The check can fail: Seg-Grad CAM's averaged weights, and a layer that the skip
    connection bypasses, do not sum to T."""
    model = BiasFreeUNet(2)
    image = torch.randn(1, 16, 24)
    mask = random_region((16, 24), torch.Generator().manual_seed(3))
    grad_cam = explain(model, image, 1, mask=mask, layer="decoder", method="seg-grad-cam")
    assert grad_cam.raw.sum() != pytest.approx(grad_cam.target_score, rel=1e-2)
    bypassed = explain(model, image, 1, mask=mask, layer="down")
    assert bypassed.raw.sum() != pytest.approx(bypassed.target_score, rel=1e-2)


def test_biases_break_the_identity():
    model = bias_free_cnn(2)
    with torch.no_grad():
        model[8].bias = torch.nn.Parameter(torch.ones(model[8].out_channels))
    result = explain(model, torch.randn(1, 16, 16), 0, layer="7")
    assert result.raw.sum() != pytest.approx(result.target_score, rel=1e-2)
