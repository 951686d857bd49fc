"""Seg-Score CAM: gradient-free channel weights for a segmentation target.

Each channel's activation A_k is upsampled to the input grid, min-max scaled to [0, 1]
(H_k) and multiplied into the input. Its weight is the change of the probability target
P(X) = mean over M of the class-c probability (softmax or sigmoid, as the head) from the
zero baseline: w_k = P(X * H_k) - P(0). The map is S = sum_k w_k A_k. Cost: one forward
pass for the activations, one for the baseline and one per explained channel, batched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ExplainInputError
from .passes import LayerCapture, Target, class_probability, run_network, upsample_to


def score_cam_map(model, module, layer_name, image_batch, target: Target, mask, batch_size: int = 1, channels=None):
    """Returns (raw map on the layer grid, T of the unmasked image)."""
    capture = LayerCapture(layer_name, track_gradient=False)
    with capture.attached(module), torch.no_grad():
        logits = run_network(model, image_batch)
        activation = capture.require_activation()
    activations = activation[0].float()
    score_value, _ = target.value_and_gradient(logits, mask)
    spatial = tuple(image_batch.shape[2:])

    def mean_probability(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            values = class_probability(run_network(model, batch).float(), target.target_class, target.head)
        if mask is None:
            return values.flatten(1).mean(1)
        return values[:, mask].mean(1)

    chosen = _chosen_channels(activations, mask, channels)
    baseline = mean_probability(torch.zeros_like(image_batch))[0]
    weights = torch.zeros(activations.shape[0], dtype=torch.float32, device=activations.device)
    for first in range(0, len(chosen), max(int(batch_size), 1)):
        indices = chosen[first : first + max(int(batch_size), 1)]
        masks = torch.stack([_scaled(upsample_to(activations[index], spatial)) for index in indices])
        weights[indices] = (mean_probability(image_batch * masks[:, None].to(image_batch.dtype)) - baseline).float()
    return torch.einsum("k,k...->...", weights, activations), score_value


def _scaled(channel: torch.Tensor) -> torch.Tensor:
    low, high = channel.min(), channel.max()
    return (channel - low) / (high - low) if high > low else torch.zeros_like(channel)


def _chosen_channels(activations: torch.Tensor, mask, channels) -> torch.Tensor:
    """All channels, or the ``channels`` with the largest mean activation over M."""
    count = activations.shape[0]
    if channels is None or int(channels) >= count:
        return torch.arange(count)
    if int(channels) < 1:
        raise ExplainInputError(f"score_cam_channels={channels}: choose at least 1 channel (or None for all).")
    if mask is None:
        relevance = activations.flatten(1).mean(1)
    else:
        footprint = F.interpolate(mask[None, None].float(), size=activations.shape[1:], mode="area")[0, 0]
        relevance = (activations * footprint).flatten(1).sum(1)
    return torch.topk(relevance, int(channels)).indices.sort().values
