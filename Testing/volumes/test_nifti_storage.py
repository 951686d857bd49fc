"""NIfTI files as converters write them (issue 26: real data refused as damaged)."""

import gzip

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.volumes import volume_io


def test_a_ct_stored_as_uint16_with_a_rescale_intercept_is_read_not_refused_as_damaged(tmp_path):
    """As dcm2niix writes CTs: uint16 voxels, scl_inter -1024. The reader gives float32 HU; the
    file holds two bytes a voxel, and is complete."""
    hu = np.random.default_rng(0).integers(-1000, 1500, size=(20, 24, 16)).astype(np.int16)
    picture = nibabel.Nifti1Image((hu + 1024).astype(np.uint16), np.diag([0.8, 0.8, 3.0, 1.0]))
    picture.header.set_slope_inter(1.0, -1024.0)
    nibabel.save(picture, str(tmp_path / "ct.nii.gz"))
    image = volume_io.read_volume(tmp_path / "ct.nii.gz", "CT")
    assert np.allclose(np.sort(sitk.GetArrayFromImage(image).ravel()), np.sort(hu.ravel()))
    # A truncated copy is still refused.
    data = gzip.decompress((tmp_path / "ct.nii.gz").read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(data[: len(data) - 4000]))
    with pytest.raises(ExplainInputError, match="is damaged"):
        volume_io.read_volume(tmp_path / "cut.nii.gz", "CT")
