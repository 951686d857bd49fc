"""Preprocessing and its inverse: results come back in the CT's exact geometry, and follow
the anatomy whatever the storage (flipped, permuted, oblique; NIfTI or NRRD)."""

import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.models.formats import read_model_card
from SegHiResGradCAMLib.pipeline import ExplainJob, run
from SegHiResGradCAMLib.volumes.preparation import to_model_grid, to_original_grid
from SegHiResGradCAMLib.volumes.volume_io import orientation_code, reorient, rotated


@pytest.fixture(scope="module")
def case_images_small():
    # A 300 x 300 x 150 mm field of view around the kidneys at 1.5 mm in-plane.
    return case_images(make_case(11, Grid.centred((200, 200, 50), (1.5, 1.5, 3.0))))


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (
        a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing())
        and np.allclose(a.GetOrigin(), b.GetOrigin())
        and np.allclose(a.GetDirection(), b.GetDirection())
    )


@pytest.mark.parametrize("storage", ["LPS", "IPL", "RAS", "oblique"])
def test_round_trip_returns_the_ct_grid_and_its_anatomy(case_images_small, storage):
    ct, _ = case_images_small
    stored = rotated(ct, (8, -5, 12)) if storage == "oblique" else reorient(ct, storage)
    card = read_model_card()
    model_input = to_model_grid(stored, card)
    assert orientation_code(model_input.model_grid) == "LPS"
    assert model_input.model_grid.GetSpacing() == pytest.approx(card.spacing)
    hu_on_model_grid = model_input.array[0] * card.intensity.scale + card.intensity.centre
    back = to_original_grid(hu_on_model_grid.astype(np.float32), model_input)
    assert same_geometry(back, stored)
    original = np.clip(sitk.GetArrayFromImage(stored), card.intensity.low, card.intensity.high)
    returned = sitk.GetArrayFromImage(back)
    inside = sitk.GetArrayFromImage(sitk.Cast(stored, sitk.sitkFloat32)) > -900  # inside the field of view
    assert np.corrcoef(original[inside], returned[inside])[0, 1] > 0.9


def heatmap_in_physical_space(tmp_path, ct: sitk.Image, name: str, reference: sitk.Image) -> np.ndarray:
    path = tmp_path / name
    sitk.WriteImage(ct, str(path))
    heatmap_path = tmp_path / f"heat-{name.split('.')[0]}.nrrd"
    run(ExplainJob(image=path, target_class="kidney", methods=["seg-hires-grad-cam"], heatmaps=[heatmap_path]))
    heatmap = sitk.ReadImage(str(heatmap_path))
    assert same_geometry(heatmap, ct)
    common = sitk.Resample(heatmap, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(common)


@pytest.mark.slow
def test_the_heatmap_follows_the_anatomy_not_the_storage(tmp_path, case_images_small):
    ct, _ = case_images_small
    reference = ct
    as_stored = heatmap_in_physical_space(tmp_path, ct, "lps.nii.gz", reference)
    flipped = heatmap_in_physical_space(tmp_path, reorient(ct, "IPL"), "ipl.nrrd", reference)
    # A permutation with flips is exact, so the model sees the same voxels.
    np.testing.assert_allclose(flipped, as_stored, atol=1e-4)
    oblique = heatmap_in_physical_space(tmp_path, rotated(ct, (0, 0, 10)), "oblique.nii.gz", reference)
    # An oblique grid is resampled, so the network sees slightly different voxels: the maps
    # must still agree in physical space (and a wrong axis order or sign would not).
    assert np.corrcoef(as_stored.ravel(), oblique.ravel())[0, 1] > 0.8
    front_to_back = np.ascontiguousarray(as_stored[:, ::-1, :])
    assert np.corrcoef(front_to_back.ravel(), oblique.ravel())[0, 1] < 0.3
