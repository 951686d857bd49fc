"""MONAI bundles: refused unless trusted (their configuration runs code), and, when trusted,
run exactly as the bundle's own inferer runs them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import ScaleIntensityRange

from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.models.formats import read_model_card
from SegHiResGradCAMLib.pipeline import ExplainJob, run
from SegHiResGradCAMLib.volumes.volume_io import reorient

NETWORK = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2],
           "num_res_units": 1}  # fmt: skip
SCALING = {"a_min": -250.0, "a_max": 350.0, "b_min": 0.0, "b_max": 1.0, "clip": True}
ROI = [48, 48, 16]  # (x, y, z), MONAI's array order


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle folder whose network_def runs code when parsed: it touches a marker file."""
    folder = tmp_path_factory.mktemp("bundle") / "kidney_bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    marker = folder.parent / "bundle-code-ran"
    torch.manual_seed(0)
    torch.save(UNet(**NETWORK).state_dict(), folder / "models" / "model.pt")
    network_def = {"_target_": "monai.networks.nets.UNet", **NETWORK,
                   "kernel_size": f"$__import__('pathlib').Path({str(marker)!r}).touch() or 3"}  # fmt: skip
    config = {
        "network_def": network_def,
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": "image", "pixdim": [3.0, 3.0, 3.0], "mode": "bilinear"},
                {"_target_": "ScaleIntensityRanged", "keys": "image", **SCALING},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": ROI,
            "sw_batch_size": 1,
            "overlap": 0.25,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    metadata = {"name": "Kidney test bundle", "network_data_format": {"outputs": {"pred": {
        "channel_def": {"0": "background", "1": "kidney", "2": "tumour"}}}}}  # fmt: skip
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return folder, marker


@pytest.fixture(scope="module")
def ras_ct(tmp_path_factory):
    """A KiTS-like CT stored in RAS on the bundle's 3 mm grid, so that no resampling differs."""
    folder = tmp_path_factory.mktemp("ras_ct")
    case = make_case(9, Grid.centred((80, 72, 24), (3.0, 3.0, 3.0)))
    assert (case.labels == 2).sum() > 1000  # a tumour well inside the field of view
    ct, labels = case_images(case)
    sitk.WriteImage(reorient(ct, "RAS"), str(folder / "ct.nii.gz"))
    sitk.WriteImage(reorient(sitk.Equal(labels, 2), "RAS"), str(folder / "tumour.nii.gz"))
    return folder


def test_an_untrusted_bundle_is_refused_before_its_code_runs(bundle, ras_ct, tmp_path):
    folder, marker = bundle
    marker.unlink(missing_ok=True)
    with pytest.raises(ExplainInputError, match="trust"):
        read_model_card(folder)
    command = [sys.executable, "-m", "SegHiResGradCAMLib.cli", "explain", "--image", str(ras_ct / "ct.nii.gz"),
               "--model", str(folder), "--target-class", "tumour", "--from-prediction", "--out",
               str(tmp_path / "heat.nrrd"), "--progress", "none"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "--trust-bundle" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "heat.nrrd").exists()


def test_a_trusted_bundle_is_read_from_its_own_configuration(bundle):
    folder, _ = bundle
    card = read_model_card(folder, trust_bundle=True)
    assert card.classes == ("background", "kidney", "tumour") and card.head == "softmax"
    assert card.orientation == "RAS" and card.spacing == (3.0, 3.0, 3.0)
    assert card.window == tuple(ROI) and card.overlap == 0.25 and card.axis_order == "xyz"
    hu = np.array([-1000.0, -250.0, 50.0, 350.0, 900.0])
    expected = ScaleIntensityRange(**SCALING)(hu)
    np.testing.assert_allclose(card.intensity.apply(hu), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_our_run_of_a_trusted_bundle_matches_its_own_inferer(bundle, ras_ct, tmp_path):
    folder, marker = bundle
    marker.unlink(missing_ok=True)
    job = ExplainJob(image=ras_ct / "ct.nii.gz", target_class="tumour", methods=["seg-hires-grad-cam"],
                     heatmaps=[tmp_path / "heat.nrrd"], model=folder, mask=ras_ct / "tumour.nii.gz",
                     prediction=tmp_path / "prediction.nrrd", trust_bundle=True)  # fmt: skip
    result = run(job)
    assert marker.exists()  # trusting the bundle means running its code: that is why it must be asked for

    # The bundle's own inference, MONAI style: (x, y, z) arrays, its intensity scaling and inferer.
    ct = sitk.ReadImage(str(ras_ct / "ct.nii.gz"))
    monai_array = sitk.GetArrayFromImage(ct).transpose(2, 1, 0)  # SimpleITK's (z, y, x) -> (x, y, z)
    network = UNet(**NETWORK)
    network.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    inferer = SlidingWindowInferer(roi_size=ROI, sw_batch_size=1, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        scaled = torch.as_tensor(np.asarray(ScaleIntensityRange(**SCALING)(monai_array)), dtype=torch.float32)
        theirs = inferer(scaled[None, None], network.eval())[0].argmax(0).numpy()
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "prediction.nrrd"))).transpose(2, 1, 0)
    assert ours.shape == theirs.shape
    assert (ours == theirs).mean() > 0.999

    heat = sitk.ReadImage(str(tmp_path / "heat.nrrd"))
    assert heat.GetSize() == ct.GetSize() and np.allclose(heat.GetDirection(), ct.GetDirection())
    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(ras_ct / "tumour.nii.gz"))) > 0
    values = sitk.GetArrayFromImage(heat)
    # An untrained network, but a tumour target: its heat is densest on the tumour.
    assert values[tumour].mean() > 5 * values[~tumour].mean()
    assert result.layer and Path(job.heatmaps[0]).is_file()


def test_slicer_refuses_an_untrusted_bundle_before_creating_anything(bundle):
    from mrml_scene import new_scene, phantom_volume
    from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings

    folder, marker = bundle
    marker.unlink(missing_ok=True)
    scene = new_scene()
    volume, _ = phantom_volume(scene)
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(ExplainInputError, match="Trust this MONAI bundle"):
        ExplainRun(ExplainSettings(volume, "tumour", model=folder))
    assert scene.GetNumberOfNodes() == nodes and not marker.exists()
