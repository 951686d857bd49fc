"""Two gradient-free references for a segmentation target T over M.

Seg-Ablation CAM (Ablation-CAM, Ramaswamy and Desai, WACV 2020, transferred to
segmentation): each channel k of the layer is set to zero in turn and T is computed again;
its weight is the relative drop w_k = (T - T_k) / |T|, and the map is S = sum_k w_k A_k. Where
T is linear in the layer's activations (a head of 1x1 convolutions without a nonlinearity
after the layer), T - T_k = sum_u G_k(u) A_k(u) exactly, so the weights are what the
gradient says about each whole channel. Cost: one forward pass for the activations and T,
then one per channel (``batch_size`` channels at a time).

Seg-Occlusion (occlusion sensitivity, Zeiler and Fergus, ECCV 2014, of T rather than of a
class score): a cube of the input (the occluder) is set to a baseline, T is computed again,
and every voxel of the cube is credited with T - T_occluded, averaged over the positions of
the occluder that cover it. Only positions whose occluder can change T are run: those within
the network's reach of M (M's bounding box grown by ``reach`` voxels). The map lies on the
input grid. Cost: one forward pass per occluder position (``batch_size`` at a time).
"""

from __future__ import annotations

import itertools

import torch

from .passes import LayerCapture, run_network

OCCLUDER_SIZE = 8  # voxels (pixels in 2D) per side
OCCLUDER_STRIDE = 8  # the occluders tile the image without overlap by default
OCCLUSION_REACH = 16  # voxels: how far beyond M an occluder is still run


def _target_values(target, logits: torch.Tensor, mask) -> torch.Tensor:
    """T of each image of a batch of logits."""
    return torch.stack([target.value_and_gradient(logits[index : index + 1], mask)[0] for index in range(len(logits))])


def ablation_map(model, module, layer_name, image_batch, target, mask, batch_size: int = 1, channels=None):
    """Returns (raw map on the layer grid, T). ``channels`` is unused (every channel is ablated)."""
    capture = LayerCapture(layer_name, track_gradient=False)
    with capture.attached(module), torch.no_grad():
        logits = run_network(model, image_batch)
        activations = capture.require_activation()[0].float()
    score = _target_values(target, logits, mask)[0]
    count = activations.shape[0]
    weights = torch.zeros(count, dtype=torch.float32, device=activations.device)
    step = max(int(batch_size), 1)
    for first in range(0, count, step):
        ablated = list(range(first, min(first + step, count)))

        def zero_channel(module, inputs, output, ablated=ablated):
            output = output.clone()
            output[torch.arange(len(ablated)), ablated] = 0
            return output

        handle = module.register_forward_hook(zero_channel)
        try:
            with torch.no_grad():
                batch = image_batch.expand(len(ablated), *image_batch.shape[1:])
                values = _target_values(target, run_network(model, batch), mask)
        finally:
            handle.remove()
        weights[ablated] = ((score - values) / max(abs(float(score)), 1e-12)).float()
    return torch.einsum("k,k...->...", weights, activations), score


def occlusion_map(
    model,
    module,
    layer_name,
    image_batch,
    target,
    mask,
    batch_size: int = 1,
    channels=None,
    size: int = OCCLUDER_SIZE,
    stride: int = OCCLUDER_STRIDE,
    reach: int = OCCLUSION_REACH,
    baseline: float = 0.0,
):
    """Returns (map on the input grid, T). ``module``, ``layer_name`` and ``channels`` are
    unused: occlusion perturbs the input."""
    spatial = tuple(image_batch.shape[2:])
    with torch.no_grad():
        score = _target_values(target, run_network(model, image_batch), mask)[0]
    total = torch.zeros(spatial, dtype=torch.float32, device=image_batch.device)
    covered = torch.zeros(spatial, dtype=torch.float32, device=image_batch.device)
    positions = list(_occluder_positions(spatial, mask, size, stride, reach))
    step = max(int(batch_size), 1)
    for first in range(0, len(positions), step):
        boxes = positions[first : first + step]
        batch = image_batch.expand(len(boxes), *image_batch.shape[1:]).clone()
        for index, box in enumerate(boxes):
            batch[(index, slice(None), *box)] = baseline
        with torch.no_grad():
            drops = score - _target_values(target, run_network(model, batch), mask)
        for box, drop in zip(boxes, drops, strict=True):
            total[box] += float(drop)
            covered[box] += 1
    return torch.where(covered > 0, total / covered.clamp(min=1), torch.zeros_like(total)), score


def _occluder_positions(spatial, mask, size: int, stride: int, reach: int):
    """The occluder's boxes (tuples of slices) that lie within ``reach`` of M, on a grid of
    ``stride`` that covers the image (the last box of each axis ends at its edge)."""
    if mask is None:
        low, high = [0] * len(spatial), list(spatial)
    else:
        found = torch.nonzero(mask)
        low = [max(int(value) - reach, 0) for value in found.min(0).values]
        high = [min(int(value) + 1 + reach, extent) for value, extent in zip(found.max(0).values, spatial, strict=True)]
    starts = []
    for first, last, extent in zip(low, high, spatial, strict=True):
        width = min(size, extent)
        axis = list(range(0, max(extent - width, 0) + 1, stride))
        if axis[-1] != extent - width:
            axis.append(extent - width)  # the last box ends at the edge
        starts.append([start for start in axis if start < last and start + width > first])
    for corner in itertools.product(*starts):
        yield tuple(slice(start, start + min(size, extent)) for start, extent in zip(corner, spatial, strict=True))
