"""ExplainingInferer: a MONAI inferer that predicts as the one it wraps and explains the
prediction; the bundle configuration in docs/integrations.md, run by MONAI itself."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.inferers import SaliencyInferer, SlidingWindowInferer

from SegHiResGradCAMLib import Explainer, SegmentTarget, Tiling
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.integrations.monai_inferer import ExplainingInferer, HeatmapFromInferer
from SegHiResGradCAMLib.models.formats import read_model_card

ROOT = Path(__file__).resolve().parents[2]
TUMOUR = 2


def documented_bundle_config() -> dict:
    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    section = text.split("## A MONAI bundle that explains its own predictions", 1)[1]
    return json.loads(re.search(r"```json\n(.*?)```", section, flags=re.S).group(1))


def small_network() -> torch.nn.Module:
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 3, 1),
    )
    with torch.no_grad():
        network[-1].bias[TUMOUR] += 0.2  # the tumour class is predicted somewhere in every case
    return network


def batch_of_two() -> MetaTensor:
    images = MetaTensor(torch.randn(2, 1, 30, 22, generator=torch.Generator().manual_seed(1)))
    images.meta["filename_or_obj"] = ["first.nii.gz", "second.nii.gz"]
    images.is_batch = True
    return images


def test_the_prediction_is_the_wrapped_inferer_s_and_each_map_explains_its_case():
    network = small_network()
    windows = SlidingWindowInferer((16, 16), sw_batch_size=3, overlap=0.5, mode="gaussian", padding_mode="replicate")
    inferer = ExplainingInferer(TUMOUR, inferer=windows, layer="2")
    images = batch_of_two()
    prediction = inferer(images, network)
    with torch.no_grad():
        assert torch.equal(torch.as_tensor(prediction), torch.as_tensor(windows(images, network)))
    tiling = Tiling.of_monai_inferer(windows)
    with Explainer(network, layer="2", tiling=tiling, batch_size=3) as explainer:
        for case, (result, heatmap) in enumerate(zip(inferer.results, inferer.heatmaps, strict=True)):
            predicted = prediction[case].argmax(0) == TUMOUR
            assert 0 < predicted.float().mean() < 0.9
            # T is the sum over the predicted voxels of the very logits the bundle's inferer returned.
            expected_t = float(prediction[case, TUMOUR][predicted].sum())
            assert result.target_score == pytest.approx(expected_t, rel=1e-5)
            alone = explainer(images[case].as_tensor(), SegmentTarget(TUMOUR, predicted)).heatmap
            assert np.array_equal(heatmap[0].numpy(), alone)
            assert heatmap.meta["filename_or_obj"] == images.meta["filename_or_obj"][case]


def test_m_can_come_from_the_batch_s_label_and_what_cannot_be_followed_is_refused():
    network, images = small_network(), batch_of_two()
    labels = torch.zeros(2, 1, 30, 22)
    labels[0, 0, 5:12, 4:9] = TUMOUR
    labels[1, 0, 20:26, 10:20] = TUMOUR
    inferer = ExplainingInferer(TUMOUR, mask_from="label", roi_size=(16, 16), overlap=0.25)
    inferer(images, network, explain_mask=labels)
    for case in range(2):
        explained = Explainer(network, tiling=Tiling.monai((16, 16), mode="constant"))(
            images[case].as_tensor(), SegmentTarget(TUMOUR, labels[case, 0] == TUMOUR)
        )
        assert np.array_equal(inferer.heatmaps[case][0].numpy(), explained.heatmap)
    nothing = torch.zeros_like(labels)
    inferer(images, network, explain_mask=nothing)  # no voxel of the class: zero maps, the run goes on
    assert inferer.results == [None, None] and all(not heatmap.any() for heatmap in inferer.heatmaps)
    with pytest.raises(ExplainInputError, match="PrepareBatchExtraInput"):
        inferer(images, network)
    with pytest.raises(ExplainInputError, match="image alone"):
        ExplainingInferer(TUMOUR)(images, network, extra=1)
    with pytest.raises(ExplainInputError, match="SlidingWindowInferer or a SimpleInferer"):
        ExplainingInferer(TUMOUR, inferer=SaliencyInferer("CAM", "2"))
    with pytest.raises(ExplainInputError, match="not both"):
        ExplainingInferer(TUMOUR, inferer=SlidingWindowInferer((16, 16)), roi_size=(8, 8))
    with pytest.raises(ExplainInputError, match="nope"):
        ExplainingInferer(TUMOUR, method="nope")
    with pytest.raises(ExplainInputError, match="No map is waiting"):
        HeatmapFromInferer(ExplainingInferer(TUMOUR))({"pred": None})


@pytest.fixture(scope="module")
def kits_ct_folder(tmp_path_factory):
    """A held-out KiTS-like CT (tumour predicted by the bundled network) as NIfTI, and its labels."""
    folder = tmp_path_factory.mktemp("monai_bundle_data")
    ct, labels = case_images(make_case(300, Grid.centred((160, 160, 48), (2.5, 2.5, 3.5))))
    (folder / "data").mkdir()
    sitk.WriteImage(ct, str(folder / "data" / "case300.nii.gz"))
    sitk.WriteImage(labels, str(folder / "labels.nii.gz"))
    return folder


def write_bundle(folder: Path, config: dict) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    card = read_model_card()
    shutil.copy(card.weights, folder / "models" / "model.pt")
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "configs" / "metadata.json").write_text(json.dumps({"name": folder.name}), encoding="utf-8")
    return folder


def monai_runs(bundle: Path, data: Path, output: Path) -> dict[str, sitk.Image]:
    """The bundle run as `python -m monai.bundle run` runs it; what SaveImaged wrote, by postfix."""
    code = (
        "from monai.bundle import run; "
        f"run(run_id='run', config_file={str(bundle / 'configs' / 'inference.json')!r}, "
        f"meta_file={str(bundle / 'configs' / 'metadata.json')!r}, logging_file=False, "
        f"bundle_root={str(bundle)!r}, dataset_dir={str(data)!r}, output_dir={str(output)!r})"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {path.name.split("_")[-1].split(".")[0]: sitk.ReadImage(str(path)) for path in output.glob("*.nii.gz")}


def same_geometry(image: sitk.Image, reference: sitk.Image) -> bool:
    return (
        image.GetSize() == reference.GetSize()
        and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=1e-4)
        and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-3)
        and np.allclose(image.GetDirection(), reference.GetDirection(), atol=1e-5)
    )


@pytest.mark.slow
def test_the_documented_bundle_predicts_as_its_original_inferer_and_writes_the_maps_on_the_ct(kits_ct_folder, tmp_path):
    config = documented_bundle_config()
    original = {**config, "inferer": "@sliding_window"}
    transforms = config["postprocessing"]["transforms"]
    original["postprocessing"] = {
        "_target_": "Compose",
        "transforms": [
            transforms[1],
            {**transforms[2], "keys": ["pred"]},
            *transforms[3:5],
        ],
    }
    data = kits_ct_folder / "data"
    explained = monai_runs(write_bundle(tmp_path / "explaining", config), data, tmp_path / "out_explaining")
    plain = monai_runs(write_bundle(tmp_path / "original", original), data, tmp_path / "out_original")
    assert set(explained) == {"seg", "heatmap"} and set(plain) == {"seg"}
    ct = sitk.ReadImage(str(data / "case300.nii.gz"))
    labels = sitk.GetArrayFromImage(explained["seg"])
    assert np.array_equal(labels, sitk.GetArrayFromImage(plain["seg"]))
    assert same_geometry(explained["seg"], ct) and same_geometry(explained["heatmap"], ct)

    heatmap = sitk.GetArrayFromImage(explained["heatmap"]).astype(np.float64)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(kits_ct_folder / "labels.nii.gz")))
    predicted_tumour = labels == TUMOUR
    assert (predicted_tumour & (truth == TUMOUR)).sum() > 0.5 * (truth == TUMOUR).sum()  # the network found it
    assert np.isfinite(heatmap).all() and heatmap.min() >= 0
    # The map explains the predicted tumour: most of its heat lies on it, on the CT's own grid.
    assert heatmap[predicted_tumour].sum() > 0.6 * heatmap.sum()


def test_the_docstring_examples_run():
    import doctest

    from SegHiResGradCAMLib.integrations import monai_inferer

    results = doctest.testmod(monai_inferer)
    assert results.attempted >= 3 and results.failed == 0
