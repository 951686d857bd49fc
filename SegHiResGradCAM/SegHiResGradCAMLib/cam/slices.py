"""2D networks on 3D volumes, slice by slice (as the paper's own KiTS network is run).

The network sees each slice along the first array axis on its own, so the volume's
logits are the stacked slice logits, and T = sum over M of Y_c splits exactly into the
slices' own targets T_z (M restricted to slice z). Each slice is explained with its own
target and the maps are stacked; slices without M contribute nothing to T and run no
backward pass at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..errors import ExplainInputError
from .engine import CamResult, explain
from .sliding_window import Progress, sliding_window_logits


def _volume(volume) -> torch.Tensor:
    tensor = volume.detach() if isinstance(volume, torch.Tensor) else torch.as_tensor(np.asarray(volume))
    if tensor.dim() != 4:
        raise ExplainInputError(
            f"A 2D network is run slice by slice on a (channels, slices, rows, columns) volume; got shape "
            f"{tuple(tensor.shape)}."
        )
    return tensor.float()


def slice_logits(
    model, volume, window=None, overlap: float = 0.25, mask=None, progress=None, cancel=None, **options
) -> torch.Tensor:
    """(K, slices, rows, columns) logits of a 2D network, slice by slice (sliding windows
    within each slice when ``window`` is given, else the whole slice at once). With
    ``mask`` (M, a boolean volume), only the slices that hold some of it run; the others
    stay zero. ``options``: batch_size, device, blend of ``sliding_window_logits``."""
    volume = _volume(volume)
    window = window if window is not None else tuple(volume.shape[2:])
    chosen = [z for z in range(volume.shape[1]) if mask is None or bool(np.asarray(mask[z]).any())]
    tracker = Progress(len(chosen), progress, cancel)
    logits = None
    for z in chosen:
        tracker.check_cancelled()
        slice_output = sliding_window_logits(model, volume[:, z], window, overlap, **options)
        if logits is None:
            logits = torch.zeros((slice_output.shape[0], volume.shape[1], *slice_output.shape[1:]))
        logits[:, z] = slice_output
        tracker.step(1, "inference")
    if logits is None:
        raise ExplainInputError("No slice to run: the mask is empty.")
    return logits


def explain_slices(
    model,
    volume,
    target_class: int,
    mask=None,
    progress: Callable[[float, str], None] | None = None,
    cancel=None,
    **options,
) -> CamResult:
    """``explain`` on each slice of a (C, slices, rows, columns) volume that holds part of
    M (every slice when ``mask`` is None), with M restricted to that slice, the maps
    stacked along the first axis. T is the sum of the slices' targets. ``options`` are
    those of ``explain`` (method, layer, score, head, window, ...)."""
    volume = _volume(volume)
    mask = None if mask is None else np.asarray(mask, dtype=bool)
    if mask is not None and mask.shape != tuple(volume.shape[1:]):
        raise ExplainInputError(
            f"The mask has shape {mask.shape} but the volume is {tuple(volume.shape[1:])}: put M on the volume's grid."
        )
    if mask is not None and not mask.any():
        raise ExplainInputError("The mask is empty: select a segment with at least one voxel.")
    chosen = [z for z in range(volume.shape[1]) if mask is None or mask[z].any()]
    tracker = Progress(len(chosen), progress, cancel)

    def explain_slice(z):
        tracker.check_cancelled()
        result = explain(model, volume[:, z], target_class, None if mask is None else mask[z], cancel=cancel, **options)
        tracker.step(1, f"slice {z}")
        return result

    first = explain_slice(chosen[0])  # M is not empty, so at least one slice is chosen
    raw = np.zeros((volume.shape[1], *first.raw.shape), dtype=np.float32)
    heatmap = np.zeros((volume.shape[1], *first.heatmap.shape), dtype=np.float32)
    raw[chosen[0]], heatmap[chosen[0]], score = first.raw, first.heatmap, first.target_score
    for z in chosen[1:]:
        result = explain_slice(z)
        raw[z], heatmap[z] = result.raw, result.heatmap
        score += result.target_score
    return CamResult(raw, heatmap, score, first.method, first.layer, first.target_class, first.raw_grid)
