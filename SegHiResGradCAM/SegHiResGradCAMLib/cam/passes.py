"""The passes every method needs: the target score T, the layer capture, and one forward
pass with a backward pass from T to the target layer only.

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

from ..errors import ExplainInputError


@dataclass(frozen=True)
class Target:
    """What T is: the class, the output it sums (logits or probability) and the head type."""

    target_class: int
    output: str = "logits"
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
            if self.output == "logits":
                values = constant[:, self.target_class]
            else:
                values = class_probability(constant, self.target_class, self.head)
            if weight is not None:
                values = values * weight.to(values.dtype)
            target = values.sum()
            (gradient,) = torch.autograd.grad(target, constant)
        return target.detach(), gradient


@dataclass(frozen=True)
class FunctionTarget:
    """T = ``function(logits)``, any differentiable scalar of the (1, K, *spatial) logits
    (blended, under sliding windows). Not linear in the logits in general, so the windowed
    computation takes dT/dlogits on the blended logits, as for probabilities."""

    function: Callable[[torch.Tensor], torch.Tensor]
    target_class: None = None
    output: str = "function"
    head: str = "softmax"

    def value_and_gradient(self, logits: torch.Tensor, weight: torch.Tensor | None):
        constant = logits.detach().float().requires_grad_(True)
        with torch.enable_grad():
            value = self.function(constant)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                returned = type(value).__name__ + (str(tuple(value.shape)) if isinstance(value, torch.Tensor) else "")
                raise ExplainInputError(
                    "The target's function must return one number (a scalar tensor T) computed "
                    f"from the logits; it returned {returned}."
                )
            if not value.requires_grad:
                raise ExplainInputError(
                    "The target's function returned a T that does not depend on the logits it "
                    "was given: compute T from them."
                )
            (gradient,) = torch.autograd.grad(value.reshape(()), constant, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(constant)
        return value.detach().reshape(()), gradient


def class_probability(logits: torch.Tensor, target_class: int, head: str) -> torch.Tensor:
    """(B, *spatial) probability of the class: softmax over classes, or the sigmoid of a region."""
    if head == "softmax":
        return torch.softmax(logits, dim=1)[:, target_class]
    return torch.sigmoid(logits[:, target_class])


def forward_backward(model, module, layer_name: str, batch: torch.Tensor, upstream):
    """One forward pass and a backward pass from the output to ``module``'s output.

    ``upstream(logits)`` returns (T, dT/dlogits) once the output is known. Returns the
    layer's activations and gradients (batch first, graph freed) and T.
    """
    capture = LayerCapture(layer_name, track_gradient=True)
    with capture.attached(module):
        logits = run_network(model, batch)
        activation = capture.require_activation()
        score_value, output_gradient = upstream(logits)
        gradient = None
        if logits.requires_grad:
            (gradient,) = torch.autograd.grad(
                logits, activation, grad_outputs=output_gradient.to(logits.dtype), allow_unused=True
            )
    if gradient is None:
        raise ExplainInputError(
            f"The output does not depend on layer {layer_name!r} (no gradient path from the "
            "output back to it): choose a layer on the path to the segmentation output."
        )
    return activation.detach(), gradient, score_value


def forward_activations(model, module, layer_name: str, batch: torch.Tensor) -> torch.Tensor:
    """The layer's activations for ``batch`` from a forward pass without autograd."""
    capture = LayerCapture(layer_name, track_gradient=False)
    with capture.attached(module), torch.no_grad():
        run_network(model, batch)
        return capture.require_activation()


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


def spread_to(layer_map: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """A signed map on a finer grid with its sum kept: each layer voxel's value spread evenly
    over the image voxels it covers (nearest neighbour, divided by their number), so that a
    Seg-HiRes-Grad CAM map still sums to T. Exact where the grids' sizes have integer ratios
    (a network's strides); otherwise the nearest-neighbour map is scaled to the same sum."""
    if tuple(layer_map.shape) == tuple(spatial_shape):
        return layer_map.float()
    spread = F.interpolate(layer_map[None, None].float(), size=tuple(spatial_shape), mode="nearest")[0, 0]
    return spread * (layer_map.numel() / spread.numel())


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

    def require_activation(self) -> torch.Tensor:
        if self.activation is None:
            raise ExplainInputError(
                f"Layer {self.layer_name!r} did not run during the forward pass: choose a layer that the "
                "network uses (list_layers() shows them)."
            )
        return self.activation

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
    window = (
        (int(window),) * spatial_dims
        if isinstance(window, int | float | np.number)
        else tuple(int(size) for size in window)
    )
    if len(window) != spatial_dims or min(window) < 1:
        raise ExplainInputError(
            f"Window {window} does not fit a {spatial_dims}D image: give {spatial_dims} positive sizes, "
            "e.g. the patch size the network was trained with."
        )
    return window
