"""CAM methods for segmentation, each a small named function registered in ``METHODS``.

A method turns the target layer's activations ``A`` and the gradients ``G = dT/dA``
(both shaped (channels, *layer_grid)) into a signed raw map on the layer grid. The
engine never needs to know which methods exist: registering one here is enough.
Definitions: the method table of docs/methods.md (T is the segmentation target, not a class score).

``additive`` tells the sliding-window engine how windows combine. For an additive
method the whole-volume map is the sum of the per-window maps: each window's activation
is its own instance of the layer, with its own gradient dT/dA^w. Channel-weight methods
(S = sum_k w_k A_k) give per-channel statistics that add up over windows; their weights
are formed once and applied to the activations blended like the logits. Methods that
need the channel sums of the activations (XGrad, Grad CAM++) get them from a forward
pass over all windows first. Eigen CAM needs the whole layer at once and Score CAM runs
the network once per channel, so both explain a single window (``window=None``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ExplainInputError
from .ablation import OCCLUDER_SIZE, OCCLUSION_REACH, ablation_map, occlusion_map
from .score_cam import score_cam_map

RawMapFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (activations, gradients, channel sums of the activations or None) -> per-channel statistics
StatisticsFunction = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
# (statistics summed over windows, number of layer positions, activation sums or None) -> weights
WeightsFunction = Callable[[torch.Tensor, float, "torch.Tensor | None"], torch.Tensor]


GRADIENT_PASS_COST = "1 forward + 1 backward pass (per window)"


@dataclass(frozen=True)
class CamMethod:
    """A registered method (``METHODS`` maps each name to one).

    Channel-weight methods also give ``window_statistics`` (per-channel sums that add up over
    windows) and ``channel_weights``, so that sliding windows never hold a channels x volume
    array; ``needs_activation_sums`` asks for sum_u A_k(u) first. A gradient-free method gives
    ``network_map(model, module, layer, image_batch, target, mask, batch_size) -> (raw map, T)``
    instead of a ``raw_map``.

    Attributes:
        name: what ``method=`` takes.
        title: the name shown to users.
        raw_map: ``raw_map(activations, gradients) -> map`` on the layer grid.
        additive: whether window maps add up to the whole-volume map.
        reference: where the method comes from.
        window_statistics: per-window channel statistics (channel-weight methods).
        channel_weights: the weights from the summed statistics (channel-weight methods).
        needs_activation_sums: whether the weights need sum_u A_k(u).
        network_map: a gradient-free method's own computation.
        cost: what one explanation costs, stated to users.
    """

    name: str
    title: str
    raw_map: RawMapFunction | None
    additive: bool
    reference: str
    window_statistics: StatisticsFunction | None = None
    channel_weights: WeightsFunction | None = None
    needs_activation_sums: bool = False
    network_map: Callable | None = None
    cost: str = GRADIENT_PASS_COST

    @property
    def windowed(self) -> bool:
        """Whether the method can explain a blended sliding-window output."""
        return self.additive or self.channel_weights is not None


METHODS: dict[str, CamMethod] = {}


def register_method(name: str, title: str, *, additive: bool, reference: str, cost: str | None = None):
    """A decorator that registers ``raw_map(activations, gradients) -> map`` as a method.

    The engine needs no change: the method runs on whole images and, when ``additive``, window
    by window (the whole-volume map is the sum of the windows' maps).

    Args:
        name: the name ``method=`` and ``--method`` take.
        title: the name shown to users.
        additive: whether the map of a sum of windows is the sum of their maps.
        reference: where the method comes from.
        cost: what one explanation costs, as ``seghiresgradcam methods`` states it.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        ValueError: a name that is already registered.

    Example:
        >>> from SegHiResGradCAMLib import METHODS, register_method
        >>> @register_method("positive-hires", "Positive HiRes", additive=True, reference="an example")
        ... def positive_hires(activations, gradients):  # (channels, *layer_grid) each
        ...     return (gradients.clamp(min=0) * activations).sum(dim=0)
        >>> METHODS["positive-hires"].title
        'Positive HiRes'
        >>> del METHODS["positive-hires"]
    """

    def register(raw_map: RawMapFunction) -> RawMapFunction:
        _add(CamMethod(name, title, raw_map, additive, reference, cost=cost or GRADIENT_PASS_COST))
        return raw_map

    return register


def register_channel_weight_method(
    name: str,
    title: str,
    *,
    reference: str,
    window_statistics: StatisticsFunction,
    channel_weights: WeightsFunction,
    needs_activation_sums: bool = False,
):
    """Registers a method of the form S = sum_k w_k A_k whose weights come from per-channel
    statistics: ``window_statistics(A, G, activation_sums)`` (summed over windows) and
    ``channel_weights(statistics, number_of_layer_positions, activation_sums)``;
    ``activation_sums`` is sum_u A_k(u) when ``needs_activation_sums``, else None."""

    def raw_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        positions = activations[0].numel()
        sums = activation_channel_sums(activations) if needs_activation_sums else None
        weights = channel_weights(window_statistics(activations, gradients, sums), positions, sums)
        return torch.einsum("k,k...->...", weights, activations)

    cost = "1 forward + 1 backward pass per window, then 1 forward pass per window" + (
        " (and 1 more forward pass per window for the activation sums)" if needs_activation_sums else ""
    )
    return _add(
        CamMethod(
            name,
            title,
            raw_map,
            False,
            reference,
            window_statistics,
            channel_weights,
            needs_activation_sums,
            cost=cost,
        )
    )


def _add(method: CamMethod) -> CamMethod:
    if method.name in METHODS:
        raise ValueError(f"A CAM method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def _spatial_dims(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, tensor.dim()))


def activation_channel_sums(activations: torch.Tensor) -> torch.Tensor:
    return activations.sum(dim=_spatial_dims(activations))


def gradient_sums(activations: torch.Tensor, gradients: torch.Tensor, activation_sums=None) -> torch.Tensor:
    return gradients.sum(dim=_spatial_dims(gradients))


def mean_gradients(sums: torch.Tensor, positions: float, activation_sums=None) -> torch.Tensor:
    return sums / positions


# a_k = (1/Z) sum_u G_k(u);  S = sum_k a_k A_k
register_channel_weight_method(
    "seg-grad-cam",
    "Seg-Grad CAM",
    reference="Vinogradova, Dibrov, Myers: Towards Interpretable Semantic Segmentation "
    "via Gradient-weighted Class Activation Mapping, AAAI 2020",
    window_statistics=gradient_sums,
    channel_weights=mean_gradients,
)


@register_method(
    "seg-hires-grad-cam",
    "Seg-HiRes-Grad CAM",
    additive=True,
    reference="Rheude, Wirtz, Wesarg, Kuijper: Leveraging CAM Algorithms for Explaining Medical Semantic Segmentation",
)
def seg_hires_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients * activations).sum(dim=0)


# S = sum_k ReLU(G_k) A_k: the HiRes map with only the positive gradients
@register_method(
    "seg-layer-cam",
    "Seg-Layer CAM",
    additive=True,
    reference="Jiang, Zhang, Hou, Cheng, Wei: LayerCAM, IEEE TIP 2021 (transferred to segmentation)",
)
def seg_layer_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return (gradients.clamp(min=0) * activations).sum(dim=0)


# Guards channels whose activations sum to zero (dead channels: their numerator is zero too).
XGRAD_EPSILON = 1e-7


def activation_weighted_gradient_sums(activations, gradients, activation_sums=None) -> torch.Tensor:
    return (activations * gradients).sum(dim=_spatial_dims(gradients))


def xgrad_weights(sums: torch.Tensor, positions: float, activation_sums: torch.Tensor | None) -> torch.Tensor:
    if activation_sums is None:
        raise ValueError("Seg-XGrad CAM's weights need the activation sums (needs_activation_sums=True).")
    return sums / (activation_sums + XGRAD_EPSILON)


# w_k = sum_u A_k G_k / sum_u A_k: invariant to scaling channel k's activations
register_channel_weight_method(
    "seg-xgrad-cam",
    "Seg-XGrad CAM",
    reference="Fu, Hu, Dong, Li, Sun, Lin: Axiom-based Grad-CAM, BMVC 2020 (transferred to segmentation)",
    window_statistics=activation_weighted_gradient_sums,
    channel_weights=xgrad_weights,
    needs_activation_sums=True,
)


def grad_cam_plus_plus_sums(activations, gradients, activation_sums) -> torch.Tensor:
    """sum_u a_k(u) ReLU(G_k(u)) with a = G^2 / (2 G^2 + (sum_u A_k) G^3), and a = 0 where
    that denominator is 0 (always where G = 0). The guard is exact rather than an added
    epsilon, so that the map stays invariant to rescaling a channel."""
    sums = activation_sums.reshape(-1, *([1] * (gradients.dim() - 1)))
    squared = gradients.double() ** 2
    denominator = 2 * squared + sums.double() * squared * gradients.double()
    alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1), 0)
    return (alpha * gradients.double().clamp(min=0)).sum(dim=_spatial_dims(gradients)).to(gradients.dtype)


def summed_statistics(sums: torch.Tensor, positions: float, activation_sums=None) -> torch.Tensor:
    return sums


# w_k = sum_u a_k(u) ReLU(G_k(u)); no exp(T) factor (T is a sum of logits, not one score)
register_channel_weight_method(
    "seg-grad-cam++",
    "Seg-Grad CAM++",
    reference="Chattopadhay, Sarkar, Howlader, Balasubramanian: Grad-CAM++, WACV 2018 (transferred to segmentation)",
    window_statistics=grad_cam_plus_plus_sums,
    channel_weights=summed_statistics,
    needs_activation_sums=True,
)


def first_component_projection(features: torch.Tensor) -> torch.Tensor:
    """Projection of (channels, *grid) features on their first principal component over
    the grid positions, signed so that the larger magnitude is positive."""
    matrix = features.reshape(features.shape[0], -1).T.double()
    centred = matrix - matrix.mean(dim=0)
    if not bool(centred.any()):
        return torch.zeros(features.shape[1:], dtype=features.dtype)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ right[0]
    if -projection.min() > projection.max():
        projection = -projection
    return projection.reshape(features.shape[1:]).to(features.dtype)


EIGEN_REFERENCE = "Muhammad, Yeasin: Eigen-CAM, IJCNN 2020 (transferred to segmentation)"
WHOLE_LAYER_COST = "1 forward + 1 backward pass; needs the whole layer at once (window=None)"


# First principal component of |G| * A, so that the map depends on the target
@register_method("seg-eigen-cam", "Seg-Eigen CAM", additive=False, reference=EIGEN_REFERENCE, cost=WHOLE_LAYER_COST)
def seg_eigen_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return first_component_projection(gradients.abs() * activations)


@register_method(
    "eigen-cam",
    "Eigen CAM (target-free)",
    additive=False,
    reference=EIGEN_REFERENCE,
    cost="1 forward pass (the gradient is computed but unused); needs the whole layer at once (window=None)",
)
def eigen_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return first_component_projection(activations)


_add(
    CamMethod(
        "seg-score-cam",
        "Seg-Score CAM",
        None,
        False,
        "Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu: Score-CAM, CVPR Workshops 2020 (transferred to segmentation)",
        network_map=score_cam_map,
        cost="gradient-free: 2 forward passes + 1 per channel (batch_size channels at a time); window=None",
    )
)


_add(
    CamMethod(
        "seg-ablation-cam",
        "Seg-Ablation CAM",
        None,
        False,
        "Ramaswamy, Desai: Ablation-CAM, WACV 2020 (transferred to segmentation: the drop of T over M)",
        network_map=ablation_map,
        cost="gradient-free: 1 forward pass + 1 per channel of the layer (batch_size channels at a time); window=None",
    )
)
_add(
    CamMethod(
        "seg-occlusion",
        "Seg-Occlusion",
        None,
        False,
        "Zeiler, Fergus: Visualizing and Understanding Convolutional Networks, ECCV 2014 (occlusion of T over M)",
        network_map=occlusion_map,
        cost=f"gradient-free: 1 forward pass + 1 per position of a {OCCLUDER_SIZE}-voxel occluder within "
        f"{OCCLUSION_REACH} voxels of M (batch_size at a time); the map is on the input grid; window=None",
    )
)


def get_method(name: str) -> CamMethod:
    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ExplainInputError(f"Unknown CAM method {name!r}. Choose one of: {known}.") from None
