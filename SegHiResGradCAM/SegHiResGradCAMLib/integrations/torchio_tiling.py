"""TorchIO's patch-based inference as a tiling, so that the explanation of a network run with
``GridSampler`` and ``GridAggregator`` is exact for the logits TorchIO's aggregator produces.

The geometry follows TorchIO (read from its source, not imported: TorchIO is only needed to
run the network the TorchIO way, not to explain it):

- ``GridSampler(subject, patch_size, patch_overlap, padding_mode)``: with a padding mode the
  volume is first padded by half the overlap on each side; patches start every
  ``patch_size - patch_overlap`` voxels from 0, the last one moved back to end at the border;
  the locations are taken in sorted order.
- ``GridAggregator(sampler, overlap_mode)``: "average" blends the overlapping patches with equal
  weights, "hann" with a Hann window (``hann_window(size + 2)`` without its two zero ends, per
  axis); "crop" keeps each patch's centre (half the overlap cut from each side, except at an
  unpadded volume's border) and writes it over what earlier patches wrote, so each voxel
  takes the logits of the last patch whose centre covers it. The engine blends with weights,
  so "crop" becomes a 0/1 weight per patch that is 1 exactly where that patch is the last writer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..cam.sliding_window import Tiling, WeightAt, WindowGrid, pad_to_grid
from ..errors import ExplainInputError

OVERLAP_MODES = ("crop", "average", "hann")
# TorchIO's padding modes (numpy's names, or a number for a constant) that torch pads alike.
PADDING_MODES = {"constant": "constant", "edge": "replicate", "reflect": "reflect", "wrap": "circular"}


@dataclass(frozen=True)
class TorchIOTiling(Tiling):
    """TorchIO's ``GridSampler`` + ``GridAggregator`` tiling (build it with ``TorchIOTiling.torchio``).

    Attributes:
        patch_overlap: the overlap in voxels per axis (even, as TorchIO requires).
        overlap_mode: the aggregator's "crop", "average" or "hann".
        volume_padding: the sampler's ``padding_mode``: None (no padding), a number, or one of
            "constant", "edge", "reflect", "wrap".
    """

    patch_overlap: tuple[int, ...] = ()
    overlap_mode: str = "crop"
    volume_padding: str | float | None = None

    @classmethod
    def torchio(cls, patch_size, patch_overlap=0, overlap_mode: str = "crop", padding_mode=None) -> TorchIOTiling:
        """The tiling of ``GridSampler(subject, patch_size, patch_overlap, padding_mode)`` and
        ``GridAggregator(sampler, overlap_mode)``, in TorchIO's argument names.

        Args:
            patch_size: one number or one per axis (3D, as TorchIO).
            patch_overlap: one even number or one per axis, below the patch size.
            overlap_mode: "crop" (TorchIO's default), "average" or "hann".
            padding_mode: None, a number, "constant", "edge", "reflect" or "wrap".

        Returns:
            A ``TorchIOTiling``.

        Raises:
            ExplainInputError: a setting TorchIO refuses, or a padding mode torch cannot copy.

        Example:
            >>> from SegHiResGradCAMLib.integrations.torchio_tiling import TorchIOTiling
            >>> tiling = TorchIOTiling.torchio(16, patch_overlap=4, overlap_mode="hann")
            >>> len(tiling.grid((28, 16, 16)).starts)
            2
        """
        size = _three(patch_size, "patch_size")
        overlap = _three(patch_overlap, "patch_overlap")
        if any(value % 2 for value in overlap) or any(o >= s for o, s in zip(overlap, size, strict=True)):
            raise ExplainInputError(
                f"patch_overlap {overlap} must be even and smaller than patch_size {size}, as TorchIO requires."
            )
        if overlap_mode not in OVERLAP_MODES:
            raise ExplainInputError(f"overlap_mode must be one of {', '.join(OVERLAP_MODES)}; got {overlap_mode!r}.")
        if padding_mode is not None and not isinstance(padding_mode, int | float) and padding_mode not in PADDING_MODES:
            raise ExplainInputError(
                f"padding_mode {padding_mode!r} cannot be reproduced here: use None, a number, "
                f"or one of {', '.join(PADDING_MODES)}."
            )
        return cls(size, 0.0, "constant", patch_overlap=overlap, overlap_mode=overlap_mode, volume_padding=padding_mode)

    def grid(self, image_shape: tuple[int, ...]) -> WindowGrid:
        if len(image_shape) != 3:
            raise ExplainInputError(f"TorchIO tiles 3D images; this one has shape {tuple(image_shape)}.")
        border = [overlap // 2 if self.volume_padding is not None else 0 for overlap in self.patch_overlap]
        padded = [size + 2 * half for size, half in zip(image_shape, border, strict=True)]
        if any(patch > size for patch, size in zip(self.window, padded, strict=True)):
            raise ExplainInputError(
                f"The image {tuple(image_shape)} (padded: {tuple(padded)}) is smaller than the patch {self.window}: "
                "TorchIO refuses it too; use a smaller patch size."
            )
        starts_per_axis = []
        for size, patch, overlap in zip(padded, self.window, self.patch_overlap, strict=True):
            starts = list(range(0, size - patch + 1, patch - overlap))
            starts += [size - patch] if starts[-1] != size - patch else []
            starts_per_axis.append(starts)
        padding = tuple((half, half) for half in border)
        return WindowGrid(tuple(image_shape), self.window, padding, tuple(sorted(itertools.product(*starts_per_axis))))

    def weight(self) -> torch.Tensor:
        if self.overlap_mode != "hann":
            return torch.ones(self.window)
        weight = torch.ones(())
        for size in self.window:
            weight = weight.unsqueeze(-1) * torch.hann_window(size + 2, periodic=False)[1:-1]
        return weight

    def window_weights(self, grid: WindowGrid) -> WeightAt:
        if self.overlap_mode != "crop":
            return super().window_weights(grid)
        writer = torch.full(grid.padded_shape, -1)  # the index of the last patch writing each voxel
        for index, start in enumerate(grid.starts):
            writer[self._kept_centre(grid, start)] = index
        order = {start: index for index, start in enumerate(grid.starts)}
        return lambda start: (writer[grid.slices(start)] == order[start]).float()

    def _kept_centre(self, grid: WindowGrid, start: tuple[int, ...]) -> tuple[slice, ...]:
        padded = self.volume_padding is not None
        kept = []
        for begin, patch, overlap, size in zip(start, self.window, self.patch_overlap, grid.padded_shape, strict=True):
            cut_before = overlap // 2 if padded or begin > 0 else 0
            cut_after = overlap // 2 if padded or begin + patch != size else 0
            kept.append(slice(begin + cut_before, begin + patch - cut_after))
        return tuple(kept)

    def pad(self, image_batch: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
        if self.volume_padding is None or (isinstance(self.volume_padding, str) and self.volume_padding == "constant"):
            return pad_to_grid(image_batch, grid, "constant", 0.0)
        if isinstance(self.volume_padding, int | float):
            return pad_to_grid(image_batch, grid, "constant", float(self.volume_padding))
        return pad_to_grid(image_batch, grid, PADDING_MODES[self.volume_padding])


def _three(value, name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int) else tuple(value)
    if len(values) != 3 or not all(isinstance(v, int) and v >= 0 for v in values):
        raise ExplainInputError(f"{name} must be one whole number or three; got {value!r}.")
    return (int(values[0]), int(values[1]), int(values[2]))
