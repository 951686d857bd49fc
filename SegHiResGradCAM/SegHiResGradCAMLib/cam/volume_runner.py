"""A segmentation network run on whole volumes in the caller's (channels, z, y, x) axis order.

The model format says how its network sees a volume (``ModelGeometry``, which every model
card satisfies): its own axis order, 2D (slice by slice) or 3D, its tiling, head and window.
Here those decide how the logits are computed, how a map is explained (window by window
where the method allows, else on a crop around M; a 2D network slice by slice; a fold
ensemble member by member) and how it is measured, so that the pipeline only ever sees
volumes in its own order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .engine import CamResult, explain
from .ensemble import explain_members
from .methods import get_method
from .metrics import ExplanationMetrics, explanation_metrics
from .passes import spread_to
from .slices import explain_slices, slice_logits
from .sliding_window import Tiling, sliding_window_logits


class ModelGeometry(Protocol):
    """What the runner needs to know of a model format (a model card has it all)."""

    spatial_dims: int
    head: str
    window: tuple[int, ...]  # in the network's own axis order

    @property
    def tiling(self) -> Tiling: ...

    def to_network_axes(self, array: np.ndarray) -> np.ndarray: ...

    def volume_to_network_axes(self, volume: np.ndarray) -> np.ndarray: ...


def volume_logits(network: nn.Module, geometry: ModelGeometry, array: np.ndarray, device, progress, cancel):
    """The blended logits (classes, z, y, x) of a (channels, z, y, x) volume."""
    run = slice_logits if geometry.spatial_dims == 2 else sliding_window_logits
    logits = run(
        network, geometry.to_network_axes(array), geometry.tiling, device=device, progress=progress, cancel=cancel
    )
    return torch.from_numpy(geometry.to_network_axes(logits.numpy()))


def region_of_interest(mask: np.ndarray, window, multiple: int | None = None) -> tuple[slice, ...]:
    """A box around M for methods that explain one crop: M's bounding box with half a
    window of context on each side, at least one window, rounded up to a multiple of the
    window's largest power-of-two divisor (so that a U-Net's strides fit), inside the image."""
    positions = np.argwhere(mask)
    low, high = positions.min(0), positions.max(0) + 1
    box = []
    for axis, (first, last, size) in enumerate(zip(low, high, window, strict=True)):
        divisor = multiple or min(size & -size, 32)
        wanted = max(last - first + size // 2 * 2, size)
        wanted = min(-(-wanted // divisor) * divisor, mask.shape[axis] // divisor * divisor or mask.shape[axis])
        start = int(np.clip((first + last - wanted) // 2, 0, mask.shape[axis] - wanted))
        box.append(slice(start, start + wanted))
    return tuple(box)


def explain_on_model_grid(
    network, geometry: ModelGeometry, array, class_index, mask, method, layer, device, progress=None, cancel=None
) -> tuple[np.ndarray, CamResult]:
    """(heatmap on the whole model grid, CamResult): window by window where the method
    allows, else on a crop around M (``region_of_interest``) with zeros elsewhere; a 2D
    network slice by slice (whole slices for methods that cannot run window by window).
    ``array`` (channels, z, y, x), ``mask`` and the heatmap are in the caller's axis order;
    the network gets its own."""
    heatmap, cam = _explain_in_network_axes(
        network,
        geometry,
        geometry.to_network_axes(array),
        class_index,
        geometry.volume_to_network_axes(mask),
        method,
        layer,
        device,
        progress,
        cancel,
    )
    return geometry.volume_to_network_axes(heatmap), cam


def _explain_in_network_axes(network, geometry, array, class_index, mask, method, layer, device, progress, cancel):
    """A fold ensemble is explained member by member (see ``ensemble``)."""
    options = dict(layer=layer, method=method, head=geometry.head, device=device, cancel=cancel)
    windowed = get_method(method).windowed
    box = _crop_box(geometry, method, mask)

    def explain_one(member, member_progress):
        if geometry.spatial_dims == 2:
            window = geometry.tiling if windowed else None
            return explain_slices(member, array, class_index, mask, window=window, progress=member_progress, **options)
        if windowed:
            return explain(
                member, array, class_index, mask=mask, window=geometry.tiling, progress=member_progress, **options
            )
        return explain(
            member,
            array[(slice(None), *box)],
            class_index,
            mask=mask[box],
            batch_size=8,
            progress=member_progress,
            **options,
        )

    cam = explain_members(network, explain_one, progress)
    return _placed_in(cam.heatmap, box, mask.shape), cam


def _crop_box(geometry: ModelGeometry, method: str, mask: np.ndarray) -> tuple[slice, ...] | None:
    """The crop that a method which cannot run window by window explains (3D networks), or None."""
    if get_method(method).windowed or geometry.spatial_dims == 2:
        return None
    return region_of_interest(mask, geometry.window)


def _placed_in(crop_map: np.ndarray, box, shape) -> np.ndarray:
    if box is None:
        return crop_map
    whole = np.zeros(shape, dtype=np.float32)
    whole[box] = crop_map
    return whole


def signed_on_model_grid(geometry: ModelGeometry, cam: CamResult, mask: np.ndarray) -> np.ndarray:
    """The signed raw map S on the whole model grid (the caller's axis order), its sum kept:
    each layer voxel spread evenly over the model voxels it covers (``passes.spread_to``),
    zero outside the crop of a method that explains one. For Seg-HiRes-Grad CAM of a
    bias-free network it sums to T; positive and negative evidence keep their signs."""
    network_mask = geometry.volume_to_network_axes(mask)
    box = _crop_box(geometry, cam.method, network_mask)
    shape = network_mask.shape if box is None else network_mask[box].shape
    spread = spread_to(torch.from_numpy(np.asarray(cam.raw)), shape).numpy()
    return geometry.volume_to_network_axes(_placed_in(spread, box, network_mask.shape))


def metrics_on_model_grid(
    network,
    geometry: ModelGeometry,
    array: np.ndarray,
    class_index: int,
    mask: np.ndarray,
    heatmap: np.ndarray,
    regions: dict[str, np.ndarray],
    explain_with: Callable[..., tuple[np.ndarray, CamResult]],
    **options,
) -> ExplanationMetrics:
    """``explanation_metrics`` of a map on the model grid, in the network's own axes:
    ``explain_with(network, target=M)`` explains the same method, layer and class again (for
    the randomised network, and for M moved aside). ``options``: measure, random_curves,
    fractions."""
    in_network_axes = geometry.volume_to_network_axes
    return explanation_metrics(
        network,
        geometry.to_network_axes(array),
        class_index,
        in_network_axes(mask),
        in_network_axes(heatmap),
        {name: in_network_axes(region) for name, region in regions.items()},
        geometry.head,
        geometry.tiling,
        slice_by_slice=geometry.spatial_dims == 2,
        explain_again=lambda net: in_network_axes(explain_with(net)[0]),
        explain_for=lambda moved: in_network_axes(explain_with(network, target=in_network_axes(moved))[0]),
        **options,
    )
