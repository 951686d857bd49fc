"""Maps from several layers fused on the input grid.

Rule: each layer's heatmap L_l = ReLU(S_l) on the input grid is divided by its own maximum,
then the normalised maps are averaged ("mean", the default) or combined by the voxel-wise
maximum ("max"). Normalising first matters: gradient and activation scales differ by
orders of magnitude between layers, so a plain sum would show only one layer. Deep layers
contribute where the network decided, shallow ones add the edges they see.
"""

from __future__ import annotations

import numpy as np

from ..errors import ExplainInputError
from .engine import CamResult, explain

FUSION_RULES = ("mean", "max")


def explain_layers(model, image, target_class: int, layers, mask=None, rule: str = "mean", **options) -> CamResult:
    """``explain`` at each of ``layers`` (same method, target and options), fused by ``rule``.

    The result's ``raw`` and ``heatmap`` are the fused map on the image grid (raw_grid
    "image"); ``layer`` lists the layers joined by "+"."""
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
        score=first.score,
        method=first.method,
        layer="+".join(result.layer for result in results),
        target_class=first.target_class,
        raw_grid="image",
    )
