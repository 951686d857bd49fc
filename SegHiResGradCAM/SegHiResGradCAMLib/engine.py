"""The CAM engine: one forward pass, a backward pass from the target score T to the target
layer only, and a registered method that turns activations and gradients into a map.

How the gradient is confined: the forward pass runs without autograd up to the target
layer; a forward hook there swaps the layer's output for a fresh leaf tensor and switches
autograd on for the rest of the network. The graph therefore starts at the target layer,
and ``torch.autograd.grad(T, leaf)`` computes neither parameter gradients nor anything
upstream of the layer. That is the cheapest exact computation of dT/dA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExplainInputError
from .methods import get_method
from .model_inspection import as_image_batch, evaluation_mode, find_layer, recommended_layer

SCORES = ("logits", "probability")
HEADS = ("softmax", "sigmoid")


@dataclass(frozen=True)
class CamResult:
    """A class activation map for one target.

    ``raw`` is the signed map on the target layer's grid; ``heatmap`` is ReLU(raw)
    interpolated (bilinear / trilinear, align_corners=False) onto the image grid, not
    normalised; ``score`` is the target score T.
    """

    raw: np.ndarray
    heatmap: np.ndarray
    score: float
    method: str
    layer: str
    target_class: int

    @property
    def normalized(self) -> np.ndarray:
        peak = float(self.heatmap.max(initial=0.0))
        return self.heatmap / peak if peak > 0 else np.zeros_like(self.heatmap)


@dataclass
class LayerGradients:
    """Activations A and gradients G = dT/dA of one forward/backward pass, batch removed."""

    activations: torch.Tensor
    gradients: torch.Tensor
    score: torch.Tensor
    output_shape: tuple[int, ...]


def explain(
    model: nn.Module,
    image,
    target_class: int,
    mask=None,
    layer: str | None = None,
    method: str = "seg-hires-grad-cam",
    score: str = "logits",
    head: str = "softmax",
) -> CamResult:
    """Explain ``T = sum over mask of the class-``target_class`` score`` at ``layer``.

    ``image``: (C, *spatial) or (1, C, *spatial), 2D or 3D, array or tensor.
    ``mask``: boolean array over the output's spatial shape; None means the whole image.
    ``score``: "logits" or "probability" (softmax over classes for a ``head="softmax"``
    network, sigmoid of the channel for ``head="sigmoid"`` region or multi-label heads).
    The model is evaluated in eval mode and left exactly as it was.
    """
    cam_method = get_method(method)
    _check_choice("score", score, SCORES)
    _check_choice("head", head, HEADS)
    image_batch = as_image_batch(image, model)
    target_mask = None if mask is None else _as_mask(mask, image_batch.device)
    layer_name = layer if layer is not None else recommended_layer(model, image_batch)
    module = find_layer(model, layer_name, image_batch)

    def target_weight(output_shape):
        if target_mask is not None and tuple(target_mask.shape) != output_shape:
            raise ExplainInputError(
                f"The mask has shape {tuple(target_mask.shape)} but the network's output grid is "
                f"{output_shape}: resample the segment onto the image the network sees."
            )
        return target_mask

    grads = layer_gradients(model, module, layer_name, image_batch, target_class, target_weight, score, head)
    raw = cam_method.raw_map(grads.activations, grads.gradients)
    heatmap = upsample_to(raw.clamp(min=0), tuple(image_batch.shape[2:]))
    return CamResult(
        raw=raw.float().cpu().numpy(),
        heatmap=heatmap.float().cpu().numpy(),
        score=float(grads.score),
        method=method,
        layer=layer_name,
        target_class=int(target_class),
    )


def layer_gradients(
    model: nn.Module,
    module: nn.Module,
    layer_name: str,
    image_batch: torch.Tensor,
    target_class: int,
    target_weight,
    score: str,
    head: str,
) -> LayerGradients:
    """One forward pass and a backward pass from T to ``module``'s output.

    ``target_weight(output_spatial_shape)`` returns the per-voxel weights of T (a boolean
    mask, float weights, or None for all voxels) once the output grid is known.
    """
    capture = _LayerCapture(layer_name)
    handle = module.register_forward_hook(capture)
    grad_was_enabled = torch.is_grad_enabled()
    try:
        with evaluation_mode(model):
            torch.set_grad_enabled(False)
            logits = model(image_batch)
            torch.set_grad_enabled(grad_was_enabled)
        if capture.leaf is None:
            raise ExplainInputError(
                f"Layer {layer_name!r} did not run during the forward pass: choose a layer that the "
                "network uses (list_layers() shows them)."
            )
        if not isinstance(logits, torch.Tensor):
            raise ExplainInputError(
                f"The network returns {type(logits).__name__}, not a tensor of logits: wrap it so that "
                "forward() returns the (1, classes, *spatial) logits."
            )
        classes = logits.shape[1]
        if not 0 <= target_class < classes:
            raise ExplainInputError(
                f"Target class {target_class} does not exist: the network has {classes} output "
                f"channels, so choose 0..{classes - 1}."
            )
        weight = target_weight(tuple(logits.shape[2:]))
        with torch.enable_grad():
            target = target_score(logits, target_class, weight, score, head)
            gradient = None
            if target.requires_grad:
                (gradient,) = torch.autograd.grad(target, capture.leaf, allow_unused=True)
        if gradient is None:
            raise ExplainInputError(
                f"The output does not depend on layer {layer_name!r} (no gradient path from the "
                "output back to it): choose a layer on the path to the segmentation output."
            )
        return LayerGradients(capture.leaf.detach()[0], gradient[0], target.detach(), tuple(logits.shape[2:]))
    finally:
        torch.set_grad_enabled(grad_was_enabled)
        handle.remove()


def target_score(logits: torch.Tensor, target_class: int, weight, score: str, head: str) -> torch.Tensor:
    """T = sum over voxels of weight * (class-c logit or probability)."""
    if score == "logits":
        values = logits[0, target_class]
    elif head == "softmax":
        values = torch.softmax(logits[0], dim=0)[target_class]
    else:
        values = torch.sigmoid(logits[0, target_class])
    if weight is None:
        return values.sum()
    return (values * weight.to(values.dtype)).sum()


def upsample_to(layer_map: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(layer_map.shape) == spatial_shape:
        return layer_map
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[layer_map.dim()]
    resized = F.interpolate(layer_map[None, None].float(), size=spatial_shape, mode=mode, align_corners=False)
    return resized[0, 0]


class _LayerCapture:
    """Forward hook that makes the layer's output the root of the autograd graph."""

    def __init__(self, layer_name: str):
        self.layer_name = layer_name
        self.leaf: torch.Tensor | None = None

    def __call__(self, module, inputs, output):
        if self.leaf is not None:
            raise ExplainInputError(
                f"Layer {self.layer_name!r} runs more than once per forward pass (shared weights), so "
                "its activation is ambiguous: choose a layer that runs once."
            )
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            raise ExplainInputError(
                f"Layer {self.layer_name!r} does not return a floating-point tensor: choose a layer "
                "with an image-shaped output (list_layers() shows them)."
            )
        torch.set_grad_enabled(True)
        self.leaf = output.detach().requires_grad_(True)
        # The network may modify the returned tensor in place (ReLU(inplace=True)); a copy
        # keeps the leaf, which the gradient is taken against, intact.
        return self.leaf.clone()


def _as_mask(mask, device: torch.device) -> torch.Tensor:
    tensor = mask.detach() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    tensor = tensor.to(device) != 0
    if not bool(tensor.any()):
        raise ExplainInputError(
            "The mask is empty: select a segment with at least one voxel, or pass mask=None to explain the whole image."
        )
    return tensor


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ExplainInputError(f"Unknown {what} {value!r}: choose one of {', '.join(choices)}.")
