"""The case figure: views as a radiologist reads them, through M's largest cross-sections,
written at 200 dpi for the user's own case."""

import struct

import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.figures import VIEWS, largest_cross_section, view_aspect, view_slice
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.volumes.volume_io import reorient


def test_each_view_puts_the_patient_s_right_anterior_and_superior_where_its_letters_say():
    """A voxel at the patient's right, front and top (LPS: smallest x, smallest y, largest z)."""
    volume = np.zeros((5, 6, 7))
    volume[4, 0, 0] = 1  # (z, y, x)
    for name, axis, (left, _, top, _), _, _ in VIEWS:
        index = {0: 4, 1: 0, 2: 0}[axis]
        picture = view_slice(volume, axis, index)
        row, column = np.argwhere(picture == 1)[0]
        assert left in "RA" and column == 0, name  # right (axial, coronal) or anterior (sagittal) on the left
        assert row == 0 and top in "AS", name  # anterior (axial) or superior (coronal, sagittal) on top
    assert view_aspect((0.8, 0.8, 3.0), 1) == pytest.approx(3.75)  # a 3 mm slice is drawn 3.75 times as tall


def test_the_views_go_through_m_s_largest_cross_section():
    """A cone along z (widest at slice 7), thinner along y at row 3: each view picks the slice
    where M is widest, not its first or middle one."""
    segment = np.zeros((10, 12, 12), dtype=bool)
    for z in range(2, 8):
        radius = z - 1
        segment[z, 3, 6 - radius : 6 + radius] = True
        segment[z, 2:5, 6] = True
    assert largest_cross_section(segment, 0) == 7
    assert largest_cross_section(segment, 1) == 3
    assert largest_cross_section(segment, 2) == 6


def test_explain_writes_the_paper_figure_of_the_user_s_case_at_200_dpi(tmp_path):
    ct, labels = case_images(make_case(21, Grid.centred((128, 128, 40), (2.4, 2.4, 3.0))))
    sitk.WriteImage(reorient(ct, "IPL"), str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(labels, str(tmp_path / "truth.nrrd"))
    code = cli_main(
        [
            "explain",
            "--image",
            str(tmp_path / "ct.nii.gz"),
            "--target-class",
            "tumour",
            "--from-prediction",
            "--truth",
            str(tmp_path / "truth.nrrd"),
            "--figure",
            str(tmp_path / "figure.png"),
            "--out",
            str(tmp_path / "heat.nrrd"),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    png = (tmp_path / "figure.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    # Five columns (input, truth, prediction, M, the map) and three views of 2.2 inches at 200 dpi.
    assert width == pytest.approx(5 * 2.2 * 200, rel=0.01) and height >= 3 * 2.2 * 200
    pixels_per_metre = struct.unpack(">II", png[png.index(b"pHYs") + 4 : png.index(b"pHYs") + 12])
    assert pixels_per_metre[0] == round(200 / 0.0254)
    code = cli_main(
        [
            "explain",
            "--image",
            str(tmp_path / "ct.nii.gz"),
            "--target-class",
            "tumour",
            "--from-prediction",
            "--layers",
            "atlas",
            "--figure",
            str(tmp_path / "atlas_figure.png"),
            "--out",
            str(tmp_path / "atlas"),
            "--progress",
            "none",
        ]
    )
    assert code == 2 and not (tmp_path / "atlas").exists()


def test_classes_without_colours_of_their_own_get_distinct_ones_in_the_figure():
    from SegHiResGradCAMLib.demo.figures import distinct_styles

    grey = {1: ("kidney", (0.5, 0.5, 0.5)), 2: ("tumour", (0.5, 0.5, 0.5))}
    shown = distinct_styles(grey)
    assert [name for name, _ in shown.values()] == ["kidney", "tumour"]
    assert shown[1][1] != shown[2][1]
    own = {1: ("kidney", (0.8, 0.5, 0.2)), 2: ("tumour", (0.8, 0.1, 0.2))}
    assert distinct_styles(own) == own  # a model's own colours are kept


@pytest.mark.parametrize("dpi", [100, 200])
def test_a_figure_laid_out_once_has_the_pixels_savefig_s_own_layout_gives(dpi):
    """Panels with titles, row labels, a colour bar and a legend outside the axes, saved by
    savefig (which runs the constrained layout in a dry run) and by save_laid_out (which runs
    it once and fixes it): the same PNG pixels at the saved resolution."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from PIL import Image

    from SegHiResGradCAMLib.demo.figures import save_laid_out

    def figure():
        drawn, axes = plt.subplots(2, 3, figsize=(6.6, 5.0), squeeze=False, constrained_layout=True)
        picture = np.linspace(0, 1, 48 * 64).reshape(48, 64)
        for row in range(2):
            for column in range(3):
                shown = axes[row][column].imshow(picture ** (column + 1), cmap="inferno", aspect=1.5 - row)
                axes[row][column].set_xticks([])
                axes[row][column].set_yticks([])
                axes[row][column].set_title(f"method {column}", fontsize=9)
            axes[row][0].set_ylabel(f"view {row}\nS {12.5 * row:.1f} mm", fontsize=8)
        drawn.legend(handles=[Patch(color="red", label="tumour")], loc="outside lower center", frameon=False)
        drawn.colorbar(shown, ax=axes[:, -1].tolist(), fraction=0.05, label="normalised heat")
        drawn.suptitle("a case", fontsize=10)
        return drawn

    def pixels(save) -> np.ndarray:
        buffer = io.BytesIO()
        drawn = figure()
        save(drawn, buffer)
        plt.close(drawn)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))

    by_savefig = pixels(lambda drawn, buffer: drawn.savefig(buffer, dpi=dpi, format="png"))
    laid_out = pixels(lambda drawn, buffer: save_laid_out(drawn, buffer, dpi, format="png"))
    assert by_savefig.shape == laid_out.shape == (5 * dpi, round(6.6 * dpi), 4)
    np.testing.assert_array_equal(by_savefig, laid_out)
