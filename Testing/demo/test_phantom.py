"""The synthetic KiTS-like CT: deterministic, KiTS-like values and sizes, stored like KiTS."""

import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.volumes.volume_io import orientation_code, reorient

COARSE = Grid.centred((128, 128, 48), (3.2, 3.2, 3.75))


@pytest.fixture(scope="module")
def cases():
    return [make_case(seed, COARSE) for seed in range(6)]


def test_cases_are_deterministic_by_seed():
    first, again, other = make_case(3, COARSE), make_case(3, COARSE), make_case(4, COARSE)
    np.testing.assert_array_equal(first.hu, again.hu)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert not np.array_equal(first.labels, other.labels)


def test_a_seed_is_the_same_patient_on_any_grid():
    """The anatomy must not depend on the sampling grid: tumour volumes in mm^3 agree
    between a coarse and a fine grid (up to partial voxels), for several seeds."""
    fine = Grid.centred((160, 160, 60), (2.5, 2.5, 3.0))
    for seed in (3, 11, 12):
        coarse_case, fine_case = make_case(seed, COARSE), make_case(seed, fine)
        assert (coarse_case.tumours, coarse_case.cysts) == (fine_case.tumours, fine_case.cysts)
        volumes = [(case.labels == 2).sum() * np.prod(case.grid.spacing) for case in (coarse_case, fine_case)]
        assert volumes[0] == pytest.approx(volumes[1], rel=0.15)


def test_every_case_has_two_kidneys_and_one_to_three_tumours(cases):
    from scipy import ndimage

    for case in cases:
        kidney_parts = ndimage.label(case.labels > 0)[1]
        assert kidney_parts >= 2  # left and right (a tumour may bridge nothing else)
        assert 1 <= case.tumours <= 3 and (case.labels == 2).any()
    assert any(case.cysts for case in cases) and not all(case.cysts for case in cases)


def test_hounsfield_units_follow_contrast_enhanced_ct(cases):
    for case in cases:
        hu, labels = case.hu, case.labels
        assert hu.min() < -900  # air around the body
        assert 100 < np.median(hu[labels == 1]) < 250  # renal cortex and medulla
        assert 0 < np.median(hu[labels == 2]) < 180  # enhancing tumour, necrotic core
        if (labels == 3).any():
            assert -20 < np.median(hu[labels == 3]) < 50  # cyst (blurred edges)
        fat = hu[(hu > -160) & (hu < -40)]
        assert fat.size > 0.05 * hu.size and -120 < np.median(fat) < -80


def test_tumour_sizes_follow_the_kits_distribution(cases):
    from scipy import ndimage

    diameters = []
    for case in [*cases, *(make_case(seed, COARSE) for seed in range(6, 24))]:
        components, count = ndimage.label(case.labels == 2)
        voxel = np.prod(case.grid.spacing)
        for size in ndimage.sum(np.ones_like(components), components, range(1, count + 1)):
            diameters.append((6 * size * voxel / np.pi) ** (1 / 3))
    # KiTS: equivalent diameter p10 / median / p90 of 20 / 39 / 92 mm (merged or clipped
    # tumours and 3 mm voxels blur the tails here).
    assert 25 <= np.median(diameters) <= 55
    assert np.percentile(diameters, 10) < 30 and np.percentile(diameters, 90) > 55
    assert max(diameters) < 130


def test_stored_like_kits_in_ipl_orientation_with_the_same_anatomy(tmp_path):
    case = make_case(5, Grid.centred((96, 96, 30), (4.0, 4.0, 6.0)))
    ct, _ = case_images(case)
    kits = reorient(ct, "IPL")
    path = tmp_path / "imaging.nii.gz"
    sitk.WriteImage(kits, str(path))
    stored = sitk.ReadImage(str(path))
    assert orientation_code(stored) == "IPL"
    assert stored.GetSize() == (30, 96, 96) and stored.GetSpacing() == pytest.approx((6.0, 4.0, 4.0))
    # The same physical point holds the same value in both storages.
    rng = np.random.default_rng(0)
    for _ in range(50):
        index = [int(rng.integers(0, n)) for n in ct.GetSize()]
        point = ct.TransformIndexToPhysicalPoint(index)
        assert stored[stored.TransformPhysicalPointToIndex(point)] == ct[index]
