"""The KiTS-like sample the module registers with Slicer's Sample Data module: the shipped
files are what Sample Data will fetch and verify, they hold the phantom case they claim,
they load through MRML's own readers, and the module explains the sample's tumour."""

import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import vtk
from scipy import ndimage

from mrml_scene import load_sample, new_scene
from SegHiResGradCAMLib.demo.phantom import LABELS, Grid, make_case
from SegHiResGradCAMLib.mrml import mrml_adapter
from SegHiResGradCAMLib.mrml.sample_data import SAMPLE_FOLDER, file_checksum, read_sample_case, sample_data_source
from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def segment_ids_by_name(segmentation) -> dict:
    segments = segmentation.GetSegmentation()
    count = segments.GetNumberOfSegments()
    return {segments.GetNthSegment(i).GetName(): segments.GetNthSegmentID(i) for i in range(count)}


def test_sample_data_fetches_exactly_the_shipped_files_and_their_checksums_match(tmp_path):
    source = sample_data_source()
    assert len(source["uris"]) == len(source["fileNames"]) == len(source["nodeNames"]) == len(source["checksums"]) == 2
    assert source["loadFileTypes"] == ["VolumeFile", "SegmentationFile"] and "loadFileType" not in source  # deprecated
    for uri, name, checksum in zip(source["uris"], source["fileNames"], source["checksums"], strict=True):
        parsed = urllib.parse.urlparse(uri)
        assert parsed.scheme == "file"  # no network: the file ships with the extension
        shipped = Path(urllib.request.url2pathname(parsed.path))
        assert shipped.parent == SAMPLE_FOLDER.resolve() and shipped.name == name
        assert shipped.stat().st_size < 5e6
        # What Sample Data does: urlretrieve into its cache, then compare the SHA256.
        cached, _ = urllib.request.urlretrieve(uri, tmp_path / name)
        assert file_checksum(cached) == checksum
        assert checksum.startswith("SHA256:") and len(checksum) == len("SHA256:") + 64
    assert Path(source["thumbnailFileName"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_changed_file_no_longer_matches_its_registered_checksum(tmp_path):
    case = read_sample_case()
    changed = tmp_path / case.ct_file
    data = bytearray((SAMPLE_FOLDER / case.ct_file).read_bytes())
    data[-1] ^= 1
    changed.write_bytes(bytes(data))
    assert file_checksum(changed) != case.checksums[case.ct_file]


def test_the_sample_is_the_phantom_case_it_claims_to_be(tmp_path):
    sample = read_sample_case()
    case = make_case(sample.seed, Grid.centred(sample.shape, sample.spacing))
    scene = new_scene()
    volume, segmentation = load_sample(scene)
    hu = slicer.util.arrayFromVolume(volume)
    expected = np.round(case.hu)
    assert hu.shape == expected.shape
    # Equal up to rounding of values that land on .5 differently across CPUs' float maths.
    assert np.abs(hu - expected).max() <= 1 and (hu == expected).mean() > 0.999
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    ijk_to_ras = slicer.util.arrayFromVTKMatrix(matrix)
    np.testing.assert_allclose(ijk_to_ras[:3, :3], LPS_TO_RAS @ np.diag(sample.spacing), atol=1e-9)
    np.testing.assert_allclose(ijk_to_ras[:3, 3], LPS_TO_RAS @ np.array(case.grid.origin), atol=1e-6)
    # Each class of the truth is a named segment, equal to the phantom's labels on the CT grid.
    ids = segment_ids_by_name(segmentation)
    present = {LABELS[value] for value in np.unique(case.labels) if value}
    assert set(ids) == present and {"kidney", "tumour"} <= present
    for value, name in LABELS.items():
        if name in ids:
            mrml_adapter.export_segment(segmentation, ids[name], volume, tmp_path / f"{name}.nrrd")
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}.nrrd"))) > 0
            np.testing.assert_array_equal(mask, case.labels == value)


@pytest.mark.slow
def test_the_module_explains_the_sample_s_ground_truth_tumour():
    scene = new_scene()
    volume, segmentation = load_sample(scene)
    tumour = segment_ids_by_name(segmentation)["tumour"]
    run = ExplainRun(ExplainSettings(volume, "tumour", segmentation_node=segmentation, segment_id=tumour))
    deadline = time.time() + 300
    while (status := run.poll()).state == "running":
        assert time.time() < deadline, "the background run did not finish"
        time.sleep(0.2)
    assert status.state == "finished", status.message
    heat = slicer.util.arrayFromVolume(run.heatmap_node)
    sample = read_sample_case()
    labels = make_case(sample.seed, Grid.centred(sample.shape, sample.spacing)).labels
    near_tumour = ndimage.binary_dilation(labels == 2, iterations=2)
    assert heat[near_tumour].sum() > 0.8 * heat.sum()


def test_the_segmentation_file_is_reproducible_byte_for_byte(tmp_path, monkeypatch):
    """MRML draws random segment IDs; the maker seeds them, or the SHA256 would change on every run."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "Utilities"))
    from make_sample_data import write_segmentation

    case = read_sample_case()
    labels = sitk.GetImageFromArray(make_case(case.seed, Grid.centred(case.shape, case.spacing)).labels)
    ct = sitk.ReadImage(str(SAMPLE_FOLDER / case.ct_file))
    labels.CopyInformation(ct)
    sitk.WriteImage(labels, str(tmp_path / "labels.nrrd"))
    checksums = set()
    for attempt in range(2):
        write_segmentation(SAMPLE_FOLDER / case.ct_file, tmp_path / "labels.nrrd", tmp_path / f"{attempt}.seg.nrrd")
        checksums.add(file_checksum(tmp_path / f"{attempt}.seg.nrrd"))
    assert len(checksums) == 1
