"""Numbers that compare explanations, not just pictures (torch and numpy only).

- Localisation: the share of the positive heatmap mass inside M, inside anatomy regions
  (e.g. the kidney) and outside the body, and whether the maximum lies inside M.
- Faithfulness: deletion and insertion curves. The voxels are ranked by the heatmap; the
  top fraction f is replaced by a baseline (deletion) or copied from the image into the
  baseline (insertion), and the probability target P = mean over M of the class
  probability is tracked. Areas are normalised by the fraction range (the mean of P over
  the curve): a faithful map has a small deletion area and a large insertion area.
- Sanity (Adebayo et al. 2018): the Spearman rank correlation between the map and the map
  of the same network with re-initialised parameters; a method that depends on what the
  network learned must give a low similarity. Over the whole image, a map whose support
  is fixed by M (a layer just before the output, where G is zero away from M whatever the
  weights) stays similar; the similarity over M's voxels alone shows whether the pattern
  inside M changed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage, stats

from ..errors import ExplainInputError
from .metric_table import metric_rows
from .model_inspection import evaluation_mode
from .passes import class_probability, run_network
from .slices import slice_logits
from .sliding_window import sliding_window_logits

# Fractions of the image's voxels removed or inserted: 0 to 5 % in steps of 0.5 %. A
# kidney tumour fills well under 5 % of an abdominal CT, so the curves resolve where the
# evidence is; pass other fractions for other targets.
DEFAULT_FRACTIONS = tuple(np.round(np.linspace(0.0, 0.05, 11), 6))
BLUR_SIGMA_VOXELS = 5.0


@dataclass(frozen=True)
class Curve:
    fractions: list[float]
    scores: list[float]  # P at each fraction
    area: float  # trapezoidal area over the fractions, divided by their range


@dataclass
class ExplanationMetrics:
    mass_in_target: float
    peak_in_target: bool
    mass_in_regions: dict[str, float] = field(default_factory=dict)
    deletion: Curve | None = None
    insertion: Curve | None = None
    randomisation_similarity: float | None = None
    randomisation_similarity_in_target: float | None = None  # the same, over M's voxels only

    def as_dict(self) -> dict:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        return metric_rows(self.as_dict())


def mass_share(heatmap: np.ndarray, region: np.ndarray) -> float:
    """Share of the positive heatmap mass inside ``region`` (0 when the map is all zero)."""
    positive = np.maximum(np.asarray(heatmap, dtype=np.float64), 0)
    _check_same_shape(positive, region, "region")
    total = positive.sum()
    return float(positive[np.asarray(region, dtype=bool)].sum() / total) if total > 0 else 0.0


def peak_inside(heatmap: np.ndarray, region: np.ndarray) -> bool:
    """Whether the map's maximum (any one of them, when tied) lies inside ``region``."""
    heatmap = np.asarray(heatmap)
    _check_same_shape(heatmap, region, "region")
    return bool(heatmap.max() > 0 and np.asarray(region, dtype=bool)[heatmap == heatmap.max()].any())


def body_mask(hu: np.ndarray, threshold: float = -400.0) -> np.ndarray:
    """The patient's body in a CT array whose first axis is axial (slice by slice): the
    largest connected region above ``threshold`` HU, holes (bowel gas, lungs) filled."""
    inside = np.stack([ndimage.binary_fill_holes(axial) for axial in np.asarray(hu) > threshold])
    components, count = ndimage.label(inside)
    if count == 0:
        return inside
    sizes = ndimage.sum(inside, components, range(1, count + 1))
    return components == (int(np.argmax(sizes)) + 1)


def localisation(heatmap, target_mask, regions: dict[str, np.ndarray] | None = None) -> ExplanationMetrics:
    """Mass inside M and inside each named region (``{"in kidney": ..., "outside body": ~body}``)."""
    target_mask = np.asarray(target_mask, dtype=bool)
    return ExplanationMetrics(
        mass_in_target=mass_share(heatmap, target_mask),
        peak_in_target=peak_inside(heatmap, target_mask),
        mass_in_regions={name: mass_share(heatmap, region) for name, region in (regions or {}).items()},
    )


def faithfulness_curves(
    score: Callable[[torch.Tensor], torch.Tensor],
    image,
    heatmap,
    fractions=DEFAULT_FRACTIONS,
    baseline="blur",
    batch_size: int = 4,
) -> tuple[Curve, Curve]:
    """Deletion and insertion curves of ``heatmap`` (on the image's spatial grid).

    ``score(batch)`` maps (B, C, *spatial) images to B values of P (see
    ``probability_target``). ``baseline``: "blur" (the image smoothed with a Gaussian of
    5 voxels, which removes structure but keeps the overall intensities) or a number in
    the network's input units. Ties in the heatmap are broken by voxel order.
    """
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    heatmap = np.asarray(heatmap, dtype=np.float64)
    _check_same_shape(heatmap, np.empty(image.shape[1:]), "heatmap")
    fractions = [float(value) for value in fractions]
    if len(fractions) < 2 or min(fractions) < 0 or max(fractions) > 1 or fractions != sorted(fractions):
        raise ExplainInputError("Give at least two increasing fractions between 0 and 1, e.g. 0, 0.01, ..., 0.05.")
    reference = _baseline(image, baseline)
    order = torch.from_numpy(np.argsort(-heatmap.ravel(), kind="stable").copy())
    voxels = heatmap.size

    def variant(fraction: float, deleting: bool) -> torch.Tensor:
        chosen = torch.zeros(voxels, dtype=torch.bool)
        chosen[order[: round(fraction * voxels)]] = True
        chosen = chosen.reshape(image.shape[1:])
        return torch.where(chosen, reference, image) if deleting else torch.where(chosen, image, reference)

    curves = []
    for deleting in (True, False):
        values = []
        for first in range(0, len(fractions), batch_size):
            batch = torch.stack([variant(f, deleting) for f in fractions[first : first + batch_size]])
            values += [float(v) for v in score(batch)]
        area = float(np.trapezoid(values, fractions) / (fractions[-1] - fractions[0]))
        curves.append(Curve(fractions, values, area))
    return curves[0], curves[1]


def _baseline(image: torch.Tensor, baseline) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ExplainInputError(f"Unknown baseline {baseline!r}: use 'blur' or a number.")
        sigma = (0,) + (BLUR_SIGMA_VOXELS,) * (image.dim() - 1)
        return torch.from_numpy(ndimage.gaussian_filter(image.numpy(), sigma, mode="nearest"))
    return torch.full_like(image, float(baseline))


def probability_target(
    model, target_class: int, mask, head: str = "softmax", window=None, overlap: float = 0.25, slice_by_slice=False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """P(batch) = mean over M of the class probability: whole image, sliding windows, or
    a 2D network slice by slice over a volume (only the windows and slices that reach M run)."""

    mask = torch.as_tensor(np.asarray(mask, dtype=bool))

    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        return class_probability(logits, target_class, head)[:, mask].mean(1)

    def score(batch: torch.Tensor) -> torch.Tensor:
        if slice_by_slice:
            logits = [slice_logits(model, image, window, overlap, required=mask) for image in batch]
            return probabilities(torch.stack(logits).float())
        if window is None:
            with evaluation_mode(model):
                return probabilities(run_network(model, batch).float())
        logits = [sliding_window_logits(model, image, window, overlap, required=mask) for image in batch]
        return probabilities(torch.stack(logits).float())

    return score


def randomised_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of the network with every parameterised layer re-initialised (the model
    itself is untouched)."""
    copy_ = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in copy_.modules():
            if hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
                module.reset_parameters()
    finally:
        torch.random.set_rng_state(generator_state)
    return copy_


def rank_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps (0 when either is constant)."""
    first, second = np.asarray(first, dtype=np.float64).ravel(), np.asarray(second, dtype=np.float64).ravel()
    if first.size != second.size:
        raise ExplainInputError("The two maps have different sizes.")
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(stats.spearmanr(first, second).statistic)


def _check_same_shape(heatmap: np.ndarray, region, what: str) -> None:
    if tuple(np.shape(region)) != tuple(np.shape(heatmap)):
        raise ExplainInputError(
            f"The {what} has shape {tuple(np.shape(region))} but the heatmap is {tuple(np.shape(heatmap))}: "
            "put both on the same grid."
        )


def explanation_metrics(
    model,
    image,
    target_class: int,
    mask,
    heatmap,
    regions: dict[str, np.ndarray] | None = None,
    head: str = "softmax",
    window=None,
    overlap: float = 0.25,
    fractions=DEFAULT_FRACTIONS,
    baseline="blur",
    explain_again: Callable[[torch.nn.Module], np.ndarray] | None = None,
    slice_by_slice: bool = False,
) -> ExplanationMetrics:
    """All metrics of one heatmap on the network's input grid.

    ``image`` (C, *spatial) and ``mask``, ``heatmap`` and ``regions`` (*spatial) share the
    grid. ``window``/``overlap``: run the network as it is run for the map. With
    ``explain_again(network) -> heatmap`` (the same method, layer and target on another
    network), the randomisation sanity check is added. ``slice_by_slice``: a 2D network
    on a volume (see ``slices``).
    """
    metrics = localisation(heatmap, mask, regions)
    score = probability_target(model, target_class, mask, head, window, overlap, slice_by_slice)
    metrics.deletion, metrics.insertion = faithfulness_curves(
        score, image, heatmap, fractions, baseline, batch_size=1 if window is not None else 4
    )
    if explain_again is not None:
        randomised = np.asarray(explain_again(randomised_copy(model)))
        metrics.randomisation_similarity = rank_similarity(heatmap, randomised)
        inside = np.asarray(mask, dtype=bool)
        metrics.randomisation_similarity_in_target = rank_similarity(np.asarray(heatmap)[inside], randomised[inside])
    return metrics
