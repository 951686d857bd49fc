"""Exact CAMs of sliding-window inference over volumes larger than the network's window."""

import itertools
import threading

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import BasicUNet, UNet

from conftest import BiasFreeUNet, bias_free_cnn
from SegHiResGradCAMLib import (
    ExplainCancelled,
    ExplainInputError,
    ExplainResourceError,
    Tiling,
    explain,
    sliding_window_logits,
)
from SegHiResGradCAMLib.cam.methods import METHODS as REGISTERED
from SegHiResGradCAMLib.cam.sliding_window import window_grid

METHODS = [name for name, method in REGISTERED.items() if method.windowed]


def small_basic_unet(spatial_dims=3, classes=3):
    return BasicUNet(spatial_dims, 1, classes, features=(4, 4, 8, 8, 16, 4)).eval()


def monai_blended_logits(model, image, window, overlap, blend):
    with torch.no_grad():
        return sliding_window_inference(image[None], window, 1, model, overlap=overlap, mode=blend)[0]


def box_mask(shape, corner, size):
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = True
    return mask


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize(
    "shape,window,overlap",
    [((40, 50, 28), (32, 32, 16), 0.25), ((20, 37, 30), (32, 16, 16), 0.5), ((48, 40), (32, 32), 0.25)],
)
def test_blended_logits_equal_monai_sliding_window_inference(shape, window, overlap, blend):
    model = small_basic_unet(len(shape))
    image = torch.randn(1, *shape)
    ours = sliding_window_logits(model, image, window, overlap=overlap, blend=blend, batch_size=3)
    theirs = monai_blended_logits(model, image, window, overlap, blend)
    assert ours.shape == theirs.shape == (3, *shape)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5 * theirs.abs().max().item())


def test_the_window_grid_follows_monai():
    grid = window_grid((200, 100, 20), (96, 96, 32), 0.25)
    assert grid.padding == ((0, 0), (0, 0), (6, 6))  # the short axis is padded symmetrically
    per_axis = [sorted({start[axis] for start in grid.starts}) for axis in range(3)]
    assert per_axis == [[0, 72, 104], [0, 4], [0]]  # step int(96 x 0.75), the last one moved back


@pytest.mark.parametrize("method", METHODS)
def test_a_volume_that_fits_one_window_gives_the_whole_image_result(method):
    model = small_basic_unet()
    image = torch.randn(1, 32, 32, 16)
    mask = box_mask((32, 32, 16), (5, 5, 3), (10, 15, 6))
    for layer in ["upcat_1", "down_1"]:
        whole = explain(model, image, 2, mask=mask, layer=layer, method=method)
        windowed = explain(model, image, 2, mask=mask, layer=layer, method=method, window=Tiling.monai((32, 32, 16)))
        assert windowed.raw_grid == "layer"
        np.testing.assert_allclose(windowed.raw, whole.raw, rtol=1e-5, atol=1e-6 * np.abs(whole.raw).max())
        np.testing.assert_allclose(windowed.heatmap, whole.heatmap, rtol=1e-5, atol=1e-6 * whole.heatmap.max())
        assert windowed.target_score == pytest.approx(whole.target_score, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_hires_map_sums_to_the_blended_target_through_eight_overlapping_windows(seed):
    torch.manual_seed(seed)
    model = BiasFreeUNet(3)
    image = torch.randn(1, 40, 40, 24)
    mask = box_mask((40, 40, 24), (4, 8, 2), (30, 28, 20))
    window, overlap = (24, 24, 16), 0.25
    assert len(window_grid(image.shape[1:], window, overlap).starts) >= 8
    result = explain(model, image, 1, mask=mask, layer="decoder", window=Tiling.monai(window, overlap))
    blended = monai_blended_logits(model, image, window, overlap, "gaussian")
    assert result.target_score == pytest.approx(blended[1][mask].sum().item(), rel=1e-5)
    assert result.raw.shape == (40, 40, 24)
    assert result.raw.sum(dtype=np.float64) == pytest.approx(result.target_score, rel=1e-4)


def test_hires_sum_is_kept_on_the_image_grid_when_windows_do_not_align_with_the_stride():
    model = bias_free_cnn(3)  # layers "3" and "5" are on a grid of stride 2
    image = torch.randn(1, 31, 27, 12)
    window = (16, 16, 12)
    grid = window_grid(image.shape[1:], window, 0.25)
    assert {start[0] for start in grid.starts} == {0, 12, 15}  # the last window, moved back, starts at an odd voxel
    mask = box_mask((31, 27, 12), (3, 3, 2), (24, 20, 8))
    result = explain(model, image, 0, mask=mask, layer="5", window=Tiling.monai(window))
    assert result.raw_grid == "image"
    assert result.raw.shape == (31, 27, 12)
    assert result.raw.sum(dtype=np.float64) == pytest.approx(result.target_score, rel=1e-4)
    aligned = explain(
        model,
        torch.randn(1, 28, 28, 12),
        0,
        mask=box_mask((28, 28, 12), (3, 3, 2), (20, 20, 8)),
        layer="5",
        window=Tiling.monai((16, 16, 12)),
        overlap=0.25,
    )
    assert aligned.raw_grid == "layer" and aligned.raw.shape == (14, 14, 6)


@pytest.mark.parametrize("method", METHODS)
def test_skipping_windows_that_do_not_reach_the_mask_changes_nothing(method):
    model = small_basic_unet()
    image = torch.randn(1, 48, 48, 24)
    mask = box_mask((48, 48, 24), (2, 2, 2), (8, 8, 6))  # one corner: most windows never see it
    arguments = dict(mask=mask, method=method, window=Tiling.monai((32, 32, 16), overlap=0.25))
    steps_with, steps_without = [], []
    skipping = explain(model, image, 1, progress=lambda f, m: steps_with.append(m), **arguments)
    everything = explain(
        model, image, 1, skip_windows=False, progress=lambda f, m: steps_without.append(m), **arguments
    )
    assert steps_with.count("attribution") < steps_without.count("attribution")
    np.testing.assert_allclose(skipping.raw, everything.raw, rtol=1e-6, atol=1e-7 * np.abs(everything.raw).max())
    assert skipping.target_score == pytest.approx(everything.target_score, rel=1e-9)


def test_probability_target_is_the_probability_of_the_blended_logits():
    model = small_basic_unet(2)
    image = torch.randn(1, 48, 40)
    mask = box_mask((48, 40), (10, 8), (20, 20))
    result = explain(model, image, 2, mask=mask, window=Tiling.monai((32, 32)), output="probability", head="softmax")
    blended = monai_blended_logits(model, image, (32, 32), 0.25, "gaussian")
    expected = torch.softmax(blended, dim=0)[2][mask].sum().item()
    assert result.target_score == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(result.raw).all() and np.abs(result.raw).max() > 0


def test_progress_is_monotone_and_ends_at_one():
    fractions = []
    explain(
        small_basic_unet(),
        torch.randn(1, 40, 40, 20),
        1,
        mask=None,
        window=Tiling.monai((32, 32, 16)),
        method="seg-grad-cam",
        progress=lambda fraction, message: fractions.append(fraction),
    )
    assert len(fractions) > 8
    assert all(later >= earlier for earlier, later in itertools.pairwise(fractions))
    assert fractions[-1] == 1.0 and 0 < fractions[0] < 1


@pytest.mark.parametrize("method", METHODS)
def test_cancelling_at_a_random_window_raises_and_leaves_the_model_as_it_was(method):
    model = small_basic_unet().train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    cancel = threading.Event()
    stop_at = int(np.random.default_rng(5).integers(1, 8))
    calls = []

    def progress(fraction, message):
        calls.append(fraction)
        if len(calls) == stop_at:
            cancel.set()

    with pytest.raises(ExplainCancelled):
        explain(
            model,
            torch.randn(1, 48, 48, 24),
            1,
            window=Tiling.monai((32, 32, 16)),
            method=method,
            progress=progress,
            cancel=cancel,
        )
    assert len(calls) == stop_at  # stopped at the next window
    assert model.training
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in before.items())
    assert not any(module._forward_hooks for module in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_monai_unet_with_a_coarse_default_layer_and_windows():
    model = UNet(3, 1, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    image = torch.randn(1, 40, 32, 24)
    mask = box_mask((40, 32, 24), (10, 8, 4), (16, 12, 12))
    result = explain(model, image, 2, mask=mask, window=Tiling.monai((32, 32, 16), overlap=0.5))
    assert result.layer == "model.1" and result.raw_grid == "layer"
    assert result.raw.shape == (20, 16, 12)
    assert result.heatmap.shape == (40, 32, 24)


def test_bad_window_arguments_are_refused():
    model = small_basic_unet()
    image = torch.randn(1, 32, 32, 16)
    with pytest.raises(ExplainInputError, match="does not fit a 3D image"):
        explain(model, image, 1, window=Tiling.monai((32, 32)))
    with pytest.raises(ExplainInputError, match=r"Overlap 1\.0 is out of range"):
        explain(model, image, 1, window=Tiling.monai((32, 32, 16), overlap=1.0))
    with pytest.raises(ExplainInputError, match="Unknown blend"):
        explain(model, image, 1, window=Tiling.monai((32, 32, 16), mode="median"))
    with pytest.raises(ExplainInputError, match=r"mask has shape \(8, 8, 8\)"):
        explain(model, image, 1, window=Tiling.monai((32, 32, 16)), mask=torch.ones(8, 8, 8, dtype=torch.bool))
    with pytest.raises(ExplainInputError, match="no CUDA GPU"):
        if torch.cuda.is_available():
            raise ExplainInputError("no CUDA GPU (skipped: a GPU is present)")
        explain(model, image, 1, window=Tiling.monai((32, 32, 16)), device="cuda")


@pytest.mark.parametrize("method", METHODS)
def test_batches_of_windows_give_the_same_result_as_one_at_a_time(method):
    model = small_basic_unet()
    image = torch.randn(1, 48, 40, 24)
    mask = box_mask((48, 40, 24), (8, 8, 4), (30, 20, 16))
    one = explain(model, image, 1, mask=mask, method=method, window=Tiling.monai((32, 32, 16)), batch_size=1)
    three = explain(model, image, 1, mask=mask, method=method, window=Tiling.monai((32, 32, 16)), batch_size=3)
    np.testing.assert_allclose(three.raw, one.raw, rtol=1e-5, atol=1e-6 * np.abs(one.raw).max())
    assert three.target_score == pytest.approx(one.target_score, rel=1e-6)


def test_running_out_of_device_memory_says_what_to_do():
    class Greedy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 2, 1)

        def forward(self, x):
            if x.shape[0] > 1:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return self.conv(x)

    image = torch.randn(1, 24, 24, 24)
    with pytest.raises(ExplainResourceError, match=r"smaller window or batch size.*device='cpu'"):
        explain(Greedy(), image, 1, layer="conv", window=Tiling.monai((16, 16, 16)), batch_size=4)
    assert explain(Greedy(), image, 1, layer="conv", window=Tiling.monai((16, 16, 16)), batch_size=1).raw.shape == (
        24,
        24,
        24,
    )


def test_activation_sums_over_windows_equal_those_of_monai_blended_activations():
    """XGrad and Grad CAM++ need sum_u A_k of the activations blended like the logits: over
    12 overlapping windows it must equal MONAI blending the layer's own output."""
    from torch import nn

    from SegHiResGradCAMLib.cam.sliding_window import (
        Progress,
        _blended_activation_sums,
        blend_count,
        importance_map,
        pad_to_grid,
    )

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 2, 3, padding=1)).eval()
    image = torch.randn(1, 1, 40, 36, 20)
    window, overlap = (24, 16, 16), 0.25
    grid = window_grid(image.shape[2:], window, overlap)
    assert len(grid.starts) >= 8
    weight = importance_map(window, "gaussian")
    count, cpu = blend_count(grid, lambda start: weight), torch.device("cpu")
    sums = _blended_activation_sums(
        model,
        model[1],
        "1",
        pad_to_grid(image, grid),
        grid,
        lambda start: weight,
        count,
        2,
        cpu,
        Progress(1, None, None),
    )
    truncated = model[:2]  # the network up to and including the layer
    with torch.no_grad():
        blended = sliding_window_inference(image, window, 1, truncated, overlap=overlap, mode="gaussian")[0]
    np.testing.assert_allclose(sums.numpy(), blended.sum((1, 2, 3)).numpy(), rtol=1e-5)
