"""report.html: one self-contained page (plots and figures embedded as PNG) on a cohort:
how it was made, per-method distributions beside their baselines, the maps that fail a
check, Seg-HiRes-Grad CAM against Seg-Grad CAM case by case, the cases ranked by how
suspicious they look (with links to their files), and the failures."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import __version__
from ..cam.metrics import DEPENDENCE_LIMIT, RANDOMISATION_LIMIT
from ..volumes.outputs import write_atomically
from .case import case_folder

HIRES, GRAD_CAM = "seg-hires-grad-cam", "seg-grad-cam"
# (column, title, its baseline's column, the pass/fail criterion's line)
DISTRIBUTIONS = (
    ("heat_in_m", "heat inside M", "heat_in_m_randomised", None),
    ("heat_outside_body", "heat outside the body", None, None),
    ("deletion_area", "deletion area (lower is better)", "deletion_area_random", None),
    ("insertion_area", "insertion area (higher is better)", "insertion_area_random", None),
    ("randomisation_similarity_in_m", "similarity after randomising, inside M", None, RANDOMISATION_LIMIT),
    ("dependence_on_m", "similarity with M moved aside", None, DEPENDENCE_LIMIT),
    ("cascade_similarity_in_m", "similarity after cascading randomisation, inside M", None, RANDOMISATION_LIMIT),
    ("road_area", "ROAD area, most relevant first (lower is better)", "road_area_least_relevant_first", None),
)
BASELINE_NAMES = {
    "heat_in_m_randomised": "randomised network",
    "road_area_least_relevant_first": "least relevant first",
}
BASELINE_COLOUR = "#999999"
PAIRED = (
    ("heat_in_m", "heat inside M", 1),
    ("heat_outside_body", "heat outside the body", -1),
    ("insertion_area", "insertion area", 1),
    ("deletion_area", "deletion area", -1),
)
TIED = 0.005  # differences below this count as ties
SHOWN_SUSPICIOUS = 10


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    from ..demo.figures import save_laid_out

    buffer = io.BytesIO()
    save_laid_out(figure, buffer, 100, format="png")
    plt.close(figure)
    return _image(buffer.getvalue(), "plot")


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _values(rows, method, key):
    return [row[key] for row in rows if row.get("method") == method and row.get(key) is not None]


def _distributions(rows, methods) -> str:
    """One box plot per measure, each method's box beside its baseline's (grey); the
    checks' criteria as dashed lines; the Dice of the segmentation once (it does not depend
    on the method)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = []
    for key, title, baseline, criterion in DISTRIBUTIONS:
        if not any(_values(rows, m, key) for m in methods):
            continue
        boxes, labels, colours = [], [], []
        for method in methods:
            boxes.append(_values(rows, method, key) or [np.nan])
            labels.append(method)
            colours.append("black")
            if baseline and _values(rows, method, baseline):
                boxes.append(_values(rows, method, baseline))
                labels.append(BASELINE_NAMES.get(baseline, "random order"))
                colours.append(BASELINE_COLOUR)
        figure, axis = plt.subplots(figsize=(1.6 + 1.1 * len(boxes), 3.2), constrained_layout=True)
        plot = axis.boxplot(boxes, showmeans=True)
        for box, colour in zip(plot["boxes"], colours, strict=True):
            box.set_color(colour)
        if criterion is not None:
            axis.axhline(criterion, color="red", linestyle="--", linewidth=0.8, label=f"criterion {criterion}")
            axis.legend(fontsize=7)
        axis.set_xticks(range(1, len(boxes) + 1), labels, rotation=20, fontsize=8)
        axis.set_title(title, fontsize=10)
        parts.append(_png(figure))
    quality = _quality_columns(rows)
    if quality:  # the segmentation's quality: once a case, whatever the method
        per_case = {row["case"]: row for row in rows if row.get("status") == "done"}
        figure, axis = plt.subplots(figsize=(1.6 + 0.9 * len(quality), 3.4), constrained_layout=True)
        axis.boxplot(
            [
                [row[column] for row in per_case.values() if row.get(column) is not None] or [np.nan]
                for column in quality
            ],
            showmeans=True,
        )
        axis.set_xticks(
            range(1, len(quality) + 1),
            [column.replace("_kits_", " KiTS ") for column in quality],
            rotation=30,
            fontsize=7,
        )
        axis.set_title("segmentation quality (Dice, surface Dice)", fontsize=10)
        parts.append(_png(figure))
    if not parts:
        return "<p>No measurements.</p>"
    return (
        "<p>Grey: the baseline of the box to its left (heat in M of the randomised network's map; deletion and "
        "insertion with the voxels in random order). Dashed red: a check's criterion (below it passes).</p>\n"
        + "\n".join(parts)
    )


def _quality_columns(rows) -> list[str]:
    """The per-class and KiTS-region Dice and surface Dice columns the rows hold."""
    found = {key for row in rows for key in row if key.startswith(("dice_", "surface_dice_"))}
    return sorted(found, key=lambda column: (column.startswith("surface"), "_kits_" in column, column))


def _quality_table(rows) -> str:
    """Mean Dice, surface Dice and HD95 per class and KiTS region over the cases."""
    per_case = [row for row in {row["case"]: row for row in rows if row.get("status") == "done"}.values()]
    regions = sorted({key[len("dice_") :] for row in per_case for key in row if key.startswith("dice_")})
    if not regions:
        return "<p>No ground truth: no segmentation quality.</p>"
    lines = []
    for region in regions:
        cells = [html.escape(region.replace("kits_", "KiTS "))]
        for metric in ("dice", "surface_dice", "hd95_mm"):
            values = [row[f"{metric}_{region}"] for row in per_case if row.get(f"{metric}_{region}") is not None]
            cells.append(f"{np.mean(values):.3f} ({len(values)})" if values else "-")
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return (
        "<table><tr><th>class or KiTS region</th><th>Dice</th><th>surface Dice</th><th>HD95 (mm)</th></tr>"
        + "".join(lines)
        + "</table><p>Means over the cases (how many had a value). KiTS regions: kidney and "
        "masses, masses (tumour and cyst), tumour, with the challenge's surface Dice tolerances.</p>"
    )


def _failing(rows) -> str:
    """Every map that fails a check, or warns, with its reasons."""
    lines = []
    for row in rows:
        reasons = [part for part in (row.get("failed_checks") or "", row.get("warnings") or "") if part]
        if row.get("status") == "done" and reasons:
            cells = [
                _case_link(*_unit(row)),
                html.escape(row["method"]),
                html.escape(row.get("failed_checks") or "-"),
                html.escape(row.get("warnings") or "-"),
            ]
            lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    if not lines:
        return "<p>Every map passed every check that was measured, without a warning.</p>"
    return (
        "<table><tr><th>case</th><th>method</th><th>failed checks</th><th>warnings</th></tr>"
        + "".join(lines)
        + "</table>"
    )


def _unit(row: dict) -> tuple:
    """What a row explains: a case, or one component of M in a case (--per-component)."""
    component = row.get("component")
    return (row["case"], 0 if component is None or component != component else int(component))  # NaN from CSV


def _case_link(name: str, component=None) -> str:
    folder = f"cases/{name}"
    part = f", component {int(component)}" if component else ""
    return (
        f'<a href="{html.escape(folder)}/">{html.escape(name)}</a>{part} '
        f'(<a href="{html.escape(folder)}/figure.png">figure</a>)'
    )


def _paired(rows) -> str:
    import matplotlib.pyplot as plt

    lines, plots = [], []
    for key, title, better_sign in PAIRED:
        hires = {_unit(row): row[key] for row in rows if row.get("method") == HIRES and row.get(key) is not None}
        grad = {_unit(row): row[key] for row in rows if row.get("method") == GRAD_CAM and row.get(key) is not None}
        cases = sorted(set(hires) & set(grad))
        if not cases:
            continue
        differences = np.array([hires[case] - grad[case] for case in cases]) * better_sign
        better, worse = int((differences > TIED).sum()), int((differences < -TIED).sum())
        cells = [
            html.escape(title),
            len(cases),
            better,
            worse,
            len(cases) - better - worse,
            f"{np.mean(differences) * better_sign:+.4f}",
        ]
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
        figure, axis = plt.subplots(figsize=(3.6, 3.2), constrained_layout=True)
        axis.scatter([grad[c] for c in cases], [hires[c] for c in cases], s=14)
        low, high = min(min(hires.values()), min(grad.values())), max(max(hires.values()), max(grad.values()))
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.set_xlabel("Seg-Grad CAM")
        axis.set_ylabel("Seg-HiRes-Grad CAM")
        axis.set_title(title)
        plots.append(_png(figure))
    if not lines:
        return "<p>Both Seg-HiRes-Grad CAM and Seg-Grad CAM are needed for paired comparisons.</p>"
    table = (
        "<table><tr><th>measure</th><th>cases</th><th>HiRes better</th><th>HiRes worse</th><th>tied</th>"
        "<th>mean difference (HiRes - Grad CAM)</th></tr>" + "".join(lines) + "</table>"
    )
    return table + "\n" + "\n".join(plots)


def suspicion(row: dict) -> float:
    """How suspicious a case's explanation or segmentation looks: little heat in M, heat
    outside the body, a poor Dice (each 0..1, summed). Only for cases with a ground truth."""
    score = (1 - row.get("heat_in_m", 0.0)) + row.get("heat_outside_body", 0.0)
    return score + (1 - row["dice"])


def _suspicious(results: Path, rows, methods) -> str:
    method = HIRES if HIRES in methods else methods[0]
    finished = [row for row in rows if row.get("method") == method]
    ranked = sorted((row for row in finished if row.get("dice") is not None), key=suspicion, reverse=True)
    unranked = [row for row in finished if row.get("dice") is None]
    if not finished:
        return "<p>No finished case.</p>"
    lines = []
    for rank, row in enumerate(ranked, 1):
        cells = [
            rank,
            _case_link(*_unit(row)),
            f"{suspicion(row):.3f}",
            f"{row['heat_in_m']:.3f}",
            f"{row['heat_outside_body']:.3f}",
            f"{row['dice']:.3f}",
            html.escape(row.get("failed_checks") or ""),
        ]
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    lines += [
        "<tr>"
        + "".join(
            f"<td>{cell}</td>"
            for cell in [
                "-",
                _case_link(*_unit(row)),
                "no ground truth: not ranked",
                f"{row['heat_in_m']:.3f}",
                f"{row['heat_outside_body']:.3f}",
                "-",
                html.escape(row.get("failed_checks") or ""),
            ]
        )
        + "</tr>"
        for row in unranked
    ]
    figures = []
    shown_cases = list(dict.fromkeys(row["case"] for row in ranked + unranked))[:SHOWN_SUSPICIOUS]
    for case in shown_cases:
        png = case_folder(results, case) / "figure.png"
        if png.is_file():  # at 3/4 of its 200 dpi size: over 300 px a panel; click for the full size
            data = png.read_bytes()
            width = round(0.75 * int.from_bytes(data[16:20], "big"))
            image = _image(data, case).replace("<img ", f'<img width="{width}" ', 1)
            figures.append(
                f'<figure><a href="cases/{html.escape(case)}/figure.png">{image}</a>'
                f"<figcaption>{html.escape(case)}</figcaption></figure>"
            )
    return (
        f"<p>Ranked by {html.escape(method)}: (1 - heat in M) + heat outside the body + (1 - Dice). Cases "
        "without a ground truth have no Dice and are listed last, unranked.</p>"
        "<table><tr><th>rank</th><th>case</th><th>suspicion</th><th>heat in M</th><th>outside body</th>"
        "<th>Dice</th><th>failed checks</th></tr>" + "".join(lines) + "</table>\n" + "\n".join(figures)
    )


def _record(rows, layout: str, settings) -> str:
    """How the results were made, as a researcher would cite them."""
    done = [row for row in rows if row.get("status") == "done"]
    first = done[0] if done else {}
    model = settings.model.path or "the bundled demo model"
    source = (
        "the ground truth's " + settings.target_class
        if settings.explain == "truth"
        else "the network's prediction of " + settings.target_class
    )
    if first.get("mask_source") and settings.explain != "truth" and "prediction" not in first["mask_source"]:
        source = "the dataset's mask column" + (f", label {settings.mask_label}" if settings.mask_label else "")
    items = [
        ("software", first.get("software", f"SegHiResGradCAM {__version__}")),
        ("report written", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        ("command", settings.command or "(from Python)"),
        ("dataset layout", layout),
        ("model", f"{model} (SHA-256 of its files {first.get('model_sha256', 'unknown')})"),
        ("class", settings.target_class),
        ("layer", first.get("layer", settings.layer or "the model's default")),
        ("methods", ", ".join(settings.methods)),
        ("M", source),
        ("Dice", f"of the predicted {settings.target_class} against the ground truth's {settings.target_class}"),
        ("metrics", ", ".join(settings.measure) if settings.metrics else "localisation only"),
    ]
    return (
        "<table>"
        + "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>" for name, value in items)
        + "</table>"
    )


def write_report(results: Path, rows: list[dict], layout: str, settings) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    methods = list(settings.methods)
    failures = [row for row in rows if row.get("status") == "failed"]
    done = sorted({row["case"] for row in rows if row.get("status") == "done"})
    failure_rows = "".join(
        f"<tr><td>{html.escape(row['case'])}</td><td>{html.escape(row['error'])}</td></tr>" for row in failures
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cohort report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}} img{{max-width:100%}} figure{{margin:1em 0}}
figure{{overflow-x:auto}} figure img{{max-width:none}}</style>
</head><body>
<h1>Cohort report</h1>
<section id="summary"><h2>Summary</h2>
<p>{len(done)} cases explained, {len(failures)} failed.</p>
{_record(rows, layout, settings)}
</section>
<section id="distributions"><h2>Per-method distributions, beside their baselines</h2>
{_distributions(rows, methods)}
</section>
<section id="quality"><h2>Segmentation quality</h2>
{_quality_table(rows)}
</section>
<section id="checks"><h2>Maps that fail a check or carry a warning</h2>
{_failing(rows)}
</section>
<section id="paired"><h2>Seg-HiRes-Grad CAM against Seg-Grad CAM, case by case</h2>
{_paired(rows)}
</section>
<section id="suspicious"><h2>Cases ranked by how suspicious they look</h2>
{_suspicious(results, rows, methods)}
</section>
<section id="failures"><h2>Failures</h2>
{"<table><tr><th>case</th><th>error</th></tr>" + failure_rows + "</table>" if failures else "<p>None.</p>"}
</section>
</body></html>
"""
    path = results / "report.html"
    write_atomically(path, lambda partial: partial.write_text(page, encoding="utf-8"))
    return path
