"""The paper's figure layout: input, ground truth, prediction, segment to explain, and one
heatmap panel per CAM method, on one slice, with a shared colour bar."""

from __future__ import annotations

import numpy as np

LABEL_COLOURS = {1: (0.85, 0.55, 0.25), 2: (0.85, 0.15, 0.2), 3: (0.3, 0.6, 0.95)}
SEGMENT_LABEL = 4
LABEL_COLOURS[SEGMENT_LABEL] = (0.1, 0.85, 0.85)


def short_name(name: str, width: int = 26) -> str:
    """A module name short enough for a panel title: its end, which tells layers apart."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _label_overlay(labels: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4))
    for value, colour in LABEL_COLOURS.items():
        rgba[labels == value] = (*colour, 0.6)
    return rgba


def paper_figure(path, image, ground_truth, prediction, segment, heatmaps: dict[str, np.ndarray], title=""):
    """Writes a PNG. ``image`` is a 2D slice; ``heatmaps`` maps a method title to its
    normalised 2D heatmap on the same slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("Input", None),
        ("Ground truth", ground_truth),
        ("Prediction", prediction),
        ("Segment M", np.where(segment, SEGMENT_LABEL, 0)),
    ]
    columns = len(panels) + len(heatmaps)
    figure, axes = plt.subplots(1, columns, figsize=(2.6 * columns, 3.1), constrained_layout=True)
    for axis, (name, labels) in zip(axes, panels, strict=False):
        axis.imshow(image, cmap="gray")
        if labels is not None:
            axis.imshow(_label_overlay(labels))
        axis.set_title(name)
    shown = [_heat_panel(axis, image, heat, segment, name) for axis, (name, heat) in zip(axes[len(panels) :],
             heatmaps.items(), strict=True)]  # fmt: skip
    _finish(figure, axes, path, title, shown)


def method_panels(path, image, segment, heatmaps: dict[str, np.ndarray], title="", columns: int = 4):
    """Writes a PNG with one panel per method (normalised heatmap over the slice, M's
    outline in cyan), in rows of ``columns``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(heatmaps) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.9 * columns, 3.0 * rows), constrained_layout=True)
    axes = np.atleast_1d(axes).ravel()
    pairs = zip(axes, heatmaps.items(), strict=False)  # the last row may have empty panels
    shown = [_heat_panel(axis, image, heat, segment, name) for axis, (name, heat) in pairs]
    _finish(figure, axes, path, title, shown)


def _heat_panel(axis, image, heatmap, segment, name):
    axis.imshow(image, cmap="gray")
    shown = axis.imshow(np.ma.masked_less(heatmap, 0.02), cmap="inferno", vmin=0, vmax=1, alpha=0.75)
    axis.contour(segment.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    axis.set_title(name)
    return shown


def _finish(figure, axes, path, title, shown):
    import matplotlib.pyplot as plt

    for axis in axes:
        axis.set_axis_off()
    if shown:
        figure.colorbar(shown[-1], ax=list(axes), fraction=0.02, label="normalised heat")
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=110)
    plt.close(figure)
