"""Any oblique CT: rotations about several axes at once, left-handed grids included. Every
one is reoriented without error, explained, and its map lies where M is."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.volumes.volume_io import array_in_orientation, orientation_code, reorient, rotated


def random_directions(count: int, seed: int = 0):
    """Rotations of up to 45 degrees about each axis, every fifth one made left-handed."""
    generator = np.random.default_rng(seed)
    for number in range(count):
        angles = np.deg2rad(generator.uniform(-45, 45, 3))
        rotation = sitk.Euler3DTransform((0, 0, 0), *angles)
        matrix = np.array(rotation.GetMatrix()).reshape(3, 3)
        if number % 5 == 4:
            matrix = matrix @ np.diag([1, 1, -1])
        yield matrix


def test_every_rotation_is_reoriented_to_the_nearest_axes_exactly():
    values = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.0, 2.0, 3.0))
    for matrix in random_directions(600):
        image.SetDirection(matrix.ravel().tolist())
        code = orientation_code(image)
        assert sorted(code.replace("R", "L").replace("A", "P").replace("I", "S")) == ["L", "P", "S"], code
        lps = reorient(image, "LPS")
        direction = np.array(lps.GetDirection()).reshape(3, 3)
        assert (np.diag(direction) > 0).all() and orientation_code(lps) == "LPS"
        # The same voxels in the same places: no interpolation, only index axes permuted and flipped.
        for index in np.ndindex(*lps.GetSize()):
            source = image.TransformPhysicalPointToContinuousIndex(lps.TransformIndexToPhysicalPoint(index))
            assert np.allclose(source, np.round(source), atol=1e-6)
            assert lps[index] == image[[round(value) for value in source]]


def test_an_array_in_an_orientation_is_the_reoriented_image_s_array():
    """Every direction, oblique and left-handed ones included, to three target orientations:
    the array permuted and flipped by the orientation codes equals SimpleITK's reoriented copy."""
    values = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    image = sitk.GetImageFromArray(values)
    for matrix in random_directions(300):
        image.SetDirection(matrix.ravel().tolist())
        for code in ("LPS", "RAS", "IPL"):
            expected = sitk.GetArrayFromImage(reorient(image, code))
            array = array_in_orientation(image, code)
            np.testing.assert_array_equal(array, expected, err_msg=code)
            assert array.flags.owndata and array.flags.writeable and array.flags.c_contiguous
    image.SetDirection(np.eye(3).ravel().tolist())  # already LPS: nothing to permute, still a copy
    assert array_in_orientation(image, "LPS").flags.owndata


@pytest.fixture(scope="module")
def kits_like(tmp_path_factory):
    """A CT on the bundled model's own spacing (so that rotation is the only resampling)."""
    ct, labels = case_images(make_case(21, Grid.centred((160, 160, 40), (2.0, 2.0, 3.0))))
    return tmp_path_factory.mktemp("rotations"), ct, sitk.Cast(labels == 2, sitk.sitkUInt8)


@pytest.mark.parametrize("angles", [(30, 30, 30), (-40, 25, 35), (44, -44, 10), (15, 40, -40)])
def test_a_compound_oblique_ct_is_explained_with_its_heat_on_m(kits_like, angles, capsys):
    folder, ct, tumour = kits_like
    stored, mask = rotated(ct, angles), rotated(tumour, angles, labels=True)
    sitk.WriteImage(stored, str(folder / "oblique.nrrd"))
    sitk.WriteImage(mask, str(folder / "oblique_mask.nrrd"))
    code = cli_main(
        [
            "explain",
            "--image",
            str(folder / "oblique.nrrd"),
            "--target-class",
            "tumour",
            "--mask",
            str(folder / "oblique_mask.nrrd"),
            "--out",
            str(folder / "heat.nrrd"),
            "--progress",
            "none",
        ]
    )
    assert code == 0, capsys.readouterr().err
    heat = sitk.ReadImage(str(folder / "heat.nrrd"))
    assert heat.GetDirection() == pytest.approx(stored.GetDirection())
    values, inside = sitk.GetArrayFromImage(heat), sitk.GetArrayFromImage(mask) > 0
    near = ndimage.binary_dilation(inside, iterations=3)
    assert values[near].sum() >= 0.95 * values.sum()  # the map lies where M is, on the rotated grid


def test_a_cohort_of_an_oblique_ct_puts_its_heat_on_m(kits_like, tmp_path):
    from SegHiResGradCAMLib.cohort.case import CohortSettings
    from SegHiResGradCAMLib.cohort.run import run_cohort

    _, ct, tumour = kits_like
    stored, mask = rotated(ct, (30, 30, 30)), rotated(tumour, (30, 30, 30), labels=True)
    sitk.WriteImage(stored, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "tumour.nrrd"))
    (tmp_path / "cases.csv").write_text("case,image,mask\noblique,ct.nrrd,tumour.nrrd\n")
    summary = run_cohort(tmp_path / "cases.csv", tmp_path / "results", CohortSettings(methods=("seg-hires-grad-cam",)))
    assert summary.failed == 0
    heat = sitk.GetArrayFromImage(
        sitk.ReadImage(str(tmp_path / "results" / "cases" / "oblique" / "heatmap_seg-hires-grad-cam.nrrd"))
    )
    near = ndimage.binary_dilation(sitk.GetArrayFromImage(mask) > 0, iterations=3)
    assert heat[near].sum() >= 0.95 * heat.sum()
