"""Numbers that compare explanations, not just pictures (torch and numpy only).

- Localisation: the share of the positive heatmap mass inside M, inside anatomy regions
  (e.g. the kidney) and outside the body, and whether the maximum lies inside M.
- Faithfulness: deletion and insertion curves. The voxels are ranked by the heatmap; the
  top fraction f is replaced by a baseline (deletion) or copied from the image into the
  baseline (insertion), and the probability target P = mean over M of the class
  probability is tracked. Areas are normalised by the fraction range (the mean of P over
  the curve): a faithful map has a small deletion area and a large insertion area.
- ROAD (only when asked for): the same ranking, but the voxels are removed by noisy linear
  imputation (see ``road``), most relevant first and least relevant first.
- Sanity (Adebayo et al. 2018): the Spearman rank correlation between the map and the map
  of the same network with re-initialised parameters; a method that depends on what the
  network learned must give a low similarity. Over the whole image, a map whose support
  is fixed by M (a layer just before the output, where G is zero away from M whatever the
  weights) stays similar; the similarity over M's voxels alone shows whether the pattern
  inside M changed.
- Dependence on M: the rank similarity between the map and the map of the same target
  with M moved aside by its own extent. A map that explains M must move with it; a map
  that stays (Seg-Grad CAM near the head, whose channel weights barely change with M)
  shows the network's features, not why M is the class.

Every number has its baseline beside it: heat in M for the randomised network and for a
flat map (M's share of the voxels), deletion and insertion for voxels in random order.
``checks`` turns the comparisons into pass/fail flags, each with its criterion.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage, stats

from ..errors import ExplainInputError
from .metric_table import EXTRA_GROUPS, METRIC_GROUPS, check_fractions, metric_rows
from .model_inspection import evaluation_mode
from .passes import class_probability, run_network
from .road import removal_by_imputation
from .slices import slice_logits
from .sliding_window import sliding_window_logits

# Fractions of the image's voxels removed or inserted: 0 to 5 % in steps of 0.5 %. A
# kidney tumour fills well under 5 % of an abdominal CT, so the curves resolve where the
# evidence is; pass other fractions for other targets.
DEFAULT_FRACTIONS = tuple(np.round(np.linspace(0.0, 0.05, 11), 6))
BLUR_SIGMA_VOXELS = 5.0
# Criteria of the pass/fail checks (Spearman rank correlations).
RANDOMISATION_LIMIT = 0.5  # inside M: a map of what the network learned must change when its weights are random
DEPENDENCE_LIMIT = 0.9  # a map of M must differ from the map of M moved aside


@dataclass(frozen=True)
class Curve:
    fractions: list[float]
    scores: list[float]  # P at each fraction
    area: float  # trapezoidal area over the fractions, divided by their range


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    criterion: str
    passed: bool


@dataclass
class ExplanationMetrics:
    """The metrics of one map, each with its baseline; ``None`` where not measured.

    Attributes:
        mass_in_target: the share of the heat inside M.
        peak_in_target: whether the map's maximum lies inside M.
        mass_in_regions: the share of the heat in each named region.
        deletion: the curve of P (mean class probability over M) as the hottest voxels go.
        insertion: the curve of P as the hottest voxels are put back into the baseline.
        randomisation_similarity: the rank similarity with a randomised network's map.
        randomisation_similarity_in_target: the same over M's voxels only.
        mass_in_target_uniform: a flat map's heat in M (M's share of the voxels).
        mass_in_target_randomised: the randomised network's heat in M.
        deletion_random: the deletion curve of a random voxel order.
        insertion_random: the insertion curve of a random voxel order.
        dependence_on_target: the rank similarity with the map of M moved aside.
        cascade: cascading randomisation, one entry per step (``cascading_randomisation``).
        road_most_relevant_first: ROAD's curve of P as the most relevant voxels are imputed away.
        road_least_relevant_first: the same, least relevant first (its baseline).
        checks: each comparison as (name, value, criterion, passed).
    """

    mass_in_target: float
    peak_in_target: bool
    mass_in_regions: dict[str, float] = field(default_factory=dict)
    deletion: Curve | None = None
    insertion: Curve | None = None
    randomisation_similarity: float | None = None
    randomisation_similarity_in_target: float | None = None  # the same, over M's voxels only
    mass_in_target_uniform: float | None = None  # baseline: a flat map (M's share of the voxels)
    mass_in_target_randomised: float | None = None  # baseline: the map of the randomised network
    deletion_random: Curve | None = None  # baseline: the voxels removed in random order
    insertion_random: Curve | None = None
    dependence_on_target: float | None = None  # similarity with the map of M moved aside
    cascade: list[dict] | None = None  # per step: randomised_down_to, layers, similarity, similarity_in_target
    road_most_relevant_first: Curve | None = None  # P as the hottest voxels are imputed away
    road_least_relevant_first: Curve | None = None  # its baseline: the coldest voxels imputed away
    checks: list[Check] = field(default_factory=list)

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


def localisation(heatmap, mask, regions: dict[str, np.ndarray] | None = None) -> ExplanationMetrics:
    """Mass inside M and inside each named region (``{"in kidney": ..., "outside body": ~body}``)."""
    mask = np.asarray(mask, dtype=bool)
    return ExplanationMetrics(
        mass_in_target=mass_share(heatmap, mask),
        peak_in_target=peak_inside(heatmap, mask),
        mass_in_regions={name: mass_share(heatmap, region) for name, region in (regions or {}).items()},
        mass_in_target_uniform=float(mask.mean()),
    )


def faithfulness_curves(
    probability_in_mask: Callable[[torch.Tensor], torch.Tensor],
    image,
    heatmap,
    fractions=DEFAULT_FRACTIONS,
    baseline="blur",
    batch_size: int = 4,
    ends: dict[str, float] | None = None,
) -> tuple[Curve, Curve]:
    """Deletion and insertion curves of ``heatmap`` (on the image's spatial grid).

    ``probability_in_mask(batch)`` maps (B, C, *spatial) images to B values of P (see
    ``probability_target``). ``baseline``: "blur" (the image smoothed with a Gaussian of
    5 voxels, which removes structure but keeps the overall intensities) or a number in
    the network's input units. Ties in the heatmap are broken by voxel order.

    ``ends``: P of the image itself ("image") and of the baseline ("baseline"), where a
    fraction replaces no voxel or every voxel. They do not depend on the map, so a dict
    passed here is read where it has them and filled where it does not: the curves of
    several maps of the same image, M and baseline measure them once.
    """
    image = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    heatmap = np.asarray(heatmap, dtype=np.float64)
    _check_same_shape(heatmap, np.empty(image.shape[1:]), "heatmap")
    fractions = check_fractions(fractions)
    reference = _baseline(image, baseline)
    order = torch.from_numpy(np.argsort(-heatmap.ravel(), kind="stable").copy())
    voxels = heatmap.size

    def variant(deleting: bool, fraction: float) -> torch.Tensor:
        chosen = torch.zeros(voxels, dtype=torch.bool)
        chosen[order[: round(fraction * voxels)]] = True
        chosen = chosen.reshape(image.shape[1:])
        return torch.where(chosen, reference, image) if deleting else torch.where(chosen, image, reference)

    ends = _measured_ends(probability_in_mask, image, reference, fractions, voxels, ends)
    curves = []
    for deleting, start, end in ((True, "image", "baseline"), (False, "baseline", "image")):
        known = {f: ends[start] for f in fractions if round(f * voxels) == 0}
        known.update({f: ends[end] for f in fractions if round(f * voxels) == voxels})
        curves.append(_curve(probability_in_mask, fractions, functools.partial(variant, deleting), batch_size, known))
    return curves[0], curves[1]


def _measured_ends(probability_in_mask, image, reference, fractions, voxels, ends) -> dict[str, float]:
    """``ends`` (see ``faithfulness_curves``), measured where not given if a fraction reaches
    an end (no voxel or every voxel replaced: one curve's start is the other's end)."""
    ends = {} if ends is None else ends
    if any(round(f * voxels) in (0, voxels) for f in fractions):
        for name, whole in (("image", image), ("baseline", reference)):
            if name not in ends:
                ends[name] = float(probability_in_mask(whole[None])[0])
    return ends


def _curve(
    probability_in_mask,
    fractions: list[float],
    variant: Callable[[float], torch.Tensor],
    batch_size: int,
    known: dict[float, float] | None = None,
):
    """P for each fraction's variant of the image (taken from ``known`` where given), and the
    curve's normalised area."""
    known = dict(known or {})
    missing = [fraction for fraction in fractions if fraction not in known]
    for first in range(0, len(missing), batch_size):
        chosen = missing[first : first + batch_size]
        measured = probability_in_mask(torch.stack([variant(fraction) for fraction in chosen]))
        known.update({fraction: float(value) for fraction, value in zip(chosen, measured, strict=True)})
    values = [known[fraction] for fraction in fractions]
    return Curve(fractions, values, float(np.trapezoid(values, fractions) / (fractions[-1] - fractions[0])))


def road_curves(
    probability_in_mask: Callable[[torch.Tensor], torch.Tensor],
    image,
    heatmap,
    fractions=DEFAULT_FRACTIONS,
    batch_size: int = 4,
) -> tuple[Curve, Curve]:
    """ROAD's two curves of P (see ``road``): the voxels removed by noisy linear imputation
    most relevant first (lower is better) and least relevant first (higher is better)."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    _check_same_shape(heatmap, np.empty(np.shape(image)[1:]), "heatmap")
    fractions = check_fractions(fractions)
    most_first, least_first = removal_by_imputation(image, heatmap)
    # Nothing removed is the image itself, for both curves: measured once.
    unchanged = {0.0: float(probability_in_mask(most_first(0.0)[None])[0])} if fractions[0] == 0 else {}
    most_relevant_first = _curve(probability_in_mask, fractions, most_first, batch_size, unchanged)
    return most_relevant_first, _curve(probability_in_mask, fractions, least_first, batch_size, unchanged)


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

    def probability_in_mask(batch: torch.Tensor) -> torch.Tensor:
        if slice_by_slice:
            logits = [slice_logits(model, image, window, overlap, mask=mask) for image in batch]
            return probabilities(torch.stack(logits).float())
        if window is None:
            with evaluation_mode(model):
                return probabilities(run_network(model, batch).float())
        logits = [sliding_window_logits(model, image, window, overlap, mask=mask) for image in batch]
        return probabilities(torch.stack(logits).float())

    return probability_in_mask


def randomised_copy(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A copy of the network with every parameterised layer re-initialised (the model
    itself is untouched)."""
    copy_ = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for module in copy_.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset) and any(True for _ in module.parameters(recurse=False)):
                reset()
    finally:
        torch.random.set_rng_state(generator_state)
    return copy_


CASCADE_STEPS = 4


def cascade_groups(model: torch.nn.Module, steps: int = CASCADE_STEPS) -> list[list[str]]:
    """The network's re-initialisable layers from the output down, in ``steps`` groups of
    nearly equal size: step i randomises groups 1..i. "From the output down" is the reverse
    of the order the layers are registered in, which for the U-Nets here (MONAI's, nnU-Net's)
    runs from the head through the decoder to the encoder."""
    names = [
        name
        for name, module in model.named_modules()
        if callable(getattr(module, "reset_parameters", None)) and any(True for _ in module.parameters(recurse=False))
    ][::-1]
    steps = max(1, min(steps, len(names)))
    bounds = np.linspace(0, len(names), steps + 1).round().astype(int)
    return [names[first:last] for first, last in itertools.pairwise(bounds)]


def cascading_randomisation(model, heatmap, mask, explain_again, steps: int = CASCADE_STEPS, seed: int = 0):
    """Adebayo et al. 2018's cascading model-parameter randomisation: the layers are
    re-initialised group by group from the output down (``cascade_groups``), and after each
    step the map is made again and compared with the original (Spearman rank similarity, over
    the whole image and inside M). A map that shows what the network learned departs from
    the original as the cascade goes on; a map that ignores the weights stays at 1."""
    copy_ = copy.deepcopy(model)
    modules = dict(copy_.named_modules())
    inside = np.asarray(mask, dtype=bool)
    heatmap = np.asarray(heatmap)
    generator_state = torch.random.get_rng_state()
    rows, randomised = [], 0
    try:
        for step, group in enumerate(cascade_groups(copy_, steps), 1):
            torch.manual_seed(seed + step)
            for name in group:
                modules[name].reset_parameters()
            randomised += len(group)
            again = np.asarray(explain_again(copy_))
            rows.append(
                {
                    "step": step,
                    "randomised_down_to": group[-1],
                    "layers": randomised,
                    "similarity": rank_similarity(heatmap, again),
                    "similarity_in_target": rank_similarity(heatmap[inside], again[inside]),
                }
            )
    finally:
        torch.random.set_rng_state(generator_state)
    return rows


def rank_similarity(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two maps: 1 when both are constant (they rank alike, so a
    sanity check must not pass on them), 0 when only one is."""
    first, second = np.asarray(first, dtype=np.float64).ravel(), np.asarray(second, dtype=np.float64).ravel()
    if first.size != second.size:
        raise ExplainInputError("The two maps have different sizes.")
    if first.size == 0 or (np.ptp(first) == 0 and np.ptp(second) == 0):
        return 1.0
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        return 0.0
    return float(stats.spearmanr(first, second).statistic)


def _check_same_shape(heatmap: np.ndarray, region, what: str) -> None:
    if tuple(np.shape(region)) != tuple(np.shape(heatmap)):
        raise ExplainInputError(
            f"The {what} has shape {tuple(np.shape(region))} but the heatmap is {tuple(np.shape(heatmap))}: "
            "put both on the same grid."
        )


def moved_aside(mask) -> np.ndarray | None:
    """M moved along the axis with the most room by its own extent (so that the two do not
    overlap) or as far as the image allows; None when it cannot move at all."""
    mask = np.asarray(mask, dtype=bool)
    positions = np.argwhere(mask)
    if positions.size == 0:
        return None
    low, high = positions.min(0), positions.max(0) + 1
    best = None
    for axis, size in enumerate(mask.shape):
        extent = high[axis] - low[axis]
        for step in (extent, -extent):
            room = size - high[axis] if step > 0 else low[axis]
            shift = int(np.sign(step) * min(abs(step), room))
            if shift and (best is None or abs(shift) > abs(best[1])):
                best = (axis, shift)
    if best is None:
        return None
    axis, shift = best
    moved = np.zeros_like(mask)
    source = [slice(None)] * mask.ndim
    target = [slice(None)] * mask.ndim
    source[axis] = slice(max(0, -shift), mask.shape[axis] - max(0, shift))
    target[axis] = slice(max(0, shift), mask.shape[axis] - max(0, -shift))
    moved[tuple(target)] = mask[tuple(source)]
    return moved


def sanity_checks(metrics: ExplanationMetrics) -> list[Check]:
    """Pass/fail flags, each with its criterion, for every comparison measured."""
    checks = []
    # Inside M, where the map's support near the head does not give it away; over the whole
    # image when the map has no heat in M to compare.
    inside = metrics.mass_in_target > 0
    similarity = metrics.randomisation_similarity_in_target if inside else metrics.randomisation_similarity
    if similarity is not None:
        checks.append(
            Check(
                f"randomisation ({'inside M' if inside else 'whole image'})",
                similarity,
                f"rank similarity with the randomised network's map below {RANDOMISATION_LIMIT}",
                similarity < RANDOMISATION_LIMIT,
            )
        )
    if metrics.cascade:
        last = metrics.cascade[-1]["similarity_in_target" if inside else "similarity"]
        checks.append(
            Check(
                f"cascading randomisation ({'inside M' if inside else 'whole image'})",
                last,
                f"rank similarity below {RANDOMISATION_LIMIT} once every layer is randomised, from the output down",
                last < RANDOMISATION_LIMIT,
            )
        )
    if metrics.mass_in_target_randomised is not None:
        checks.append(
            Check(
                "heat in M beyond a random network",
                metrics.mass_in_target,
                f"above the randomised network's {100 * metrics.mass_in_target_randomised:.1f} %",
                metrics.mass_in_target > metrics.mass_in_target_randomised,
            )
        )
    deletion, insertion = metrics.deletion, metrics.insertion
    deletion_random, insertion_random = metrics.deletion_random, metrics.insertion_random
    if deletion is not None and insertion is not None and deletion_random is not None and insertion_random is not None:
        checks.append(
            Check(
                "deletion beyond random order",
                deletion.area,
                f"below random order's {deletion_random.area:.4f}",
                deletion.area < deletion_random.area,
            )
        )
        checks.append(
            Check(
                "insertion beyond random order",
                insertion.area,
                f"above random order's {insertion_random.area:.4f}",
                insertion.area > insertion_random.area,
            )
        )
    road_most, road_least = metrics.road_most_relevant_first, metrics.road_least_relevant_first
    if road_most is not None and road_least is not None:
        checks.append(
            Check(
                "ROAD, most relevant first beyond least relevant first",
                road_most.area,
                f"below least relevant first's {road_least.area:.4f}",
                road_most.area < road_least.area,
            )
        )
    if metrics.dependence_on_target is not None:
        checks.append(
            Check(
                "dependence on M",
                metrics.dependence_on_target,
                f"rank similarity with the map of M moved aside below {DEPENDENCE_LIMIT}",
                metrics.dependence_on_target < DEPENDENCE_LIMIT,
            )
        )
    return checks


def _ends_of(deletion: Curve, voxels: int) -> dict[str, float]:
    """The ends (see ``faithfulness_curves``) that a deletion curve has measured."""
    ends = {}
    for fraction, value in zip(deletion.fractions, deletion.scores, strict=True):
        if round(fraction * voxels) == 0:
            ends["image"] = value
        elif round(fraction * voxels) == voxels:
            ends["baseline"] = value
    return ends


def random_order(shape, seed: int = 0) -> np.ndarray:
    """A map that ranks the voxels in a random order: the baseline of deletion and insertion."""
    return np.random.default_rng(seed).random(shape)


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
    explain_for: Callable[[np.ndarray], np.ndarray] | None = None,
    measure=METRIC_GROUPS,
    random_curves: tuple[Curve, Curve] | None = None,
) -> ExplanationMetrics:
    """All metrics of one heatmap on the network's input grid, with their baselines and checks.

    Args:
        model: the segmentation network.
        image: (C, *spatial), on the same grid as ``mask``, ``heatmap`` and ``regions``.
        target_class: the output channel c.
        mask: M, a boolean array.
        heatmap: the map to measure.
        regions: named boolean arrays to measure the heat in (e.g. ``{"outside body": ~body}``).
        head: "softmax" or "sigmoid".
        window: the network's tiling for the faithfulness curves, as it is run for the map.
        overlap: with window sizes only.
        fractions: the deletion and insertion curves' points (fractions of the image).
        baseline: what deleted voxels become: "blur" (a 5-voxel Gaussian) or a number.
        explain_again: ``explain_again(network) -> heatmap``, the same method, layer and target
            on another network: adds the randomisation sanity check.
        slice_by_slice: a 2D network on a volume.
        explain_for: ``explain_for(mask) -> heatmap``, the same network for another M: adds the
            dependence on M.
        measure: which of ``METRIC_GROUPS`` (localisation, faithfulness, randomisation, dependence)
            and ``EXTRA_GROUPS`` (cascade: cascading randomisation, needs ``explain_again``; road:
            ROAD's two curves over ``fractions``).
        random_curves: the random-order deletion and insertion curves when already measured for
            this image and M (they do not depend on the map); the curves' ends are read from them.

    Returns:
        An ``ExplanationMetrics``, each number beside its baseline, and ``checks``.

    Example:
        >>> import numpy as np
        >>> import torch
        >>> from SegHiResGradCAMLib import explain, explanation_metrics
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> image, tumour = torch.randn(1, 16, 16), np.zeros((16, 16), bool)
        >>> tumour[4:8, 4:8] = True
        >>> heatmap = explain(net, image, 2, tumour).heatmap
        >>> metrics = explanation_metrics(net, image, 2, tumour, heatmap, measure=("localisation",))
        >>> 0 <= metrics.mass_in_target <= 1
        True
    """
    unknown = set(measure) - set(METRIC_GROUPS) - set(EXTRA_GROUPS)
    if unknown:
        known = ", ".join(METRIC_GROUPS + EXTRA_GROUPS)
        raise ExplainInputError(f"Unknown metrics {sorted(unknown)}: choose from {known}.")
    metrics = localisation(heatmap, mask, regions)
    probability_in_mask = probability_target(model, target_class, mask, head, window, overlap, slice_by_slice)
    batch_size = 1 if window is not None else 4
    if "faithfulness" in measure:
        ends = _ends_of(random_curves[0], np.size(heatmap)) if random_curves else {}

        def curves(ranking):
            return faithfulness_curves(
                probability_in_mask, image, ranking, fractions, baseline, batch_size=batch_size, ends=ends
            )

        metrics.deletion, metrics.insertion = curves(heatmap)
        metrics.deletion_random, metrics.insertion_random = random_curves or curves(random_order(np.shape(heatmap)))
    if "road" in measure:
        road = road_curves(probability_in_mask, image, heatmap, fractions, batch_size)
        metrics.road_most_relevant_first, metrics.road_least_relevant_first = road
    if explain_again is not None and "randomisation" in measure:
        randomised = np.asarray(explain_again(randomised_copy(model)))
        metrics.randomisation_similarity = rank_similarity(heatmap, randomised)
        inside = np.asarray(mask, dtype=bool)
        metrics.randomisation_similarity_in_target = rank_similarity(np.asarray(heatmap)[inside], randomised[inside])
        metrics.mass_in_target_randomised = mass_share(randomised, inside)
    if explain_again is not None and "cascade" in measure:
        metrics.cascade = cascading_randomisation(model, heatmap, mask, explain_again)
    moved = moved_aside(mask) if explain_for is not None and "dependence" in measure else None
    if explain_for is not None and moved is not None:
        metrics.dependence_on_target = rank_similarity(heatmap, np.asarray(explain_for(moved)))
    metrics.checks = sanity_checks(metrics)
    return metrics
