"""CAM methods for segmentation, each a small named function registered in ``METHODS``.

A method turns the target layer's activations ``A`` and the gradients ``G = dT/dA``
(both shaped (channels, *layer_grid)) into a signed raw map on the layer grid. The
engine never needs to know which methods exist: registering one here is enough.

``additive`` tells the sliding-window engine how windows combine. For an additive
method the whole-volume map is the sum of the per-window maps (exact for maps that are
linear in G). Channel-weight methods (S = sum_k w_k A_k) give per-channel statistics that
add up over windows; their weights are formed once and applied to the activations
blended like the logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

RawMapFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamMethod:
    """A registered method. Channel-weight methods also give ``window_statistics(A, G)``
    (per-channel sums that add up over windows) and ``channel_weights(statistics,
    positions)``, so that sliding windows never hold a channels x volume array."""

    name: str
    title: str
    raw_map: RawMapFunction
    additive: bool
    reference: str
    window_statistics: RawMapFunction | None = None
    channel_weights: Callable[[torch.Tensor, float], torch.Tensor] | None = None


METHODS: dict[str, CamMethod] = {}


def register_method(name: str, title: str, *, additive: bool, reference: str):
    """Decorator that registers ``raw_map(activations, gradients) -> map`` as a method."""

    def register(raw_map: RawMapFunction) -> RawMapFunction:
        _add(CamMethod(name, title, raw_map, additive, reference))
        return raw_map

    return register


def register_channel_weight_method(name: str, title: str, *, reference: str, window_statistics, channel_weights):
    """Registers a method of the form S = sum_k w_k A_k whose weights come from per-channel
    statistics: ``window_statistics(A, G)`` (summed over windows) and
    ``channel_weights(statistics, number_of_layer_positions)``."""

    def raw_map(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        positions = activations[0].numel()
        weights = channel_weights(window_statistics(activations, gradients), positions)
        return torch.einsum("k,k...->...", weights, activations)

    return _add(CamMethod(name, title, raw_map, False, reference, window_statistics, channel_weights))


def _add(method: CamMethod) -> CamMethod:
    if method.name in METHODS:
        raise ValueError(f"A CAM method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def _spatial_dims(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, tensor.dim()))


def gradient_sums(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    return gradients.sum(dim=_spatial_dims(gradients))


def mean_gradients(sums: torch.Tensor, positions: float) -> torch.Tensor:
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


def get_method(name: str) -> CamMethod:
    from .errors import ExplainInputError

    try:
        return METHODS[name]
    except KeyError:
        known = ", ".join(sorted(METHODS))
        raise ExplainInputError(f"Unknown CAM method {name!r}. Choose one of: {known}.") from None
