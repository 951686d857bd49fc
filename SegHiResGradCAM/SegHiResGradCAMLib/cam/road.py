"""ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods") for a segmentation target.

Deletion replaces the hottest voxels by a baseline; the edge between the replaced and the
kept voxels then has the shape of the map, and a network can read that shape (the class
leaks through the mask). ROAD removes voxels by *noisy linear imputation* instead: each
removed voxel becomes the mean of its face neighbours, solved jointly for all removed voxels
with the kept ones fixed (a discrete Laplace equation), plus a little Gaussian noise. The
filled region carries no edge and no information beyond its surroundings.

Two curves of P (the mean class probability over M) as the fraction of removed voxels grows:
most relevant first (a faithful map makes P fall fast: a small area) and least relevant first
(P stays: a large area). Ties in the map (large zero regions) are broken at random, so that
"equally irrelevant" voxels are removed scattered rather than as a slab in voxel order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch

# Noise added to the imputed voxels, as a share of each channel's standard deviation (ROAD
# adds 0.01 to images normalised to unit spread).
IMPUTATION_NOISE = 0.01
# Ties every removed voxel to the image mean, very weakly, so that the system stays
# solvable when a removed region touches no kept voxel (e.g. everything removed).
ANCHOR_WEIGHT = 1e-6


def _neighbour_system(removed: np.ndarray):
    """The Laplace system over the removed voxels: (matrix, rows and flat positions of the
    kept neighbours that feed the right-hand side)."""
    positions = np.flatnonzero(removed)
    count = positions.size
    unknown_index = np.full(removed.size, -1)
    unknown_index[positions] = np.arange(count)
    coordinates = np.unravel_index(positions, removed.shape)
    strides = np.cumprod((*removed.shape[1:], 1)[::-1])[::-1]
    degree = np.full(count, ANCHOR_WEIGHT)
    coupled_rows, coupled_columns, known_rows, known_positions = [], [], [], []
    for axis, size in enumerate(removed.shape):
        for step in (-1, 1):
            inside = (coordinates[axis] + step >= 0) & (coordinates[axis] + step < size)
            rows = np.flatnonzero(inside)
            neighbours = positions[inside] + step * strides[axis]
            degree[rows] += 1
            columns = unknown_index[neighbours]
            unknown = columns >= 0
            coupled_rows.append(rows[unknown])
            coupled_columns.append(columns[unknown])
            known_rows.append(rows[~unknown])
            known_positions.append(neighbours[~unknown])
    rows, columns = np.concatenate(coupled_rows), np.concatenate(coupled_columns)
    matrix = scipy.sparse.csr_matrix(
        (
            np.concatenate([degree, -np.ones(rows.size)]),
            (np.concatenate([np.arange(count), rows]), np.concatenate([np.arange(count), columns])),
        ),
        shape=(count, count),
    )
    return matrix, np.concatenate(known_rows), np.concatenate(known_positions)


def _solve(matrix, right_hand_side: np.ndarray) -> np.ndarray:
    # Symmetric positive definite: conjugate gradients with a diagonal preconditioner take
    # a fraction of a second where a direct solve takes several.
    preconditioner = scipy.sparse.diags(1.0 / matrix.diagonal())
    solution, info = scipy.sparse.linalg.cg(matrix, right_hand_side, rtol=1e-8, M=preconditioner)
    return solution if info == 0 else scipy.sparse.linalg.spsolve(matrix.tocsc(), right_hand_side)


def noisy_linear_imputation(image, removed, noise: float = IMPUTATION_NOISE, seed: int = 0) -> torch.Tensor:
    """``image`` (C, *spatial) with the ``removed`` voxels (a boolean spatial array) filled
    by the mean of their face neighbours, solved jointly, plus Gaussian noise of ``noise``
    times each channel's standard deviation. Kept voxels are returned unchanged."""
    values = np.asarray(image, dtype=np.float64)
    removed = np.asarray(removed, dtype=bool)
    filled = values.copy()
    if not removed.any():
        return torch.from_numpy(filled.astype(np.float32))
    matrix, known_rows, known_positions = _neighbour_system(removed)
    generator = np.random.default_rng(seed)
    for channel, flat in zip(filled, values.reshape(len(values), -1), strict=True):
        kept_sum = np.bincount(known_rows, weights=flat[known_positions], minlength=matrix.shape[0])
        right_hand_side = kept_sum + ANCHOR_WEIGHT * flat.mean()
        solution = _solve(matrix, right_hand_side)
        channel[removed] = solution + generator.normal(0.0, noise * flat.std(), solution.size)
    return torch.from_numpy(filled.astype(np.float32))


def relevance_order(heatmap, seed: int = 0) -> np.ndarray:
    """Flat voxel positions from the most to the least relevant; ties in random order."""
    heatmap = np.asarray(heatmap, dtype=np.float64).ravel()
    tie_breaker = np.random.default_rng(seed).random(heatmap.size)
    return np.lexsort((tie_breaker, -heatmap))


def removal_by_imputation(image, heatmap, noise: float = IMPUTATION_NOISE):
    """Two functions of a fraction f: the image with the f most relevant voxels removed by
    noisy linear imputation, and with the f least relevant removed."""
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    spatial = tuple(image.shape[1:])
    order = relevance_order(heatmap)

    def remover(ranked: np.ndarray) -> Callable[[float], torch.Tensor]:
        def removed_image(fraction: float) -> torch.Tensor:
            removed = np.zeros(order.size, dtype=bool)
            removed[ranked[: round(fraction * order.size)]] = True
            return noisy_linear_imputation(image, removed.reshape(spatial), noise)

        return removed_image

    return remover(order), remover(order[::-1])
