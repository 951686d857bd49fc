"""CAM methods for segmentation, each a small named function registered in ``METHODS``.

A method turns the target layer's activations ``A`` and the gradients ``G = dT/dA``
(both shaped (channels, *layer_grid)) into a signed raw map on the layer grid. The
engine never needs to know which methods exist: registering one here is enough.

``additive`` tells the sliding-window engine how windows combine. For an additive
method the whole-volume map is the sum of the per-window maps (exact for maps that are
linear in G); the others are computed once from whole-volume statistics (gradients
summed over windows, activations blended like the logits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

RawMapFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamMethod:
    name: str
    title: str
    raw_map: RawMapFunction
    additive: bool
    reference: str


METHODS: dict[str, CamMethod] = {}


def register_method(name: str, title: str, *, additive: bool, reference: str):
    """Decorator that registers ``raw_map(activations, gradients) -> map`` as a method."""

    def register(raw_map: RawMapFunction) -> RawMapFunction:
        if name in METHODS:
            raise ValueError(f"A CAM method named {name!r} is already registered.")
        METHODS[name] = CamMethod(name, title, raw_map, additive, reference)
        return raw_map

    return register


def _spatial_dims(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, tensor.dim()))


@register_method(
    "seg-grad-cam",
    "Seg-Grad CAM",
    additive=False,
    reference="Vinogradova, Dibrov, Myers: Towards Interpretable Semantic Segmentation "
    "via Gradient-weighted Class Activation Mapping, AAAI 2020",
)
def seg_grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    channel_weights = gradients.mean(dim=_spatial_dims(gradients), keepdim=True)
    return (channel_weights * activations).sum(dim=0)


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
