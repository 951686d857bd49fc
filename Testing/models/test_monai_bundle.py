"""MONAI bundles as they are in the Model Zoo, explained in the bundle's own computation.

Three configurations follow the public layouts of Model Zoo CT bundles (smaller networks,
random weights, which make any difference in the preprocessed grid visible):
spleen_ct_segmentation (UNet, Orientationd RAS, Spacingd, ScaleIntensityRanged, overlap
0.5, Invertd before AsDiscreted), wholeBody_ct_segmentation (SegResNet, pixdim as an
expression, NormalizeIntensityd(nonzero) + ScaleIntensityd, the inferer's overlap and
batch size as references, Gaussian blending with replicate padding, AsDiscreted before a
nearest Invertd) and swin_unetr_btcv_segmentation (SwinUNETR, as YAML; MONAI 1.6's
SwinUNETR has no img_size, and the default reader replaces ITKReader, as itk is not
installed). The reference is MONAI's own ``monai.bundle.run`` of the same files."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from monai.networks import nets

from conftest import assert_warm_maps_equal_cold
from SegHiResGradCAMLib import explain
from SegHiResGradCAMLib.cam.sliding_window import sliding_window_logits
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.models.formats import ModelSource, read_model_card
from SegHiResGradCAMLib.pipeline import ExplainJob, run
from SegHiResGradCAMLib.volumes.volume_io import reorient

COMMON = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network": "$@network_def.to(@device)",
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": True,
    },
    "checkpointloader": {
        "_target_": "CheckpointLoader",
        "load_path": "$@bundle_root + '/models/model.pt'",
        "load_dict": {"model": "@network"},
    },
    "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}
SAVE = {
    "_target_": "SaveImaged",
    "keys": "pred",
    "output_dir": "@output_dir",
    "output_postfix": "trans",
    "separate_folder": True,
    "output_dtype": "$numpy.uint8",
}


def load(keys="image"):
    return [{"_target_": "LoadImaged", "keys": keys}, {"_target_": "EnsureChannelFirstd", "keys": keys}]


def windowed_preprocessing(pixdim, a_min, a_max):
    """The preprocessing the spleen and BTCV bundles share: RAS, resampled to ``pixdim``, HU
    window [a_min, a_max] scaled to [0, 1]."""
    return {
        "_target_": "Compose",
        "transforms": [
            *load(),
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": a_min,
                "a_max": a_max,
                "b_min": 0.0,
                "b_max": 1.0,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    }


# The spleen and BTCV bundles' postprocessing: softmax, inverted (linearly) to the CT, argmax, saved.
SOFTMAX_INVERT_ARGMAX = {
    "_target_": "Compose",
    "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {
            "_target_": "Invertd",
            "keys": "pred",
            "transform": "@preprocessing",
            "orig_keys": "image",
            "nearest_interp": False,
            "to_tensor": True,
        },
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        SAVE,
    ],
}


SPLEEN = {
    **COMMON,
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "num_res_units": 1,
        "norm": "batch",
    },
    "preprocessing": windowed_preprocessing(pixdim=[2.5, 2.5, 3.0], a_min=-57, a_max=164),
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [48, 48, 32], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": SOFTMAX_INVERT_ARGMAX,
}
WHOLE_BODY = {
    **COMMON,
    "displayable_configs": {"highres": False, "sw_overlap": 0.25, "sw_batch_size": 1},
    "image_key": "image",
    "pixdim": "$[1.5, 1.5, 1.5] if @displayable_configs#highres else [3.0, 3.0, 3.0]",
    "network_def": {
        "_target_": "SegResNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 4,
        "init_filters": 8,
        "blocks_down": [1, 1, 1],
        "blocks_up": [1, 1],
        "dropout_prob": 0.2,
    },
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "@image_key"},
            {"_target_": "EnsureTyped", "keys": "@image_key"},
            {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
            {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "@image_key", "pixdim": "@pixdim", "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "@image_key", "nonzero": True},
            {"_target_": "ScaleIntensityd", "keys": "@image_key", "minv": -1.0, "maxv": 1.0},
        ],
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": [48, 48, 48],
        "sw_batch_size": "@displayable_configs#sw_batch_size",
        "overlap": "@displayable_configs#sw_overlap",
        "padding_mode": "replicate",
        "mode": "gaussian",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "@image_key",
                "nearest_interp": True,
                "to_tensor": True,
            },
            SAVE,
        ],
    },
}
BTCV = {
    **COMMON,
    "network_def": {
        "_target_": "SwinUNETR",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "feature_size": 12,
        "depths": [1, 1, 1, 1],
        "use_checkpoint": False,
    },
    "preprocessing": windowed_preprocessing(pixdim=[3.0, 3.0, 4.0], a_min=-175, a_max=250),
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 32], "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": SOFTMAX_INVERT_ARGMAX,
}
SHAPES = {
    "spleen_ct_segmentation": (SPLEEN, "json"),
    "wholeBody_ct_segmentation": (WHOLE_BODY, "json"),
    "swin_unetr_btcv_segmentation": (BTCV, "yaml"),
}


def write_bundle(folder: Path, config: dict, form: str, seed: int = 0) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    network = {key: value for key, value in config["network_def"].items() if not key.startswith("_")}
    torch.manual_seed(seed)
    torch.save(getattr(nets, config["network_def"]["_target_"])(**network).state_dict(), folder / "models" / "model.pt")
    if form == "json":
        (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    else:
        (folder / "configs" / "inference.yaml").write_text(yaml.safe_dump(config))
    classes = {
        str(i): name for i, name in enumerate(["background", "kidney", "tumour", "cyst"][: network["out_channels"]])
    }
    metadata = {"name": folder.name, "network_data_format": {"outputs": {"pred": {"channel_def": classes}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def las_ct(tmp_path_factory):
    """A KiTS-like CT stored LAS (not RAS) with anisotropic spacing, and its kidney segment."""
    folder = tmp_path_factory.mktemp("las_ct")
    ct, labels = case_images(make_case(9, Grid.centred((96, 80, 36), (2.2, 2.2, 3.5))))
    sitk.WriteImage(reorient(ct, "LAS"), str(folder / "ct.nii.gz"))
    sitk.WriteImage(reorient(sitk.Cast(labels == 1, sitk.sitkUInt8), "LAS"), str(folder / "kidney.nii.gz"))
    return folder


def monai_own_run(bundle: Path, ct: Path, output: Path) -> np.ndarray:
    """The bundle run by MONAI itself, as `python -m monai.bundle run` runs it; its label map."""
    configs = bundle / "configs"
    config_file = next(configs.glob("inference.*"))
    code = (
        "import sys; from monai.bundle import run; "
        f"run(run_id='run', config_file={str(config_file)!r}, meta_file={str(configs / 'metadata.json')!r}, "
        f"logging_file=False, bundle_root={str(bundle)!r}, datalist=[{str(ct)!r}], output_dir={str(output)!r})"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (written,) = output.rglob("*_trans.nii.gz")
    return sitk.GetArrayFromImage(sitk.ReadImage(str(written)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_model_zoo_bundle_predicts_as_monai_runs_it_and_its_map_lies_on_the_ct(shape, las_ct, tmp_path):
    config, form = SHAPES[shape]
    bundle = write_bundle(tmp_path / shape, config, form)
    ct_path = las_ct / "ct.nii.gz"
    theirs = monai_own_run(bundle, ct_path, tmp_path / "monai")
    job = ExplainJob(
        image=ct_path,
        target_class="kidney",
        methods=["seg-hires-grad-cam"],
        heatmaps=[tmp_path / "heat.nrrd"],
        model=ModelSource(bundle, trust_bundle=True),
        mask=las_ct / "kidney.nii.gz",
        prediction=tmp_path / "prediction.nii.gz",
    )
    run(job)
    ct = sitk.ReadImage(str(ct_path))
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "prediction.nii.gz")))
    assert ours.shape == theirs.shape
    agreement = (ours == theirs).mean()
    print(f"{shape}: {agreement:.6f} of {ours.size} voxels agree with MONAI's own run")
    assert agreement >= 0.999, agreement
    assert len(np.unique(theirs)) > 1  # the comparison is not between two empty maps
    heat = sitk.ReadImage(str(tmp_path / "heat.nrrd"))
    assert heat.GetSize() == ct.GetSize() and heat.GetSpacing() == pytest.approx(ct.GetSpacing())
    assert heat.GetOrigin() == pytest.approx(ct.GetOrigin()) and heat.GetDirection() == pytest.approx(ct.GetDirection())
    values = sitk.GetArrayFromImage(heat)  # normalised on the bundle's grid, then inverted linearly
    assert 0.5 < values.max() <= 1.0 and values.min() >= 0.0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_the_network_sees_monai_s_preprocessed_tensor_and_the_logits_equal_its_inferer(shape, las_ct, tmp_path):
    from monai.transforms import Compose

    config, form = SHAPES[shape]
    bundle = write_bundle(tmp_path / shape, config, form)
    card = read_model_card(bundle, trust_bundle=True).resolved()
    ct_path = las_ct / "ct.nii.gz"
    prepared = card.prepare_input(sitk.ReadImage(str(ct_path)), ct_path)
    preprocessing = card.parsed("preprocessing")
    expected = Compose(preprocessing.transforms)({"image": str(ct_path)})["image"]
    network_input = torch.from_numpy(card.to_network_axes(prepared.array))
    assert torch.equal(network_input, expected.as_tensor().float())
    network = card.build_network()
    ours = sliding_window_logits(network, network_input, card.tiling)
    with torch.no_grad():
        theirs = card.parsed("inferer")(expected.as_tensor()[None].float(), network)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_windowed_attribution_under_the_bundle_s_blending_sums_to_t(las_ct, tmp_path):
    """A bias-free network in the wholeBody layout (Gaussian blending, replicate padding):
    the windowed Seg-HiRes-Grad CAM map still sums to T, the blended output's target."""
    network = {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 4,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
        "act": "RELU",
        "norm": None,
        "bias": False,
    }
    config = {**WHOLE_BODY, "network_def": network}
    bundle = write_bundle(tmp_path / "bias_free", config, "json")
    card = read_model_card(bundle, trust_bundle=True).resolved()
    ct_path = las_ct / "ct.nii.gz"
    prepared = card.prepare_input(sitk.ReadImage(str(ct_path)), ct_path)
    assert card.tiling.padding_mode == "replicate" and card.overlap == 0.25
    mask = prepared.mask_to_model(sitk.ReadImage(str(las_ct / "kidney.nii.gz")))
    with pytest.raises(ExplainInputError, match="no voxel inside the CT's field of view on the bundle's grid"):
        prepared.mask_to_model(sitk.ReadImage(str(las_ct / "kidney.nii.gz")) * 0)
    result = explain(
        card.build_network(),
        card.to_network_axes(prepared.array),
        1,
        mask=card.volume_to_network_axes(mask),
        layer="model.1",
        window=card.tiling,
    )
    assert abs(result.target_score) > 1e-3
    assert result.raw.sum(dtype=np.float64) == pytest.approx(result.target_score, rel=1e-4)


def refused(tmp_path, bundle: Path, capsys, trust=True) -> str:
    out = tmp_path / "out" / "heat.nrrd"
    arguments = [
        "explain",
        "--image",
        str(tmp_path / "ct.nii.gz"),
        "--model",
        str(bundle),
        "--target-class",
        "1",
        "--from-prediction",
        "--out",
        str(out),
        "--prediction",
        str(tmp_path / "out" / "labels.nrrd"),
        "--progress",
        "none",
        *(["--trust-bundle"] if trust else []),
    ]
    capsys.readouterr()
    assert cli_main(arguments) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("seghiresgradcam: error: ")
    assert not (tmp_path / "out").exists()
    return err[0]


@pytest.fixture
def small_ct(tmp_path, las_ct):
    (tmp_path / "ct.nii.gz").write_bytes((las_ct / "ct.nii.gz").read_bytes())
    return tmp_path


def test_an_untrusted_bundle_is_refused_before_anything_in_it_is_evaluated(small_ct, capsys):
    marker = small_ct / "bundle-code-ran"
    touching = f"$__import__('pathlib').Path({str(marker)!r}).touch() or 3"  # runs when evaluated
    config = {**SPLEEN, "network_def": {**SPLEEN["network_def"], "kernel_size": touching}}
    bundle = write_bundle(small_ct / "untrusted", {**config, "network_def": SPLEEN["network_def"]}, "json")
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    assert "--trust-bundle" in refused(small_ct, bundle, capsys, trust=False)
    assert not marker.exists()
    with pytest.raises(ExplainInputError, match="trust"):
        read_model_card(bundle)


def test_a_preprocessing_that_monai_cannot_invert_is_refused_naming_the_transform(small_ct, capsys):
    transforms = [*SPLEEN["preprocessing"]["transforms"], {"_target_": "SqueezeDimd", "keys": "image", "dim": 0}]
    config = {**SPLEEN, "preprocessing": {"_target_": "Compose", "transforms": transforms}}
    message = refused(small_ct, write_bundle(small_ct / "squeezing", config, "json"), capsys)
    assert "SqueezeDimd" in message and "cannot invert" in message


def test_a_bundle_without_network_def_or_weights_or_with_damaged_weights_is_refused(small_ct, capsys):
    no_network = write_bundle(small_ct / "no_network", SPLEEN, "json")
    (no_network / "configs" / "inference.json").write_text(
        json.dumps({k: v for k, v in SPLEEN.items() if k != "network_def"})
    )
    assert "has no network_def" in refused(small_ct, no_network, capsys)
    no_weights = write_bundle(small_ct / "no_weights", SPLEEN, "json")
    (no_weights / "models" / "model.pt").unlink()
    assert "does not exist" in refused(small_ct, no_weights, capsys)
    damaged = write_bundle(small_ct / "damaged", SPLEEN, "json")
    (damaged / "models" / "model.pt").write_bytes((damaged / "models" / "model.pt").read_bytes()[:300])
    assert "Cannot load weights" in refused(small_ct, damaged, capsys)


def test_a_bundle_of_several_input_images_is_refused(small_ct, capsys):
    transforms = [*load(["image", "venous"]), *SPLEEN["preprocessing"]["transforms"][2:]]
    config = {**SPLEEN, "preprocessing": {"_target_": "Compose", "transforms": transforms}}
    assert "several input images" in refused(small_ct, write_bundle(small_ct / "two_phases", config, "json"), capsys)


def test_slicer_refuses_an_untrusted_bundle_before_creating_anything(tmp_path):
    from mrml_scene import new_scene, phantom_volume
    from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings

    bundle = write_bundle(tmp_path / "bundle", SPLEEN, "json")
    scene = new_scene()
    volume, _ = phantom_volume(scene)
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(ExplainInputError, match="Trust this MONAI bundle"):
        ExplainRun(ExplainSettings(volume, "kidney", model=bundle))
    assert scene.GetNumberOfNodes() == nodes


def test_reading_a_bundle_s_card_evaluates_nothing_and_loads_no_torch(tmp_path):
    """The Slicer process reads a trusted bundle's classes without MONAI or torch."""
    bundle = write_bundle(tmp_path / "bundle", WHOLE_BODY, "json")
    code = (
        f"import sys; from SegHiResGradCAMLib.models.formats import read_model_card; "
        f"card = read_model_card({str(bundle)!r}, trust_bundle=True); "
        "print(card.classes, card.head, 'torch' in sys.modules, 'monai' in sys.modules)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "('background', 'kidney', 'tumour', 'cyst') softmax False False"


def test_a_ct_that_is_not_nifti_is_given_to_the_bundle_as_the_same_image(las_ct, tmp_path):
    """Slicer exports NRRD, which MONAI's default reader cannot read: the validated image goes
    to the bundle as a temporary NIfTI, and the result is the same as from the NIfTI itself."""
    bundle = write_bundle(tmp_path / "spleen", SPLEEN, "json")
    nrrd = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(las_ct / "ct.nii.gz")), str(nrrd))
    predictions = {}
    for name, image in (("nifti", las_ct / "ct.nii.gz"), ("nrrd", nrrd)):
        job = ExplainJob(
            image=image,
            target_class="kidney",
            methods=["seg-hires-grad-cam"],
            heatmaps=[tmp_path / f"{name}-heat.nrrd"],
            model=ModelSource(bundle, trust_bundle=True),
            mask=las_ct / "kidney.nii.gz",
            prediction=tmp_path / f"{name}-labels.nrrd",
        )
        run(job)
        predictions[name] = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{name}-labels.nrrd")))
    assert (predictions["nifti"] == predictions["nrrd"]).mean() >= 0.999
    assert not list(Path(tempfile.gettempdir()).glob("seghiresgradcam-bundle-*"))


def test_network_arguments_given_as_references_and_expressions_are_evaluated_as_monai_does(small_ct, tmp_path):
    """``"spatial_dims": "@spatial_dims"`` and ``"$..."`` expressions are ordinary in MONAI
    configs: the run reads the evaluated values and explains as the literal bundle does."""
    network = {
        **SPLEEN["network_def"],
        "spatial_dims": "@spatial_dims",
        "in_channels": "$1",
        "out_channels": "@classes",
    }
    literal = write_bundle(tmp_path / "literal", SPLEEN, "json")
    referring = write_bundle(tmp_path / "referring", SPLEEN, "json")
    (referring / "configs" / "inference.json").write_text(
        json.dumps({**SPLEEN, "spatial_dims": 3, "classes": 2, "network_def": network})
    )
    maps = []
    for bundle in (literal, referring):
        out = tmp_path / bundle.name / "heat.nrrd"
        arguments = [
            "explain",
            "--image",
            str(small_ct / "ct.nii.gz"),
            "--model",
            str(bundle),
            "--trust-bundle",
            "--target-class",
            "1",
            "--from-prediction",
            "--out",
            str(out),
            "--progress",
            "none",
        ]
        assert cli_main(arguments) == 0
        maps.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    np.testing.assert_array_equal(maps[0], maps[1])


def test_a_network_def_that_is_not_a_torch_network_is_refused_naming_what_it_is(small_ct, capsys):
    config = {**SPLEEN, "network_def": {"_target_": "ScaleIntensity", "minv": 0.0, "maxv": 1.0}}
    bundle = write_bundle(small_ct / "not_a_network", SPLEEN, "json")
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    message = refused(small_ct, bundle, capsys)
    assert "network_def" in message and "ScaleIntensity" in message and "not a torch network" in message


def test_questions_about_one_ct_kept_between_runs_give_the_maps_of_fresh_runs(las_ct, tmp_path):
    """The warm worker's reuse with a bundle (its own preprocessing and inverse): a second
    method and a second layer run no inference and give the fresh runs' maps."""
    config, form = SHAPES["spleen_ct_segmentation"]
    bundle = write_bundle(tmp_path / "bundle", config, form)

    def make_job(question, out):
        method, layer = question
        return ExplainJob(
            image=las_ct / "ct.nii.gz",
            target_class="1",
            methods=[method],
            heatmaps=[out],
            model=ModelSource(bundle, trust_bundle=True),
            mask=las_ct / "kidney.nii.gz",
            layer=layer,
        )

    questions = [("seg-hires-grad-cam", None), ("seg-grad-cam", None), ("seg-hires-grad-cam", "stage-below-finest")]
    assert_warm_maps_equal_cold(make_job, questions, tmp_path)
