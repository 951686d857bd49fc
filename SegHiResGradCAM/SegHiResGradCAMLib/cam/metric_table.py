"""Explanation metrics as readable (metric, value) rows, from their JSON form.

Free of torch, so that the Slicer side can show the numbers the engine measured.
"""

from __future__ import annotations


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """Rows for a table: percentages, yes/no, curve areas and the randomisation check."""
    rows = [
        ("heat mass inside M", f"{100 * metrics['mass_in_target']:.1f} %"),
        ("maximum inside M", "yes" if metrics["peak_in_target"] else "no"),
    ]
    rows += [(f"heat mass {region}", f"{100 * share:.1f} %") for region, share in metrics["mass_in_regions"].items()]
    if metrics.get("deletion"):
        rows.append(("deletion area (lower is better)", f"{metrics['deletion']['area']:.4f}"))
    if metrics.get("insertion"):
        rows.append(("insertion area (higher is better)", f"{metrics['insertion']['area']:.4f}"))
    if metrics.get("randomisation_similarity") is not None:
        rows.append(("similarity after randomising the network", f"{metrics['randomisation_similarity']:.3f}"))
    if metrics.get("randomisation_similarity_in_target") is not None:
        rows.append(("the same, inside M only", f"{metrics['randomisation_similarity_in_target']:.3f}"))
    return rows
