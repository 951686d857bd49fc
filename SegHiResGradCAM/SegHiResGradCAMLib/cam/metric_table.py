"""Explanation metrics as readable (metric, value) rows, from their JSON form.

Free of torch, so that the Slicer side can show the numbers the engine measured. Each
number is shown beside its baseline, and each check as pass or FAIL with its criterion.
"""

from __future__ import annotations

from ..errors import ExplainInputError


def check_fractions(fractions) -> list[float]:
    """The deletion and insertion curves' fractions of the image: at least two, increasing,
    between 0 and 1."""
    values = [float(value) for value in fractions]
    if len(values) < 2 or not all(0 <= value <= 1 for value in values) or values != sorted(set(values)):
        raise ExplainInputError("Give at least two increasing fractions between 0 and 1, e.g. 0, 0.01, ..., 0.05.")
    return values


# The metric groups a run can ask for; localisation costs nothing and is always measured.
METRIC_GROUPS = ("localisation", "faithfulness", "randomisation", "dependence")
# Measured only when asked for (--measure cascade road): cascade costs one more explanation
# per cascade step, road two passes and one imputation per fraction.
EXTRA_GROUPS = ("cascade", "road")


def _percent(value) -> str:
    return f"{100 * value:.1f} %"


def _beside(value: str, baselines: list[tuple[str, float | None, str]]) -> str:
    shown = [f"{name} {formatted}" for name, number, formatted in baselines if number is not None]
    return f"{value} ({', '.join(shown)})" if shown else value


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """Rows for a table: percentages, yes/no, curve areas, the randomisation check, and the
    pass/fail checks."""
    randomised, uniform = metrics.get("mass_in_target_randomised"), metrics.get("mass_in_target_uniform")
    in_target = _beside(
        _percent(metrics["mass_in_target"]),
        [("randomised network", randomised, _percent(randomised or 0)), ("flat map", uniform, _percent(uniform or 0))],
    )
    rows = [("heat mass inside M", in_target), ("maximum inside M", "yes" if metrics["peak_in_target"] else "no")]
    rows += [(f"heat mass {region}", _percent(share)) for region, share in metrics["mass_in_regions"].items()]
    for curve, better in (("deletion", "lower"), ("insertion", "higher")):
        if metrics.get(curve):
            random = metrics.get(f"{curve}_random")
            area = random["area"] if random else None
            shown = _beside(f"{metrics[curve]['area']:.4f}", [("random order", area, f"{area or 0:.4f}")])
            rows.append((f"{curve} area ({better} is better)", shown))
    if metrics.get("road_most_relevant_first"):
        most, least = metrics["road_most_relevant_first"]["area"], metrics["road_least_relevant_first"]["area"]
        shown = _beside(f"{most:.4f}", [("least relevant first", least, f"{least:.4f}")])
        rows.append(("ROAD area, most relevant removed first (lower is better)", shown))
    if metrics.get("randomisation_similarity") is not None:
        rows.append(("similarity after randomising the network", f"{metrics['randomisation_similarity']:.3f}"))
    if metrics.get("randomisation_similarity_in_target") is not None:
        rows.append(("the same, inside M only", f"{metrics['randomisation_similarity_in_target']:.3f}"))
    for step in metrics.get("cascade") or []:
        rows.append(
            (
                f"cascade step {step['step']}: randomised down to {step['randomised_down_to']}",
                f"similarity {step['similarity']:.3f}, inside M {step['similarity_in_target']:.3f}",
            )
        )
    if metrics.get("dependence_on_target") is not None:
        rows.append(("similarity with the map of M moved aside", f"{metrics['dependence_on_target']:.3f}"))
    rows += [
        (f"check: {check['name']}", f"{'pass' if check['passed'] else 'FAIL'} ({check['criterion']})")
        for check in metrics.get("checks", [])
    ]
    return rows


def failed_checks(metrics: dict) -> list[str]:
    """The names of the checks a map failed."""
    return [check["name"] for check in metrics.get("checks", []) if not check["passed"]]
