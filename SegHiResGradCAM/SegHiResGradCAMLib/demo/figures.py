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
    shown = [
        _heat_panel(axis, image, heat, segment, name)
        for axis, (name, heat) in zip(axes[len(panels) :], heatmaps.items(), strict=True)
    ]
    _finish(figure, axes, path, title, shown)


def method_panels(path, image, segment, heatmaps: dict[str, np.ndarray], title="", columns: int = 4):
    """Writes a PNG with one panel per method (normalised heatmap over the slice, M's
    outline in cyan), in rows of ``columns``."""
    heat_panels(path, [(name, image, segment, heat) for name, heat in heatmaps.items()], title, columns)


def heat_panels(path, panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title="", columns: int = 4):
    """Writes a PNG with one panel per (name, image slice, M's slice, normalised heatmap
    slice), in rows of ``columns``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.9 * columns, 3.0 * rows), constrained_layout=True)
    axes = np.atleast_1d(axes).ravel()
    pairs = zip(axes, panels, strict=False)  # the last row may have empty panels
    shown = [_heat_panel(axis, image, heat, segment, name) for axis, (name, image, segment, heat) in pairs]
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
    save_laid_out(figure, path, 110)
    plt.close(figure)


def save_laid_out(figure, target, dpi: int, **options) -> None:
    """``figure.savefig`` of a figure made with constrained layout, the layout run once, at
    the saved resolution, and then fixed: savefig would run it in a dry-run draw of every
    panel before the real draw (the same pixels in three quarters of the time; most of a
    small cohort case's time)."""
    figure.set_dpi(dpi)
    figure.get_layout_engine().execute(figure)
    figure.set_layout_engine(None)
    figure.savefig(target, dpi=dpi, **options)


# (name, array axis the slice is taken along, (left, right, top, bottom) orientation letters,
# the world axis named in the slice position, its sign from LPS): for an LPS (z, y, x) array.
VIEWS = (
    ("axial", 0, ("R", "L", "A", "P"), "S", 1.0),
    ("coronal", 1, ("R", "L", "S", "I"), "A", -1.0),
    ("sagittal", 2, ("A", "P", "S", "I"), "R", -1.0),
)
FIGURE_DPI = 200
PANEL_INCHES = 2.2


def view_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """One slice of an LPS (z, y, x) array as a radiologist looks at it: axial with anterior
    up and the patient's right on the left; coronal and sagittal with superior up."""
    picture = np.take(volume, index, axis=axis)
    return picture if axis == 0 else np.flipud(picture)


def view_aspect(spacing_xyz, axis: int) -> float:
    """Height / width of a displayed pixel, so that millimetres are square on the page."""
    x, y, z = spacing_xyz
    return {0: y / x, 1: z / x, 2: z / y}[axis]


def largest_cross_section(segment: np.ndarray, axis: int) -> int:
    """The slice along ``axis`` where M's cross-section is largest."""
    return int(np.argmax(segment.sum(axis=tuple(a for a in range(3) if a != axis))))


def view_box(mask: np.ndarray, margin: tuple[int, int]) -> tuple[slice, slice]:
    """A box around a 2D mask with a margin (pixels), inside the picture."""
    rows, columns = np.nonzero(mask)
    if rows.size == 0:
        return slice(None), slice(None)
    return (
        slice(max(rows.min() - margin[0], 0), rows.max() + 1 + margin[0]),
        slice(max(columns.min() - margin[1], 0), columns.max() + 1 + margin[1]),
    )


def distinct_styles(styles: dict) -> dict:
    """The classes' colours, or a palette of distinct ones when the model gives them all the
    same colour (a card without colours): a legend must tell the classes apart."""
    if len({tuple(colour) for _, colour in styles.values()}) == len(styles):
        return styles
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return {value: (name, palette[number % len(palette)]) for number, (value, (name, _)) in enumerate(styles.items())}


def _styled_overlay(labels: np.ndarray, styles: dict) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4))
    for value, (_, colour) in styles.items():
        rgba[labels == value] = (*colour, 0.55)
    return rgba


def case_views_figure(
    target,
    hu,
    spacing_xyz,
    positions,
    labels: dict,
    segment,
    heatmaps: dict,
    styles: dict,
    title: str = "",
    margin_mm: float = 50.0,
) -> None:
    """Writes the paper-style figure of one case as a PNG (a path or a file object): one row
    per view (axial, coronal, sagittal, each through M's largest cross-section in that
    view), one column each for the input, every label map in ``labels`` (title -> LPS label
    array), M, and every heatmap (title -> normalised LPS array); orientation letters, the
    slice position in mm (``positions(axis, index) -> mm`` along the view's world axis), a
    legend of the classes (``styles``: label value -> (name, colour)) and a colour bar.
    Pixels are shown as they are (no smoothing), with square millimetres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    columns = [("Input", None, None)] + [(name, "labels", array) for name, array in labels.items()]
    columns += [("Segment M", "segment", segment)] + [(name, "heat", array) for name, array in heatmaps.items()]
    figure, axes = plt.subplots(
        len(VIEWS),
        len(columns),
        figsize=(PANEL_INCHES * len(columns), PANEL_INCHES * len(VIEWS) + 0.9),
        squeeze=False,
        constrained_layout=True,
    )
    heat_image = None
    styles = distinct_styles(styles)
    spacing = {0: spacing_xyz[2], 1: spacing_xyz[1], 2: spacing_xyz[0]}  # array axis -> mm
    for row, (view, axis, letters, world, _) in enumerate(VIEWS):
        index = largest_cross_section(segment, axis)
        shown_axes = [a for a in range(3) if a != axis]
        margin = tuple(round(margin_mm / spacing[a]) for a in shown_axes)
        box = view_box(view_slice(segment, axis, index) > 0, margin)
        picture = view_slice(hu, axis, index)[box]
        aspect = view_aspect(spacing_xyz, axis)
        outline = view_slice(segment, axis, index)[box].astype(float)
        for column, (name, kind, array) in enumerate(columns):
            panel = axes[row][column]
            panel.imshow(np.clip(picture, -160, 240), cmap="gray", aspect=aspect, interpolation="nearest")
            if kind == "labels":
                panel.imshow(
                    _styled_overlay(view_slice(array, axis, index)[box], styles), aspect=aspect, interpolation="nearest"
                )
            elif kind == "segment":
                panel.imshow(
                    _styled_overlay(view_slice(array, axis, index)[box].astype(int), {1: ("M", (0.1, 0.85, 0.85))}),
                    aspect=aspect,
                    interpolation="nearest",
                )
            elif kind == "heat":
                heat = view_slice(array, axis, index)[box]
                heat_image = panel.imshow(
                    np.ma.masked_less(heat, 0.02),
                    cmap="inferno",
                    vmin=0,
                    vmax=1,
                    alpha=0.8,
                    aspect=aspect,
                    interpolation="nearest",
                )
                panel.contour(outline, levels=[0.5], colors="cyan", linewidths=0.5)
            panel.set_xticks([])
            panel.set_yticks([])
            if row == 0:
                panel.set_title(name, fontsize=9)
            if column == 0:
                panel.set_ylabel(f"{view}\n{world} {positions(axis, index):.1f} mm", fontsize=8)
                for text, where in zip(letters, ((0.02, 0.5), (0.98, 0.5), (0.5, 0.97), (0.5, 0.03)), strict=True):
                    panel.text(
                        *where,
                        text,
                        transform=panel.transAxes,
                        color="yellow",
                        fontsize=8,
                        ha="center",
                        va="center",
                        fontweight="bold",
                    )
    legend = [Patch(color=colour, label=name) for name, colour in styles.values()]
    legend.append(Patch(color=(0.1, 0.85, 0.85), label="M (explained segment)"))
    figure.legend(handles=legend, loc="outside lower center", ncol=len(legend), fontsize=8, frameon=False)
    if heat_image is not None:
        figure.colorbar(heat_image, ax=axes[:, -1].tolist(), fraction=0.05, label="normalised heat")
    if title:
        figure.suptitle(title, fontsize=10)
    save_laid_out(figure, target, FIGURE_DPI, format="png")
    plt.close(figure)
