"""The public ``explain()``: checks its arguments, places the model, chooses the layer and
runs the registered method on the whole image or window by window (``sliding_window``).
The passes themselves (capture, forward, backward to the layer) are in ``passes``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ExplainInputError
from .methods import get_method
from .model_inspection import (
    as_image_batch,
    evaluation_mode,
    find_layer,
    placed_on,
    resolve_device,
    resolve_layer,
)
from .passes import Target, as_mask, autocast, forward_backward, upsample_to
from .sliding_window import Tiling, as_tiling, check_windowed, explain_by_windows

OUTPUTS = ("logits", "probability")
HEADS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class CamResult:
    """A class activation map for one target.

    Attributes:
        raw: the signed map S on the target layer's grid (for sliding windows whose offsets do
            not align with the layer's stride: on the image grid, see ``raw_grid``).
        heatmap: ReLU(raw) interpolated (bilinear / trilinear, align_corners=False) onto the
            image grid, not normalised.
        target_score: T, the value the map explains.
        method: the method's registered name.
        layer: the layer explained (a rule resolved to its module name).
        target_class: the class of T; None for a ``CallableTarget``.
        raw_grid: "layer" or "image", the grid of ``raw``.
    """

    raw: np.ndarray
    heatmap: np.ndarray
    target_score: float
    method: str
    layer: str
    target_class: int | None  # None for a target defined by a function of the logits
    raw_grid: str = "layer"

    @property
    def score(self) -> float:
        """Deprecated name of ``target_score`` (kept for one release)."""
        warnings.warn("CamResult.score is now CamResult.target_score", DeprecationWarning, stacklevel=2)
        return self.target_score

    @property
    def normalized(self) -> np.ndarray:
        peak = float(self.heatmap.max(initial=0.0))
        return self.heatmap / peak if peak > 0 else np.zeros_like(self.heatmap)


def explain(
    model: nn.Module,
    image,
    target_class: int,
    mask=None,
    layer: str | None = None,
    method: str = "seg-hires-grad-cam",
    output: str = "logits",
    head: str = "softmax",
    window=None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 1,
    device=None,
    mixed_precision: bool = False,
    progress: Callable[[float, str], None] | None = None,
    cancel=None,
    skip_windows: bool = True,
    score_cam_channels: int | None = None,
    score: str | None = None,
) -> CamResult:
    """Explain T = sum over ``mask`` of the class's output at ``layer``, in one call.

    Made for one question; an ``Explainer`` answers many without placing the model each time,
    with the same maps. The model is evaluated in eval mode and left exactly as it was.

    Args:
        model: the segmentation network, returning (1, classes, *spatial) logits.
        image: (C, *spatial) or (1, C, *spatial), 2D or 3D, array or tensor.
        target_class: the output channel c.
        mask: M, a boolean array over the output's spatial shape; None: the whole image.
        layer: a dotted module name or a layer rule; None: the recommended layer.
        method: a registered method (``METHODS``).
        output: "logits" or "probability" (softmax over the classes for ``head="softmax"``,
            the channel's sigmoid for ``head="sigmoid"`` region or multi-label heads).
        head: "softmax" or "sigmoid".
        window: a ``Tiling`` (``Tiling.monai(size, overlap, mode)`` or a format's own) to run the
            network window by window and explain the blended output exactly; None: one pass.
        overlap: with window sizes (deprecated) only.
        blend: with window sizes (deprecated) only.
        batch_size: windows (or Score CAM's masked inputs) run together.
        device: None follows the model; "auto" picks CUDA, then MPS, then the CPU.
        mixed_precision: float16 autocast on CUDA (float32 accumulation).
        progress: called as ``progress(fraction, message)`` while windows finish.
        cancel: anything with ``is_set()`` (a ``threading.Event``) to stop the run.
        skip_windows: skip the windows whose output does not reach M (the map is the same).
        score_cam_channels: Seg-Score CAM only: explain just this many channels (those with the
            largest activation over M).
        score: the name of ``output`` before 0.2 (deprecated).

    Returns:
        A ``CamResult``.

    Raises:
        ExplainInputError: bad input (empty mask, wrong shape, unknown class, method or layer,
            a layer off the output path, NaN), with what to do.
        ExplainCancelled: ``cancel`` was set; nothing partial is returned.
        ExplainResourceError: the device ran out of memory, with what to try.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import explain
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> tumour = torch.zeros(16, 16, dtype=torch.bool)
        >>> tumour[4:8, 4:8] = True
        >>> result = explain(net, torch.randn(1, 16, 16), 2, tumour)
        >>> result.heatmap.shape, result.layer
        ((16, 16), '1')
    """
    if score is not None:  # the name before 0.2
        warnings.warn("explain(score=...) is now explain(output=...)", DeprecationWarning, stacklevel=2)
        output = score
    if window is not None and not isinstance(window, Tiling):  # 0.1 took sizes with overlap= and blend=
        warnings.warn(
            "explain(window=sizes, overlap=..., blend=...) is deprecated: "
            "pass window=Tiling.monai(sizes, overlap, mode)",
            DeprecationWarning,
            stacklevel=2,
        )
    _check_choice("output", output, OUTPUTS)
    _check_choice("head", head, HEADS)
    return explain_target(
        model,
        image,
        Target(int(target_class), output, head),
        mask=mask,
        layer=layer,
        method=method,
        tiling=window,
        overlap=overlap,
        blend=blend,
        batch_size=batch_size,
        device=device,
        mixed_precision=mixed_precision,
        progress=progress,
        cancel=cancel,
        skip_windows=skip_windows,
        score_cam_channels=score_cam_channels,
    )


def explain_target(
    model: nn.Module,
    image,
    target,
    mask=None,
    layer: str | None = None,
    method: str = "seg-hires-grad-cam",
    tiling=None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    batch_size: int = 1,
    device=None,
    mixed_precision: bool = False,
    progress=None,
    cancel=None,
    skip_windows: bool = True,
    score_cam_channels: int | None = None,
) -> CamResult:
    """``explain`` for a target object (``passes.Target``, ``passes.FunctionTarget``): what
    ``explain()`` and the ``Explainer`` run. ``tiling``: a Tiling, window sizes (MONAI's
    grid with ``overlap`` and ``blend``), or None for one pass over the whole image."""
    window = tiling
    cam_method = get_method(method)
    chosen_device = resolve_device(device)
    with placed_on(model, chosen_device) as compute_device:
        if window is None:
            image_batch = as_image_batch(image, model, compute_device)
            mask_tensor = None if mask is None else as_mask(mask, compute_device)
            layer_name = resolve_layer(model, image_batch, layer)
            module = find_layer(model, layer_name, image_batch)
            with evaluation_mode(model), autocast(compute_device, mixed_precision):
                if cam_method.network_map is not None:
                    _check_mask_shape(mask_tensor, tuple(image_batch.shape[2:]))
                    raw, score_value = cam_method.network_map(
                        model, module, layer_name, image_batch, target, mask_tensor, batch_size, score_cam_channels
                    )
                else:
                    raw, score_value = _explain_whole_image(
                        model, module, layer_name, image_batch, target, mask_tensor, cam_method
                    )
            raw_grid = "layer"
        else:
            check_windowed(cam_method)
            image_batch = as_image_batch(image, model, torch.device("cpu"))
            mask_tensor = None if mask is None else as_mask(mask, torch.device("cpu"))
            tiling = as_tiling(window, overlap, blend, image_batch.dim() - 2)
            probe = _window_probe(image_batch, tiling.window)
            layer_name = resolve_layer(model, probe, layer)
            module = find_layer(model, layer_name, probe)
            with evaluation_mode(model), autocast(compute_device, mixed_precision):
                raw, score_value, raw_grid = explain_by_windows(
                    model,
                    module,
                    layer_name,
                    image_batch,
                    target,
                    mask_tensor,
                    cam_method,
                    tiling=tiling,
                    batch_size=batch_size,
                    device=compute_device,
                    progress=progress,
                    cancel=cancel,
                    skip_windows=skip_windows,
                )
    raw = raw.float()
    heatmap = upsample_to(raw.clamp(min=0), tuple(image_batch.shape[2:]))
    if progress is not None and window is None:
        progress(1.0, "done")
    return CamResult(
        raw=raw.cpu().numpy(),
        heatmap=heatmap.cpu().numpy(),
        target_score=float(score_value),
        method=method,
        layer=layer_name,
        target_class=target.target_class,
        raw_grid=raw_grid,
    )


def _explain_whole_image(model, module, layer_name, image_batch, target, mask_tensor, cam_method):
    def upstream(logits):
        _check_mask_shape(mask_tensor, tuple(logits.shape[2:]))
        return target.value_and_gradient(logits, mask_tensor)

    activations, gradients, score_value = forward_backward(model, module, layer_name, image_batch, upstream)
    return cam_method.raw_map(activations[0].float(), gradients[0].float()), score_value


def _check_mask_shape(mask_tensor, output_shape: tuple[int, ...]) -> None:
    if mask_tensor is not None and tuple(mask_tensor.shape) != output_shape:
        raise ExplainInputError(
            f"The mask has shape {tuple(mask_tensor.shape)} but the network's output grid is "
            f"{output_shape}: resample the segment onto the image the network sees."
        )


def _window_probe(image_batch: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """A zero tensor shaped like one window, for choosing and checking the layer."""
    return image_batch.new_zeros((1, image_batch.shape[1], *window))


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExplainInputError(f"Unknown {what} {value!r}: choose one of {', '.join(choices)}.")
