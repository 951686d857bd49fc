"""What a user needs to judge a map before reading it (numpy only, no torch).

A heatmap is normalised to 0..1 for display, so a map of almost nothing looks like a map
of strong evidence. These numbers say how much there was to explain:

- T, the target score (the sum of the class's logits over M);
- the mean probability of the class inside M, and the overlap (Dice) of M with the
  network's own prediction of the class: a segment the network does not see as the class
  asks why the network would call it that class, which it does not;
- the positive and negative mass of the signed map S on the layer's grid (evidence for
  and against the class).

A map without any positive mass is refused (``check_has_evidence``); a target the network
does not predict gives warnings that travel with the map (summary, metrics, the file's
metadata, the Slicer status).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ExplainNoEvidence

# A segment whose mean class probability is below this, and half of which or more the network
# does not predict, is not predicted as the class.
PROBABILITY_WARNING = 0.5
# A segment whose overlap with the network's prediction of the class is below this (Dice).
OVERLAP_WARNING = 0.1


@dataclass(frozen=True)
class Evidence:
    target_score: float  # T
    mean_probability_in_target: float  # mean over M of the class probability
    prediction_overlap: float  # Dice of M with the network's prediction of the class
    positive_evidence: float  # sum of the positive part of S on the layer's grid
    negative_evidence: float  # sum of the negative part of S (as a positive number)

    def as_dict(self) -> dict:
        return asdict(self)

    def warnings(self, class_name: str) -> list[str]:
        """One sentence per reason to distrust the map, or none."""
        found = []
        if self.target_score <= 0:
            found.append(
                f"T = {self.target_score:.4g} is not positive: the network's {class_name} logits over M add up to "
                f"evidence against {class_name}, so the map shows what little speaks for it, not why M is "
                f"{class_name}."
            )
        # Either M barely overlaps the prediction, or the network gives M a low probability and
        # predicts little of it (with several classes, argmax can win at a probability below 0.5).
        weakly = self.mean_probability_in_target < PROBABILITY_WARNING and self.prediction_overlap < 0.5
        if self.prediction_overlap < OVERLAP_WARNING or weakly:
            found.append(
                f"The network does not predict M as {class_name}: mean {class_name} probability in M "
                f"{self.mean_probability_in_target:.2f}, overlap with its prediction (Dice) "
                f"{self.prediction_overlap:.2f}. Check that the segment belongs to this CT and class."
            )
        return found

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("T (target score)", f"{self.target_score:.4g}"),
            ("mean class probability in M", f"{self.mean_probability_in_target:.3f}"),
            ("overlap of M with the prediction (Dice)", f"{self.prediction_overlap:.3f}"),
            ("positive evidence (sum of S > 0)", f"{self.positive_evidence:.4g}"),
            ("negative evidence (sum of S < 0)", f"{-self.negative_evidence:.4g}"),
        ]


def dice(first: np.ndarray, second: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1 when both are empty)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    total = int(first.sum()) + int(second.sum())
    return 1.0 if total == 0 else 2.0 * int((first & second).sum()) / total


def lesion_overlap(component: np.ndarray, predicted: np.ndarray) -> float:
    """Dice of one component of M with the predicted components that touch it (a lesion-wise
    overlap: the rest of the prediction belongs to other lesions)."""
    from scipy import ndimage

    labelled, _ = ndimage.label(predicted, structure=np.ones((3,) * np.ndim(predicted)))
    touching = np.setdiff1d(np.unique(labelled[np.asarray(component, dtype=bool)]), [0])
    return dice(component, np.isin(labelled, touching))


def signed_masses(raw: np.ndarray) -> tuple[float, float]:
    """(positive, negative) mass of a signed map, both as positive numbers."""
    raw = np.asarray(raw, dtype=np.float64)
    return float(np.maximum(raw, 0).sum()), float(np.maximum(-raw, 0).sum())


def check_has_evidence(
    heatmap: np.ndarray, method_title: str, layer: str, class_name: str, target_score: float
) -> None:
    """Refuses an all-zero map: normalised, it would look like a map and mean nothing."""
    if not np.asarray(heatmap).max(initial=0.0) > 0:
        raise ExplainNoEvidence(
            f"{method_title} found no positive evidence for {class_name} in M at layer {layer} "
            f"(T = {target_score:.4g}): the map is zero everywhere, so no heatmap was written. Check that M is a "
            "segment of this CT that the network predicts as this class, or try another layer (--layer) or method."
        )
