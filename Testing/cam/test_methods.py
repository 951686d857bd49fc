"""The further CAM methods (the method table of docs/methods.md) against independent computations inside
the test, and properties that only a correct implementation has."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, UNet
from torch import nn

from conftest import plain_autograd_layer
from SegHiResGradCAMLib import METHODS, ExplainInputError, Tiling, explain
from SegHiResGradCAMLib.cam.methods import xgrad_weights


def independent_map(method, activation, gradient):
    """The definitions, written out in float64 numpy over (channels, positions)."""
    a = activation.double().numpy().reshape(activation.shape[0], -1)
    g = gradient.double().numpy().reshape(gradient.shape[0], -1)
    if method == "seg-layer-cam":
        result = (np.where(g > 0, g, 0) * a).sum(0)
    elif method == "seg-xgrad-cam":
        weights = (a * g).sum(1) / (a.sum(1) + 1e-7)
        result = weights @ a
    elif method == "seg-grad-cam++":
        weights = np.zeros(len(a))
        for k in range(len(a)):
            for u in range(a.shape[1]):
                if g[k, u] > 0:  # ReLU(G) is zero elsewhere
                    alpha = g[k, u] ** 2 / (2 * g[k, u] ** 2 + a[k].sum() * g[k, u] ** 3)
                    weights[k] += alpha * g[k, u]
        result = weights @ a
    elif method in ("seg-eigen-cam", "eigen-cam"):
        features = (np.abs(g) * a if method == "seg-eigen-cam" else a).T
        centred = features - features.mean(0)
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
        result = centred @ eigenvectors[:, np.argmax(eigenvalues)]
        result = -result if -result.min() > result.max() else result
    else:
        raise AssertionError(method)
    return result.reshape(activation.shape[1:])


GRADIENT_METHODS = ["seg-layer-cam", "seg-xgrad-cam", "seg-grad-cam++", "seg-eigen-cam", "eigen-cam"]
NETWORKS = [
    (lambda: UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1), (1, 32, 24), ["model.1", "model.0"]),
    (lambda: BasicUNet(3, 1, 3, features=(4, 4, 8, 8, 16, 4)), (1, 32, 32, 16), ["upcat_1", "down_2"]),
]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("network", range(len(NETWORKS)))
def test_gradient_methods_match_an_independent_computation(method, network):
    build, shape, layers = NETWORKS[network]
    torch.manual_seed(network)
    model = build()
    image = torch.randn(shape)
    mask = torch.zeros(shape[1:], dtype=torch.bool)
    mask[tuple(slice(s // 4, 3 * s // 4) for s in shape[1:])] = True
    for layer in layers:
        activation, gradient, target = plain_autograd_layer(model, image, 1, mask, layer)
        expected = independent_map(method, activation, gradient)
        result = explain(model, image, 1, mask, layer=layer, method=method)
        scale = np.abs(expected).max()
        assert scale > 0
        np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-4 * scale)
        assert result.target_score == pytest.approx(target, rel=1e-5)


class ConvStack(nn.Module):
    """conv -> ReLU -> conv -> ReLU ("features", the explained layer) -> 1x1 conv head."""

    def __init__(self, head_weights_positive: bool):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
        self.features = nn.ReLU()
        self.head = nn.Conv2d(5, 2, 1)
        if head_weights_positive:
            with torch.no_grad():
                self.head.weight.abs_()

    def forward(self, x):
        return self.head(self.features(self.stem(x)))


def test_layer_cam_equals_hires_when_every_gradient_is_positive():
    torch.manual_seed(0)
    image, mask = torch.randn(1, 20, 20), torch.rand(20, 20) > 0.5
    positive = ConvStack(head_weights_positive=True)  # G = head weights >= 0 wherever M is
    layer = explain(positive, image, 1, mask, layer="features", method="seg-layer-cam")
    hires = explain(positive, image, 1, mask, layer="features", method="seg-hires-grad-cam")
    np.testing.assert_allclose(layer.raw, hires.raw, rtol=1e-6, atol=1e-7)

    mixed = ConvStack(head_weights_positive=False)  # negative control: some gradients are negative
    layer = explain(mixed, image, 1, mask, layer="features", method="seg-layer-cam")
    hires = explain(mixed, image, 1, mask, layer="features", method="seg-hires-grad-cam")
    assert (layer.raw >= hires.raw - 1e-6).all()  # A >= 0 after the ReLU, so dropping G < 0 only adds
    assert (layer.raw > hires.raw + 1e-3).any()


def rescaled_channel_copy(model: ConvStack, channel: int, factor: float) -> ConvStack:
    """The same function, with the explained layer's channel multiplied by ``factor`` (> 0)
    and the head's input weights for it divided by ``factor``."""
    copy = ConvStack(head_weights_positive=False)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.stem[2].weight[channel] *= factor
        copy.stem[2].bias[channel] *= factor
        copy.head.weight[:, channel] /= factor
    return copy


INVARIANT = ["seg-grad-cam", "seg-hires-grad-cam", "seg-layer-cam", "seg-xgrad-cam", "seg-grad-cam++", "seg-eigen-cam"]
INVARIANT += ["seg-occlusion"]  # it perturbs the input, never reading the layer


@pytest.mark.parametrize("method", sorted(METHODS))
def test_maps_follow_the_function_not_how_a_channel_is_scaled(method):
    """A channel scaled by s with the next layer's weights divided by s is the same network.
    Gradient-based maps (G_k -> G_k / s, A_k -> s A_k) and occlusion cannot tell; maps that
    use A without its gradient (target-free Eigen CAM, Score CAM's and Ablation CAM's A_k in
    S) can, which shows the check bites."""
    torch.manual_seed(3)
    model = ConvStack(head_weights_positive=False)
    image, mask = torch.randn(1, 24, 24), torch.rand(24, 24) > 0.6
    rescaled = rescaled_channel_copy(model, channel=2, factor=7.0)
    with torch.no_grad():
        np.testing.assert_allclose(rescaled(image[None]).numpy(), model(image[None]).numpy(), rtol=1e-5, atol=1e-5)
    before = explain(model, image, 1, mask, layer="features", method=method)
    after = explain(rescaled, image, 1, mask, layer="features", method=method)
    scale = np.abs(before.raw).max()
    if method in INVARIANT:
        np.testing.assert_allclose(after.raw, before.raw, rtol=1e-4, atol=1e-4 * scale)
    else:
        assert np.abs(after.raw - before.raw).max() > 0.05 * scale


def test_xgrad_weights_do_not_change_when_a_channels_activations_are_scaled():
    activation, gradient = torch.rand(4, 6, 5) + 0.1, torch.randn(4, 6, 5)
    sums = activation.sum((1, 2))
    weights = xgrad_weights((activation * gradient).sum((1, 2)), 30, sums)
    scaled = activation.clone()
    scaled[1] *= 9.0
    scaled_weights = xgrad_weights((scaled * gradient).sum((1, 2)), 30, scaled.sum((1, 2)))
    np.testing.assert_allclose(scaled_weights.numpy(), weights.numpy(), rtol=1e-5)


def test_eigen_cam_recovers_a_rank_one_pattern_with_a_positive_peak():
    pattern = torch.zeros(12, 10)
    pattern[3:6, 4:8] = 1.0
    channel_loadings = torch.tensor([2.0, -1.0, 0.5])
    activation = -channel_loadings[:, None, None] * pattern  # the sign of the loadings must not matter
    projection = METHODS["eigen-cam"].raw_map(activation, torch.zeros_like(activation))
    centred = (pattern - pattern.mean()).numpy()
    assert np.corrcoef(projection.numpy().ravel(), centred.ravel())[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert projection.argmax() == pattern.argmax()  # the blob is positive
    # The target-aware variant sees nothing when no gradient reaches the layer.
    silent = METHODS["seg-eigen-cam"].raw_map(activation, torch.zeros_like(activation))
    assert not silent.any()


def independent_score_cam(model, image, target_class, mask, layer, channels=None):
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    with torch.no_grad():
        model(image[None])
    handle.remove()
    activation = captured["A"][0]

    def probability(x):
        with torch.no_grad():
            return torch.softmax(model(x[None]), 1)[0, target_class][mask].mean().item()

    baseline = probability(torch.zeros_like(image))
    weights = np.zeros(activation.shape[0])
    for k in range(activation.shape[0]) if channels is None else channels:
        upsampled = F.interpolate(activation[None, k : k + 1], size=image.shape[1:], mode="bilinear")[0, 0]
        span = upsampled.max() - upsampled.min()
        scaled = (upsampled - upsampled.min()) / span if span > 0 else torch.zeros_like(upsampled)
        weights[k] = probability(image * scaled) - baseline
    return np.einsum("k,k...->...", weights, activation.double().numpy())


def test_score_cam_matches_an_independent_computation_and_its_channel_subset():
    torch.manual_seed(1)
    model = UNet(2, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    image, mask = torch.randn(1, 32, 24), torch.zeros(32, 24, dtype=torch.bool)
    mask[8:20, 6:18] = True
    for layer in ["model.1", "model.0"]:
        expected = independent_score_cam(model, image, 2, mask, layer)
        result = explain(model, image, 2, mask, layer=layer, method="seg-score-cam", batch_size=5)
        np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    activation, _, _ = plain_autograd_layer(model, image, 2, mask, "model.1")
    inside = F.interpolate(mask[None, None].float(), size=activation.shape[1:], mode="area")[0, 0]
    strongest = torch.topk((activation * inside).flatten(1).sum(1), 3).indices.tolist()
    expected = independent_score_cam(model, image, 2, mask, "model.1", channels=strongest)
    subset = explain(model, image, 2, mask, layer="model.1", method="seg-score-cam", score_cam_channels=3)
    np.testing.assert_allclose(subset.raw, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


class DetachedHead(nn.Module):
    """Blocks every gradient after ``features``: gradient methods have nothing to use."""

    def __init__(self, network: ConvStack):
        super().__init__()
        self.network = network

    def forward(self, x):
        return self.network.head(self.network.features(self.network.stem(x)).detach())


def test_score_cam_needs_no_gradient():
    torch.manual_seed(2)
    network = ConvStack(head_weights_positive=False)
    image, mask = torch.randn(1, 16, 16), torch.rand(16, 16) > 0.5
    with pytest.raises(ExplainInputError, match="does not depend"):
        explain(DetachedHead(network), image, 1, mask, layer="network.features", method="seg-hires-grad-cam")
    detached = explain(DetachedHead(network), image, 1, mask, layer="network.features", method="seg-score-cam")
    plain = explain(network, image, 1, mask, layer="features", method="seg-score-cam")
    np.testing.assert_allclose(detached.raw, plain.raw, rtol=1e-6)
    assert np.abs(plain.raw).max() > 0


@pytest.mark.parametrize("method", [name for name, method in METHODS.items() if not method.windowed])
def test_methods_that_need_the_whole_layer_refuse_windows_with_advice(method):
    model = BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4))
    with pytest.raises(ExplainInputError, match="window=None"):
        explain(model, torch.randn(1, 32, 32, 16), 1, window=Tiling.monai((16, 16, 16)), method=method)


def test_every_method_states_its_cost_and_reference():
    for method in METHODS.values():
        assert method.cost and method.reference and method.title
        assert (method.raw_map is None) == (method.network_map is not None)
