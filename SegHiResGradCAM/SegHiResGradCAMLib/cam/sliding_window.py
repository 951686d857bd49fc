"""Sliding-window inference and its exact attribution.

The blended logits are Y(v) = sum_w g_w(v) Y^w(v) / N(v) with N = sum_w g_w, on MONAI's
window grid (same padding, scan interval, last-window placement and importance map as
``monai.inferers.sliding_window_inference``). T is linear in Y, so T = sum_w T_w with the
window's own upstream gradient dT/dY^w = (dT/dY) g_w / N. N depends only on the grid, so
it is known before any network runs, and each window is attributed on its own:

- additive methods (Seg-HiRes-Grad CAM): the per-window maps are summed (not averaged)
  into the whole-volume map, which is then the exact attribution of the blended T;
- channel-weight methods (Seg-Grad CAM): per-channel gradient statistics are summed over
  all windows, the weights formed once, and the weighted activation sum of each window
  blended like the logits in a second, forward-only pass (the map is linear in the
  activations, so this equals applying the weights to the blended activations, without
  ever holding a channels x volume array).

Windows whose outputs do not touch M have a zero upstream gradient and skip the backward
pass. The maps live on the layer's whole-volume grid when every window offset (and the
padding) is a multiple of the layer's stride; otherwise on the image grid, each layer
voxel spread evenly over the image voxels it covers (so that sums are kept).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ExplainCancelled, ExplainInputError, ExplainResourceError
from .methods import CamMethod
from .model_inspection import as_image_batch, evaluation_mode, placed_on, resolve_device
from .passes import check_window, forward_activations, forward_backward, run_network

BLENDS = ("gaussian", "constant")
WeightAt = Callable[[tuple[int, ...]], torch.Tensor]  # a window's start -> its blending weight
GAUSSIAN_SIGMA_SCALE = 0.125  # MONAI's default: sigma = 0.125 x window size


@dataclass(frozen=True)
class WindowGrid:
    image_shape: tuple[int, ...]
    window: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (before, after) per spatial axis
    starts: tuple[tuple[int, ...], ...]

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(
            size + before + after for size, (before, after) in zip(self.image_shape, self.padding, strict=True)
        )

    def slices(self, start: tuple[int, ...], stride: tuple[int, ...] | None = None) -> tuple[slice, ...]:
        stride = stride or (1,) * len(start)
        return tuple(
            slice(begin // step, (begin + size) // step)
            for begin, size, step in zip(start, self.window, stride, strict=True)
        )

    def unpadded(self, stride: tuple[int, ...] | None = None) -> tuple[slice, ...]:
        stride = stride or (1,) * len(self.window)
        return tuple(
            slice(before // step, (before + size) // step)
            for (before, _), size, step in zip(self.padding, self.image_shape, stride, strict=True)
        )


def symmetric_padding(image_shape, window) -> tuple[tuple[int, int], ...]:
    """(before, after) per axis that makes an image at least one window large, the odd voxel
    after: the rule of both MONAI's sliding_window_inference and nnU-Net's pad_nd_image."""
    missing = [max(length - size, 0) for size, length in zip(image_shape, window, strict=True)]
    return tuple((amount // 2, amount - amount // 2) for amount in missing)


def window_grid(image_shape, window, overlap: float) -> WindowGrid:
    """MONAI's grid: images smaller than the window are padded symmetrically; windows step
    by int(window x (1 - overlap)), and the last one is moved back to end at the border."""
    if not 0 <= overlap < 1:
        raise ExplainInputError(f"Overlap {overlap} is out of range: choose a fraction in [0, 1), e.g. 0.25 or 0.5.")
    padding = symmetric_padding(image_shape, window)
    starts_per_axis = []
    for size, length, (before, after) in zip(image_shape, window, padding, strict=True):
        size += before + after
        interval = length if length == size else max(int(length * (1 - overlap)), 1)
        count = next(i for i in range(math.ceil(size / interval)) if i * interval + length >= size) + 1
        starts_per_axis.append([min(i * interval, size - length) for i in range(count)])
    return WindowGrid(tuple(image_shape), tuple(window), padding, tuple(itertools.product(*starts_per_axis)))


@dataclass(frozen=True)
class Tiling:
    """How a volume is cut into windows and blended back.

    This one is MONAI's ``sliding_window_inference`` (``window_grid``, ``importance_map``); a
    model format with its own geometry (nnU-Net's) subclasses it, and every windowed
    computation (logits, attribution, deletion and insertion) follows it.

    Attributes:
        window: the window's size, in the network's array order.
        overlap: the windows' overlap, a fraction in [0, 1).
        blend: "gaussian" or "constant" (MONAI's ``mode``).
        sigma_scale: the Gaussian's width relative to the window (MONAI's ``sigma_scale``).
        padding_mode: how images smaller than a window are padded (MONAI's ``padding_mode``).
        padding_value: the constant of "constant" padding (MONAI's ``cval``).

    Example:
        >>> from SegHiResGradCAMLib import Tiling
        >>> tiling = Tiling.monai((32, 32), overlap=0.5)
        >>> len(tiling.grid((48, 48)).starts)
        4
    """

    window: tuple[int, ...]
    overlap: float = 0.25
    blend: str = "gaussian"
    sigma_scale: float | tuple[float, ...] = GAUSSIAN_SIGMA_SCALE  # MONAI's sigma_scale (Gaussian blend)
    padding_mode: str = "constant"  # how images smaller than a window are padded (MONAI's padding_mode)
    padding_value: float = 0.0  # the constant for "constant" padding (MONAI's cval)

    @classmethod
    def monai(
        cls,
        size,
        overlap: float = 0.25,
        mode: str = "gaussian",
        sigma_scale=GAUSSIAN_SIGMA_SCALE,
        padding_mode: str = "constant",
        cval: float = 0.0,
    ) -> Tiling:
        """MONAI's ``SlidingWindowInferer`` tiling, in its argument names.

        Args:
            size: MONAI's ``roi_size``, the window in the network's array order.
            overlap: the windows' overlap, a fraction in [0, 1).
            mode: "gaussian" or "constant".
            sigma_scale: the Gaussian's width relative to the window.
            padding_mode: how images smaller than a window are padded.
            cval: the constant of "constant" padding.

        Returns:
            A ``Tiling``.

        Raises:
            ExplainInputError: an unknown mode, or an overlap outside [0, 1).
        """
        check_blend(mode)
        tiling = cls(tuple(int(value) for value in size), float(overlap), mode, sigma_scale, padding_mode, float(cval))
        tiling.grid(tiling.window)  # checks the overlap now
        return tiling

    @classmethod
    def of_monai_inferer(cls, inferer) -> Tiling:
        """The tiling of a MONAI ``SlidingWindowInferer`` (read from its attributes; MONAI is
        not imported here)."""
        sigma = inferer.sigma_scale
        return cls(
            tuple(int(size) for size in inferer.roi_size),
            float(inferer.overlap),
            blend=str(getattr(inferer.mode, "value", inferer.mode)),
            sigma_scale=tuple(sigma) if isinstance(sigma, list | tuple) else float(sigma),
            padding_mode=str(getattr(inferer.padding_mode, "value", inferer.padding_mode)),
            padding_value=float(inferer.cval),
        )

    def grid(self, image_shape: tuple[int, ...]) -> WindowGrid:
        return window_grid(image_shape, self.window, self.overlap)

    def weight(self) -> torch.Tensor:
        return importance_map(self.window, self.blend, self.sigma_scale)

    def window_weights(self, grid: WindowGrid) -> WeightAt:
        """Each window's blending weight, by its start: here one map for every window; a
        tiling whose weights depend on where the window lies overrides this."""
        weight = self.weight()
        return lambda start: weight

    def pad(self, image_batch: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
        return pad_to_grid(image_batch, grid, self.padding_mode, self.padding_value)


def as_tiling(window, overlap: float, blend: str, spatial_dims: int) -> Tiling:
    """``window`` as given to the public functions: a Tiling, or window sizes for MONAI's."""
    if isinstance(window, Tiling):
        check_window(window.window, spatial_dims)
        return window
    check_blend(blend)
    tiling = Tiling(check_window(window, spatial_dims), overlap, blend)
    tiling.grid(tiling.window)  # checks the overlap before any network runs
    return tiling


def check_windowed(cam_method: CamMethod) -> None:
    if not cam_method.windowed:
        raise ExplainInputError(
            f"Method {cam_method.name!r} cannot be computed window by window ({cam_method.cost}): crop the "
            "image to the region of interest and use window=None, or choose another method."
        )


def check_blend(blend: str) -> None:
    if blend not in BLENDS:
        raise ExplainInputError(f"Unknown blend {blend!r}: choose one of {', '.join(BLENDS)}.")


def importance_map(window: tuple[int, ...], blend: str, sigma_scale=GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """The per-window blending weight g (MONAI's compute_importance_map; ``sigma_scale`` one
    number or one per axis)."""
    check_blend(blend)
    if blend == "constant":
        return torch.ones(window)
    scales = tuple(sigma_scale) if isinstance(sigma_scale, list | tuple) else (sigma_scale,) * len(window)
    weight = torch.ones(())
    for size, scale in zip(window, scales, strict=True):
        offsets = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1)
        profile = torch.exp(offsets**2 / (-2 * (size * scale) ** 2))
        weight = weight.unsqueeze(-1) * profile
    return weight.clamp(min=max(weight.min().item(), 1e-3))


def blend_count(grid: WindowGrid, weight_at: WeightAt) -> torch.Tensor:
    """N = sum over windows of the placed importance maps."""
    count = torch.zeros(grid.padded_shape)
    for start in grid.starts:
        count[grid.slices(start)] += weight_at(start)
    # Where no window weighs (the margins a cropping tiling leaves out) every weight is zero
    # too: dividing by 1 there keeps the shares 0 instead of 0 / 0.
    return torch.where(count > 0, count, torch.ones(()))


def pad_to_grid(image_batch: torch.Tensor, grid: WindowGrid, mode: str = "constant", value: float = 0.0):
    if not any(before or after for before, after in grid.padding):
        return image_batch
    flat = [amount for pair in reversed(grid.padding) for amount in pair]
    if mode == "constant":
        return F.pad(image_batch, flat, mode="constant", value=value)
    return F.pad(image_batch, flat, mode=mode)


class Progress:
    """Monotone progress over a known number of window steps, with cancellation between them."""

    def __init__(self, total_steps: int, callback, cancel):
        self.total = max(total_steps, 1)
        self.done = 0
        self.callback = callback
        self.cancel = cancel

    def check_cancelled(self) -> None:
        if self.cancel is not None and (self.cancel() if callable(self.cancel) else self.cancel.is_set()):
            raise ExplainCancelled("Cancelled by the user; nothing was written.")

    def step(self, count: int, message: str) -> None:
        self.done += count
        if self.callback is not None:
            self.callback(min(self.done / self.total, 1.0), message)


def batches(items: list, size: int) -> Iterator[list]:
    for first in range(0, len(items), max(size, 1)):
        yield items[first : first + max(size, 1)]


def _window_batch(padded: torch.Tensor, grid: WindowGrid, starts, device) -> torch.Tensor:
    return torch.cat([padded[(slice(None), slice(None), *grid.slices(start))] for start in starts]).to(device)


@contextlib.contextmanager
def _out_of_memory_guard(device: torch.device, window: tuple[int, ...], batch_size: int):
    try:
        yield
    except torch.OutOfMemoryError as error:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise ExplainResourceError(
            f"The {device.type.upper()} ran out of memory with windows of {window} voxels, {batch_size} at a "
            "time: use a smaller window or batch size, mixed precision, or device='cpu'."
        ) from error


def _blend_logits(
    model, padded, grid, weight_at: WeightAt, batch_size, device, tracker, message, chosen_starts=None
) -> torch.Tensor:
    blended = None
    for starts in batches(list(grid.starts if chosen_starts is None else chosen_starts), batch_size):
        tracker.check_cancelled()
        logits = run_network(model, _window_batch(padded, grid, starts, device)).float().cpu()
        if blended is None:
            blended = torch.zeros((logits.shape[1], *grid.padded_shape))
        for index, start in enumerate(starts):
            blended[(slice(None), *grid.slices(start))] += logits[index] * weight_at(start)
        tracker.step(len(starts), message)
    assert blended is not None  # a grid has at least one window
    blended /= blend_count(grid, weight_at)
    return blended


def sliding_window_logits(
    model: nn.Module,
    image,
    window,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 1,
    device=None,
    progress: Callable[[float, str], None] | None = None,
    cancel=None,
    mask=None,
) -> torch.Tensor:
    """Blended logits (K, *spatial) on the CPU, equal to MONAI's ``sliding_window_inference``.

    Args:
        model: the segmentation network.
        image: (C, *spatial) or (1, C, *spatial).
        window: a ``Tiling``, or window sizes (MONAI's grid with ``overlap`` and ``blend``).
        overlap: with window sizes: the windows' overlap.
        blend: with window sizes: "gaussian" or "constant".
        batch_size: windows per forward pass.
        device: None follows the model; "auto" picks CUDA, then MPS, then the CPU.
        progress: called as ``progress(fraction, message)``.
        cancel: anything with ``is_set()``; stops the run with ExplainCancelled.
        mask: M: run only the windows that reach it; the logits are then exact inside M only
            (every window covering those voxels runs), which is all a target over M needs.

    Returns:
        The blended logits as a tensor shaped (classes, *spatial).

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import Tiling, sliding_window_logits
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> sliding_window_logits(net, torch.randn(1, 40, 40), Tiling.monai((32, 32))).shape
        torch.Size([3, 40, 40])
    """
    with placed_on(model, resolve_device(device)) as compute_device:
        image_batch = as_image_batch(image, model, torch.device("cpu"))
        tiling = as_tiling(window, overlap, blend, image_batch.dim() - 2)
        grid = tiling.grid(tuple(image_batch.shape[2:]))
        starts = list(grid.starts) if mask is None else _windows_reaching(grid, _padded_mask(grid, mask))
        tracker = Progress(len(starts), progress, cancel)
        with evaluation_mode(model), _out_of_memory_guard(compute_device, tiling.window, batch_size):
            blended = _blend_logits(
                model,
                tiling.pad(image_batch, grid),
                grid,
                tiling.window_weights(grid),
                batch_size,
                compute_device,
                tracker,
                "inference",
                starts,
            )
    return blended[(slice(None), *grid.unpadded())]


def _padded_mask(grid: WindowGrid, mask) -> torch.Tensor:
    """M on the padded grid (everything when ``mask`` is None)."""
    if mask is not None and tuple(mask.shape) != grid.image_shape:
        raise ExplainInputError(
            f"The mask has shape {tuple(mask.shape)} but the image (and the blended output) is "
            f"{grid.image_shape}: resample the segment onto the image grid."
        )
    padded = torch.zeros(grid.padded_shape, dtype=torch.bool)
    padded[grid.unpadded()] = True if mask is None else torch.as_tensor(mask).bool()
    return padded


def _windows_reaching(grid: WindowGrid, padded_mask: torch.Tensor) -> list[tuple[int, ...]]:
    return [start for start in grid.starts if padded_mask[grid.slices(start)].any()]


def layer_stride(window: tuple[int, ...], layer_window_shape: tuple[int, ...]) -> tuple[int, ...]:
    """How many image voxels one layer voxel spans along each axis of a window."""
    if any(size % layer_size for size, layer_size in zip(window, layer_window_shape, strict=True)):
        raise ExplainInputError(
            f"The layer's grid {layer_window_shape} does not divide the window {window}: choose "
            "a window that is a multiple of the network's total stride, or another layer."
        )
    return tuple(size // layer_size for size, layer_size in zip(window, layer_window_shape, strict=True))


def average_pooled(weight: torch.Tensor, stride: tuple[int, ...]) -> torch.Tensor:
    """An image-grid window of weights averaged over each layer voxel's footprint."""
    if all(step == 1 for step in stride):
        return weight
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[weight.dim()]
    return pool(weight[None, None], stride)[0, 0]


class _MapAccumulator:
    """Sums (or blends) per-window maps onto the whole-volume layer grid, or onto the image
    grid when window offsets do not align with the layer's stride."""

    def __init__(self, grid: WindowGrid, layer_window_shape: tuple[int, ...]):
        self.grid = grid
        self.stride = stride = layer_stride(grid.window, layer_window_shape)
        offsets_per_axis = [
            [start[axis] for start in grid.starts] + [grid.padding[axis][0]] for axis in range(len(grid.window))
        ]
        self.on_layer_grid = all(
            offset % step == 0
            for offsets, step in zip(offsets_per_axis, self.stride, strict=True)
            for offset in offsets
        )
        self._grid_stride = self.stride if self.on_layer_grid else None
        shape = tuple(
            size // step for size, step in zip(grid.padded_shape, self._grid_stride or (1,) * len(stride), strict=True)
        )
        self.total = torch.zeros(shape)
        self.count: torch.Tensor | None = None
        self.layer_positions = math.prod(size / step for size, step in zip(grid.padded_shape, self.stride, strict=True))

    def _placed(self, window_map: torch.Tensor) -> torch.Tensor:
        expanded = window_map.float().cpu()
        if not self.on_layer_grid:
            for axis, step in enumerate(self.stride):
                expanded = expanded.repeat_interleave(step, dim=axis)
        return expanded

    def add(self, start: tuple[int, ...], window_map: torch.Tensor) -> None:
        """Adds a window's map; on the image grid each layer voxel's value is spread evenly
        over the voxels it covers, so that the total is kept."""
        spread = 1 if self.on_layer_grid else math.prod(self.stride)
        self.total[self.grid.slices(start, self._grid_stride)] += self._placed(window_map) / spread

    def blend(self, start: tuple[int, ...], window_map: torch.Tensor, weight: torch.Tensor) -> None:
        """Adds a window's map with blending weights ``weight`` (image-grid window shape)."""
        if self.count is None:
            self.count = torch.zeros_like(self.total)
        if self.on_layer_grid:
            weight = average_pooled(weight, self.stride)
        where = self.grid.slices(start, self._grid_stride)
        self.total[where] += self._placed(window_map) * weight
        self.count[where] += weight

    def result(self) -> torch.Tensor:
        """The map on the image's own (unpadded) grid. A summed map keeps its total: what the
        windows attributed to the padding of an image smaller than a window (the padded
        voxels feed T too) is added to the border voxels it was padded from, so the map of
        an additive method still sums to T; a blended map is cropped."""
        region = self.grid.unpadded(self._grid_stride)
        if self.count is not None:
            return (self.total / self.count)[region]
        return _fold_margins(self.total, region)

    @property
    def grid_name(self) -> str:
        return "layer" if self.on_layer_grid else "image"


def _fold_margins(total: torch.Tensor, region: tuple[slice, ...]) -> torch.Tensor:
    """``total[region]`` with everything outside the region added to its nearest border slices."""
    for axis, kept in enumerate(region):
        size = total.shape[axis]
        if kept.start > 0 or kept.stop < size:
            inside = total.narrow(axis, kept.start, kept.stop - kept.start).clone()
            if kept.start > 0:
                inside.narrow(axis, 0, 1).add_(total.narrow(axis, 0, kept.start).sum(axis, keepdim=True))
            if kept.stop < size:
                inside.narrow(axis, inside.shape[axis] - 1, 1).add_(
                    total.narrow(axis, kept.stop, size - kept.stop).sum(axis, keepdim=True)
                )
            total = inside
    return total


def _blended_activation_sums(model, module, layer_name, padded, grid, weight_at, count, batch_size, device, tracker):
    """sum_u A_k(u) of the activations blended like the logits: each window's activation
    weighted by its share g_w / N of the blend (averaged over each layer voxel's footprint)."""
    sums, stride = None, None
    for starts in batches(list(grid.starts), batch_size):
        tracker.check_cancelled()
        activations = forward_activations(model, module, layer_name, _window_batch(padded, grid, starts, device))
        stride = stride or layer_stride(grid.window, tuple(activations.shape[2:]))
        for index, start in enumerate(starts):
            window_share = average_pooled(weight_at(start) / count[grid.slices(start)], stride)
            contribution = (activations[index].float().cpu() * window_share).flatten(1).sum(1)
            sums = contribution if sums is None else sums + contribution
        tracker.step(len(starts), "activation sums")
    return sums.to(device)


def explain_by_windows(
    model,
    module,
    layer_name: str,
    image_batch: torch.Tensor,
    target,
    mask: torch.Tensor | None,
    cam_method: CamMethod,
    *,
    tiling: Tiling,
    batch_size: int,
    device: torch.device,
    progress,
    cancel,
    skip_windows: bool,
):
    """The exact attribution of the blended T; returns (raw map, T, grid name)."""
    check_windowed(cam_method)
    raw_map, statistics_of, weights_of = cam_method.raw_map, cam_method.window_statistics, cam_method.channel_weights
    # a windowed method has a raw map and, unless additive, both of its channel-weight functions
    assert raw_map is not None and (cam_method.additive or (statistics_of and weights_of))
    window = tiling.window
    grid = tiling.grid(tuple(image_batch.shape[2:]))
    mask_on_padded_grid = _padded_mask(grid, mask)
    reached = _windows_reaching(grid, mask_on_padded_grid)
    weight_at = tiling.window_weights(grid)
    count = blend_count(grid, weight_at)
    padded = tiling.pad(image_batch, grid)
    backward_starts = reached if skip_windows else list(grid.starts)
    nonlinear_score = target.output != "logits"
    passes = int(nonlinear_score) + int(not cam_method.additive) + int(cam_method.needs_activation_sums)
    tracker = Progress(len(backward_starts) + len(grid.starts) * passes, progress, cancel)

    with _out_of_memory_guard(device, window, batch_size):
        output_gradient = None  # dT/dY on the blended logits, for a score that is not linear in Y
        score_value = torch.zeros((), dtype=torch.float64)
        if nonlinear_score:
            blended = _blend_logits(model, padded, grid, weight_at, batch_size, device, tracker, "inference")
            unpadded = (slice(None), *grid.unpadded())
            score_value, gradient = target.value_and_gradient(blended[unpadded][None], mask)
            output_gradient = torch.zeros_like(blended)
            output_gradient[unpadded] = gradient[0]
            del blended

        def window_upstream(starts) -> torch.Tensor:
            shares = torch.stack([weight_at(start) / count[grid.slices(start)] for start in starts])
            if output_gradient is not None:
                chosen = torch.stack([output_gradient[(slice(None), *grid.slices(start))] for start in starts])
                return (shares[:, None] * chosen).to(device)
            return (shares * torch.stack([mask_on_padded_grid[grid.slices(start)] for start in starts])).to(device)

        activation_sums = None
        if cam_method.needs_activation_sums:
            activation_sums = _blended_activation_sums(
                model, module, layer_name, padded, grid, weight_at, count, batch_size, device, tracker
            )
        accumulator = None
        statistics = None
        for starts in batches(backward_starts, batch_size):
            tracker.check_cancelled()
            upstream_weights = window_upstream(starts)

            def upstream(logits, upstream_weights=upstream_weights):
                if tuple(logits.shape[2:]) != window:
                    raise ExplainInputError(
                        f"The network's output grid {tuple(logits.shape[2:])} differs from its input window "
                        f"{window}: sliding windows need a network whose output matches its input."
                    )
                if output_gradient is not None:
                    return torch.zeros(()), upstream_weights
                return target.value_and_gradient(logits, upstream_weights)

            activations, gradients, contribution = forward_backward(
                model, module, layer_name, _window_batch(padded, grid, starts, device), upstream
            )
            score_value = score_value + contribution.double().cpu()
            if accumulator is None:
                accumulator = _MapAccumulator(grid, tuple(activations.shape[2:]))
            for index, start in enumerate(starts):
                activation, gradient = activations[index].float(), gradients[index].float()
                if cam_method.additive:
                    accumulator.add(start, raw_map(activation, gradient))
                else:
                    assert statistics_of is not None
                    window_statistics = statistics_of(activation, gradient, activation_sums)
                    statistics = window_statistics if statistics is None else statistics + window_statistics
            del activations, gradients
            tracker.step(len(starts), "attribution")

        if accumulator is None:  # no window reaches M: T is zero, and so is every map
            probe = _window_batch(padded, grid, grid.starts[:1], device)
            accumulator = _MapAccumulator(grid, tuple(forward_activations(model, module, layer_name, probe).shape[2:]))
        if not cam_method.additive:
            assert weights_of is not None
            layer_channels = (
                None if statistics is None else weights_of(statistics, accumulator.layer_positions, activation_sums)
            )
            for starts in batches(list(grid.starts), batch_size):
                tracker.check_cancelled()
                activations = forward_activations(
                    model, module, layer_name, _window_batch(padded, grid, starts, device)
                )
                channel_weights = (
                    torch.zeros(activations.shape[1], device=device)
                    if layer_channels is None
                    else layer_channels.to(device)
                )
                for index, start in enumerate(starts):
                    window_map = torch.einsum("k,k...->...", channel_weights, activations[index].float())
                    accumulator.blend(start, window_map, weight_at(start))
                tracker.step(len(starts), "blending activations")
    if progress is not None:
        progress(1.0, "done")
    return accumulator.result(), score_value, accumulator.grid_name
