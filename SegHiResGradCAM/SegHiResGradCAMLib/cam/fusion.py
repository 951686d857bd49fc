"""Maps from several layers fused on the input grid.

Rule: each layer's heatmap L_l = ReLU(S_l) on the input grid is divided by its own maximum,
then the normalised maps are averaged ("mean", the default) or combined by the voxel-wise
maximum ("max"). Normalising first matters: gradient and activation scales differ by
orders of magnitude between layers, so a plain sum would show only one layer. Deep layers
contribute where the network decided, shallow ones add the edges they see.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import ExplainInputError
from .engine import CamResult, explain
from .model_inspection import as_image_batch, decoder_stages, list_layers
from .passes import check_window

FUSION_RULES = ("mean", "max")


def explain_layers(model, image, target_class: int, layers, mask=None, rule: str = "mean", **options) -> CamResult:
    """``explain`` at each of ``layers`` (same method, target and options), fused on the image grid.

    Each layer's heatmap is divided by its own maximum first (layers differ in scale by orders
    of magnitude).

    Args:
        model: the segmentation network.
        image: (C, *spatial) or (1, C, *spatial).
        target_class: the output channel c.
        layers: dotted module names (``list_layers`` shows them).
        mask: M; None: the whole image.
        rule: "mean" or "max" (voxel-wise).
        **options: ``explain``'s other options (method, output, head, window, device, ...).

    Returns:
        A ``CamResult`` whose ``raw`` and ``heatmap`` are the fused map (``raw_grid`` "image")
        and whose ``layer`` joins the layers with "+".

    Raises:
        ExplainInputError: no layer, or an unknown rule.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import explain_layers
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> tumour = torch.zeros(16, 16, dtype=torch.bool)
        >>> tumour[4:8, 4:8] = True
        >>> explain_layers(net, torch.randn(1, 16, 16), 2, ["0", "1"], tumour).layer
        '0+1'
    """
    layers = list(layers)
    if not layers:
        raise ExplainInputError("Give at least one layer to fuse (list_layers() shows them).")
    if rule not in FUSION_RULES:
        raise ExplainInputError(f"Unknown fusion rule {rule!r}: choose one of {', '.join(FUSION_RULES)}.")
    results = [explain(model, image, target_class, mask, layer=layer, **options) for layer in layers]
    maps = np.stack([result.normalized for result in results])
    fused = maps.mean(axis=0) if rule == "mean" else maps.max(axis=0)
    first = results[0]
    return CamResult(
        raw=fused,
        heatmap=fused,
        target_score=first.target_score,
        method=first.method,
        layer="+".join(result.layer for result in results),
        target_class=first.target_class,
        raw_grid="image",
    )


def atlas_layers(model, image_shape) -> list[str]:
    """The layer atlas's layers: one per decoder stage (``decoder_stages``), coarsest first,
    for images (or windows) of ``image_shape`` ((C, *spatial))."""
    return [layer.name for layer in decoder_stages(list_layers(model, image_shape))]


def layer_atlas(model, image, target_class: int, mask=None, layers=None, **options) -> dict[str, CamResult]:
    """``explain`` at one layer per decoder stage (or at ``layers``), coarsest first: how the
    explanation changes with depth. ``options`` are those of ``explain`` (method, window, ...);
    with a window, the stages are found on one window's shape."""
    if layers is None:
        batch = as_image_batch(image, model, torch.device("cpu"))
        window = options.get("window")
        spatial = (
            tuple(batch.shape[2:])
            if window is None
            else check_window(getattr(window, "window", window), batch.dim() - 2)
        )
        layers = atlas_layers(model, (batch.shape[1], *spatial))
    return {layer: explain(model, image, target_class, mask, layer=layer, **options) for layer in layers}
