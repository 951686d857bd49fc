"""The CAM engine: forward passes, a backward pass from the target score T to the target
layer only, and a registered method that turns activations and gradients into a map.

How the gradient is confined: the forward pass runs without autograd up to the target
layer; a forward hook there swaps the layer's output for a fresh leaf tensor and switches
autograd on for the rest of the network. The graph therefore starts at the target layer,
and ``torch.autograd.grad(logits, leaf, dT/dlogits)`` computes neither parameter gradients
nor anything upstream of the layer. That is the cheapest exact computation of dT/dA.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExplainInputError
from .methods import get_method
from .model_inspection import (
    as_image_batch,
    evaluation_mode,
    find_layer,
    placed_on,
    recommended_layer,
    resolve_device,
)

SCORES = ("logits", "probability")
HEADS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class CamResult:
    """A class activation map for one target.

    ``raw`` is the signed map on the target layer's grid (for sliding windows whose offsets
    do not align with the layer's stride: on the image grid, see ``raw_grid``);
    ``heatmap`` is ReLU(raw) interpolated (bilinear / trilinear, align_corners=False) onto
    the image grid, not normalised; ``score`` is the target score T.
    """

    raw: np.ndarray
    heatmap: np.ndarray
    score: float
    method: str
    layer: str
    target_class: int
    raw_grid: str = "layer"

    @property
    def normalized(self) -> np.ndarray:
        peak = float(self.heatmap.max(initial=0.0))
        return self.heatmap / peak if peak > 0 else np.zeros_like(self.heatmap)


@dataclass(frozen=True)
class Target:
    """What T is: the class, the score (logits or probability) and the head type."""

    target_class: int
    score: str = "logits"
    head: str = "softmax"

    def value_and_gradient(self, logits: torch.Tensor, weight: torch.Tensor | None):
        """T = sum over voxels of weight * score_c, and dT/dlogits, for (B, K, *spatial)
        logits that are treated as constants (no graph is kept)."""
        classes = logits.shape[1]
        if not 0 <= self.target_class < classes:
            raise ExplainInputError(
                f"Target class {self.target_class} does not exist: the network has {classes} output "
                f"channels, so choose 0..{classes - 1}."
            )
        constant = logits.detach().float().requires_grad_(True)
        with torch.enable_grad():
            if self.score == "logits":
                values = constant[:, self.target_class]
            else:
                values = class_probability(constant, self.target_class, self.head)
            if weight is not None:
                values = values * weight.to(values.dtype)
            target = values.sum()
            (gradient,) = torch.autograd.grad(target, constant)
        return target.detach(), gradient


def class_probability(logits: torch.Tensor, target_class: int, head: str) -> torch.Tensor:
    """(B, *spatial) probability of the class: softmax over classes, or the sigmoid of a region."""
    if head == "softmax":
        return torch.softmax(logits, dim=1)[:, target_class]
    return torch.sigmoid(logits[:, target_class])


def explain(
    model: nn.Module,
    image,
    target_class: int,
    mask=None,
    layer: str | None = None,
    method: str = "seg-hires-grad-cam",
    score: str = "logits",
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
) -> CamResult:
    """Explain T = sum over ``mask`` of the class-``target_class`` score at ``layer``.

    ``image``: (C, *spatial) or (1, C, *spatial), 2D or 3D, array or tensor.
    ``mask``: boolean array over the output's spatial shape; None means the whole image.
    ``score``: "logits" or "probability" (softmax over classes for a ``head="softmax"``
    network, sigmoid of the channel for ``head="sigmoid"`` region or multi-label heads).
    ``window``: run the network window by window (MONAI's sliding-window grid, ``overlap``,
    ``blend`` "gaussian" or "constant", ``batch_size`` windows at a time) and explain the
    blended output exactly; a ``Tiling`` instead of sizes brings its own grid and blend
    (nnU-Net's); None runs one pass over the whole image.
    ``device``: None follows the model; "auto" picks CUDA, then MPS, then the CPU.
    ``progress(fraction, message)`` is called as windows finish; ``cancel`` (anything with
    ``is_set()``, e.g. a threading.Event) stops the run with ExplainCancelled.
    ``score_cam_channels``: Seg-Score CAM only, explain just this many channels (those with
    the largest activation over M) to save forward passes; ``batch_size`` masked inputs
    run at a time.
    The model is evaluated in eval mode and left exactly as it was.
    """
    cam_method = get_method(method)
    _check_choice("score", score, SCORES)
    _check_choice("head", head, HEADS)
    target = Target(int(target_class), score, head)
    chosen_device = resolve_device(device)
    with placed_on(model, chosen_device) as compute_device:
        if window is None:
            image_batch = as_image_batch(image, model, compute_device)
            target_mask = None if mask is None else as_mask(mask, compute_device)
            layer_name = layer if layer is not None else recommended_layer(model, image_batch)
            module = find_layer(model, layer_name, image_batch)
            with evaluation_mode(model), autocast(compute_device, mixed_precision):
                if cam_method.network_map is not None:
                    _check_mask_shape(target_mask, tuple(image_batch.shape[2:]))
                    raw, score_value = cam_method.network_map(
                        model, module, layer_name, image_batch, target, target_mask, batch_size, score_cam_channels
                    )
                else:
                    raw, score_value = _explain_whole_image(
                        model, module, layer_name, image_batch, target, target_mask, cam_method
                    )
            raw_grid = "layer"
        else:
            from .sliding_window import as_tiling, check_windowed, explain_by_windows

            check_windowed(cam_method)
            image_batch = as_image_batch(image, model, torch.device("cpu"))
            target_mask = None if mask is None else as_mask(mask, torch.device("cpu"))
            tiling = as_tiling(window, overlap, blend, image_batch.dim() - 2)
            probe = _window_probe(image_batch, tiling.window)
            layer_name = layer if layer is not None else recommended_layer(model, probe)
            module = find_layer(model, layer_name, probe)
            with evaluation_mode(model), autocast(compute_device, mixed_precision):
                raw, score_value, raw_grid = explain_by_windows(
                    model, module, layer_name, image_batch, target, target_mask, cam_method, tiling=tiling,
                    batch_size=batch_size, device=compute_device, progress=progress, cancel=cancel,
                    skip_windows=skip_windows,
                )  # fmt: skip
    raw = raw.float()
    heatmap = upsample_to(raw.clamp(min=0), tuple(image_batch.shape[2:]))
    if progress is not None and window is None:
        progress(1.0, "done")
    return CamResult(
        raw=raw.cpu().numpy(),
        heatmap=heatmap.cpu().numpy(),
        score=float(score_value),
        method=method,
        layer=layer_name,
        target_class=target.target_class,
        raw_grid=raw_grid,
    )


def _explain_whole_image(model, module, layer_name, image_batch, target, target_mask, cam_method):
    def upstream(logits):
        _check_mask_shape(target_mask, tuple(logits.shape[2:]))
        return target.value_and_gradient(logits, target_mask)

    activations, gradients, score_value = forward_backward(model, module, layer_name, image_batch, upstream)
    return cam_method.raw_map(activations[0].float(), gradients[0].float()), score_value


def _check_mask_shape(target_mask, output_shape: tuple[int, ...]) -> None:
    if target_mask is not None and tuple(target_mask.shape) != output_shape:
        raise ExplainInputError(
            f"The mask has shape {tuple(target_mask.shape)} but the network's output grid is "
            f"{output_shape}: resample the segment onto the image the network sees."
        )


def forward_backward(model, module, layer_name: str, batch: torch.Tensor, upstream):
    """One forward pass and a backward pass from the output to ``module``'s output.

    ``upstream(logits)`` returns (T, dT/dlogits) once the output is known. Returns the
    layer's activations and gradients (batch first, graph freed) and T.
    """
    capture = LayerCapture(layer_name, track_gradient=True)
    with capture.attached(module):
        logits = run_network(model, batch)
        capture.require_activation()
        score_value, output_gradient = upstream(logits)
        gradient = None
        if logits.requires_grad:
            (gradient,) = torch.autograd.grad(
                logits, capture.activation, grad_outputs=output_gradient.to(logits.dtype), allow_unused=True
            )
    if gradient is None:
        raise ExplainInputError(
            f"The output does not depend on layer {layer_name!r} (no gradient path from the "
            "output back to it): choose a layer on the path to the segmentation output."
        )
    return capture.activation.detach(), gradient, score_value


def forward_activations(model, module, layer_name: str, batch: torch.Tensor) -> torch.Tensor:
    """The layer's activations for ``batch`` from a forward pass without autograd."""
    capture = LayerCapture(layer_name, track_gradient=False)
    with capture.attached(module), torch.no_grad():
        run_network(model, batch)
        capture.require_activation()
    return capture.activation


def run_network(model, batch: torch.Tensor) -> torch.Tensor:
    """A forward pass without autograd (hooks may switch it on) that must return logits."""
    grad_was_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(False)
    try:
        logits = model(batch)
    finally:
        torch.set_grad_enabled(grad_was_enabled)
    if not isinstance(logits, torch.Tensor):
        raise ExplainInputError(
            f"The network returns {type(logits).__name__}, not a tensor of logits: wrap it so that "
            "forward() returns the (1, classes, *spatial) logits."
        )
    return logits


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on CUDA when asked; accumulation stays float32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def upsample_to(layer_map: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(layer_map.shape) == spatial_shape:
        return layer_map
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[layer_map.dim()]
    resized = F.interpolate(layer_map[None, None].float(), size=spatial_shape, mode=mode, align_corners=False)
    return resized[0, 0]


class LayerCapture:
    """Forward hook that records the layer's output; with ``track_gradient`` it makes that
    output the root of the autograd graph for the rest of the forward pass."""

    def __init__(self, layer_name: str, track_gradient: bool):
        self.layer_name = layer_name
        self.track_gradient = track_gradient
        self.activation: torch.Tensor | None = None

    @contextlib.contextmanager
    def attached(self, module: nn.Module):
        handle = module.register_forward_hook(self)
        try:
            yield self
        finally:
            handle.remove()

    def require_activation(self) -> None:
        if self.activation is None:
            raise ExplainInputError(
                f"Layer {self.layer_name!r} did not run during the forward pass: choose a layer that the "
                "network uses (list_layers() shows them)."
            )

    def __call__(self, module, inputs, output):
        if self.activation is not None:
            raise ExplainInputError(
                f"Layer {self.layer_name!r} runs more than once per forward pass (shared weights), so "
                "its activation is ambiguous: choose a layer that runs once."
            )
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise ExplainInputError(
                f"Layer {self.layer_name!r} does not return a floating-point tensor: choose a layer "
                "with an image-shaped output (list_layers() shows them)."
            )
        if not self.track_gradient:
            self.activation = output.detach()
            return None
        torch.set_grad_enabled(True)
        self.activation = output.detach().requires_grad_(True)
        # The network may modify the returned tensor in place (ReLU(inplace=True)); a copy
        # keeps the leaf, which the gradient is taken against, intact.
        return self.activation.clone()


def as_mask(mask, device: torch.device) -> torch.Tensor:
    tensor = mask.detach() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    tensor = tensor.to(device) != 0
    if not bool(tensor.any()):
        raise ExplainInputError(
            "The mask is empty: select a segment with at least one voxel, or pass mask=None to explain the whole image."
        )
    return tensor


def check_window(window, spatial_dims: int) -> tuple[int, ...]:
    window = (int(window),) * spatial_dims if np.isscalar(window) else tuple(int(size) for size in window)
    if len(window) != spatial_dims or min(window) < 1:
        raise ExplainInputError(
            f"Window {window} does not fit a {spatial_dims}D image: give {spatial_dims} positive sizes, "
            "e.g. the patch size the network was trained with."
        )
    return window


def _window_probe(image_batch: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """A zero tensor shaped like one window, for choosing and checking the layer."""
    return image_batch.new_zeros((1, image_batch.shape[1], *window))


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExplainInputError(f"Unknown {what} {value!r}: choose one of {', '.join(choices)}.")
