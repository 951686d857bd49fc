"""report.html: one self-contained page (plots and figures embedded as PNG) on a cohort:
per-method distributions, Seg-HiRes-Grad CAM against Seg-Grad CAM case by case, the cases
ranked by how suspicious they look, and the failures."""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from ..volumes.outputs import partial_path
from .case import case_folder

HIRES, GRAD_CAM = "seg-hires-grad-cam", "seg-grad-cam"
DISTRIBUTIONS = (("heat_in_m", "heat inside M"), ("heat_outside_body", "heat outside the body"),
                 ("insertion_area", "insertion area"), ("randomisation_similarity", "similarity after randomising"),
                 ("dice", "Dice of the prediction"))  # fmt: skip
PAIRED = (("heat_in_m", "heat inside M", 1), ("heat_outside_body", "heat outside the body", -1),
          ("insertion_area", "insertion area", 1), ("deletion_area", "deletion area", -1))  # fmt: skip
TIED = 0.005  # differences below this count as ties
SHOWN_SUSPICIOUS = 10


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return _image(buffer.getvalue(), "plot")


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _values(rows, method, key):
    return [row[key] for row in rows if row.get("method") == method and row.get(key) is not None]


def _distributions(rows, methods) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(key, title) for key, title in DISTRIBUTIONS if any(_values(rows, m, key) for m in methods)]
    parts = []
    for key, title in shown:
        figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(methods), 3.2), constrained_layout=True)
        data = [_values(rows, method, key) or [np.nan] for method in methods]
        axis.boxplot(data, showmeans=True)
        axis.set_xticks(range(1, len(methods) + 1), methods, rotation=20, fontsize=8)
        axis.set_title(title)
        parts.append(_png(figure))
    return "\n".join(parts) or "<p>No measurements.</p>"


def _paired(rows) -> str:
    import matplotlib.pyplot as plt

    lines, plots = [], []
    for key, title, better_sign in PAIRED:
        hires = {row["case"]: row[key] for row in rows if row.get("method") == HIRES and row.get(key) is not None}
        grad = {row["case"]: row[key] for row in rows if row.get("method") == GRAD_CAM and row.get(key) is not None}
        cases = sorted(set(hires) & set(grad))
        if not cases:
            continue
        differences = np.array([hires[case] - grad[case] for case in cases]) * better_sign
        better, worse = int((differences > TIED).sum()), int((differences < -TIED).sum())
        cells = [html.escape(title), len(cases), better, worse, len(cases) - better - worse,
                 f"{np.mean(differences) * better_sign:+.4f}"]  # fmt: skip
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
    table = ("<table><tr><th>measure</th><th>cases</th><th>HiRes better</th><th>HiRes worse</th><th>tied</th>"
             "<th>mean difference (HiRes - Grad CAM)</th></tr>" + "".join(lines) + "</table>")  # fmt: skip
    return table + "\n" + "\n".join(plots)


def suspicion(row: dict) -> float:
    """How suspicious a case's explanation or segmentation looks: little heat in M, heat
    outside the body, a poor Dice (each 0..1, summed)."""
    score = (1 - row.get("heat_in_m", 0.0)) + row.get("heat_outside_body", 0.0)
    return score + (1 - row["dice"] if row.get("dice") is not None else 0.0)


def _suspicious(results: Path, rows, methods) -> str:
    method = HIRES if HIRES in methods else methods[0]
    ranked = sorted((row for row in rows if row.get("method") == method), key=suspicion, reverse=True)
    if not ranked:
        return "<p>No finished case.</p>"
    lines = []
    for rank, row in enumerate(ranked, 1):
        dice = "" if row.get("dice") is None else f"{row['dice']:.3f}"
        cells = [rank, html.escape(row["case"]), f"{suspicion(row):.3f}", f"{row['heat_in_m']:.3f}",
                 f"{row['heat_outside_body']:.3f}", dice]  # fmt: skip
        lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    figures = []
    for row in ranked[:SHOWN_SUSPICIOUS]:
        png = case_folder(results, row["case"]) / "figure.png"
        if png.is_file():
            figures.append(f"<figure>{_image(png.read_bytes(), row['case'])}<figcaption>{html.escape(row['case'])}"
                           "</figcaption></figure>")  # fmt: skip
    return (f"<p>Ranked by {html.escape(method)}: (1 - heat in M) + heat outside the body + (1 - Dice).</p>"
            "<table><tr><th>rank</th><th>case</th><th>suspicion</th><th>heat in M</th><th>outside body</th>"
            "<th>Dice</th></tr>" + "".join(lines) + "</table>\n" + "\n".join(figures))  # fmt: skip


def write_report(results: Path, rows: list[dict], layout: str, settings) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    methods = list(settings.methods)
    failures = [row for row in rows if row.get("status") == "failed"]
    done = sorted({row["case"] for row in rows if row.get("status") == "done"})
    failure_rows = "".join(f"<tr><td>{html.escape(row['case'])}</td><td>{html.escape(row['error'])}</td></tr>"
                           for row in failures)  # fmt: skip
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Cohort report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:left}} img{{max-width:100%}} figure{{margin:1em 0}}</style>
</head><body>
<h1>Cohort report</h1>
<section id="summary"><h2>Summary</h2>
<p>{len(done)} cases explained, {len(failures)} failed ({html.escape(layout)} layout). Model:
{html.escape(str(settings.model or "the bundled demo model"))}; class {html.escape(settings.target_class)}; M: the
{"ground truth" if settings.explain == "truth" else "network's prediction"}; methods:
{html.escape(", ".join(methods))}.</p>
</section>
<section id="distributions"><h2>Per-method distributions</h2>
{_distributions(rows, methods)}
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
    partial = partial_path(path)
    partial.write_text(page)
    os.replace(partial, path)
    return path
