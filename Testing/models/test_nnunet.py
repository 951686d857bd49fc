"""nnU-Net v2 results folders: built by nnU-Net's own planner and trainer (nnunet_results.py),
run with nnU-Net's own preprocessing, sliding-window geometry and export, and compared with
nnUNetPredictor itself (without mirroring, which would make the explained computation
another)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import assert_warm_maps_equal_cold
from SegHiResGradCAMLib.cam.engine import explain, upsample_to
from SegHiResGradCAMLib.cam.ensemble import FoldEnsemble, ensemble_members
from SegHiResGradCAMLib.cam.slices import slice_logits
from SegHiResGradCAMLib.cam.sliding_window import blend_count, sliding_window_logits
from SegHiResGradCAMLib.cam.volume_runner import explain_on_model_grid
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.models.formats import ModelSource, read_model_card
from SegHiResGradCAMLib.pipeline import ExplainJob, anatomy_regions

BUILDER = Path(__file__).with_name("nnunet_results.py")
# A case larger than the 3D patch (16 x 48 x 48 after preprocessing: 12 windows), on another
# grid than the training cases, with its own anatomy.
CASE = (11, Grid.centred((80, 72, 24), (5.5, 6.0, 8.0)))
# The same anatomy on a smaller field of view (18 x 48 x 51: 4 windows, two axes overlapping):
# for the tests that explain a fold ensemble several times, where what is checked is how the
# folds' and the runs' maps relate, not nnU-Net's blend over many windows.
SMALL_CASE = (11, Grid.centred((56, 48, 20), (5.5, 6.0, 8.0)))
# nnUNetPredictor accumulates in float16 with a float16 Gaussian: where only the far corners
# of windows reach (Gaussian sum below this), its weights are subnormal and its blend differs;
# everywhere else it agrees with our float32 blend to float16 rounding.
RELIABLE_WEIGHT = 1e-3
FLOAT16_TOLERANCE = 0.02


def _cached_build() -> Path:
    """The folder nnU-Net's own planner and trainer make (BUILDER), made once per nnU-Net and
    torch version and builder source and kept on disk (SEGHIRESGRADCAM_TEST_CACHE, default
    ~/.cache/seghiresgradcam-tests): a clean checkout builds it, a second run reuses it."""
    import hashlib
    import tempfile
    from importlib.metadata import version

    versions = [version(name) for name in ("nnunetv2", "dynamic-network-architectures", "torch")]
    key = hashlib.sha256((repr(versions) + BUILDER.read_text(encoding="utf-8")).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("SEGHIRESGRADCAM_TEST_CACHE", Path.home() / ".cache" / "seghiresgradcam-tests"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:  # a home without room or rights: build in the temporary folder instead
        cache = Path(tempfile.gettempdir()) / "seghiresgradcam-tests"
        cache.mkdir(parents=True, exist_ok=True)
    built = cache / f"nnunet-{key}"
    if not built.is_dir():
        scratch = Path(tempfile.mkdtemp(prefix="nnunet-build-", dir=cache))
        command = [sys.executable, str(BUILDER), str(scratch)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert completed.returncode == 0, completed.stderr[-3000:]
        try:
            scratch.rename(built)  # whole or not at all, also when two runs build at once
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
    return built


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nnunet")
    shutil.copytree(_cached_build() / "results", root / "results")  # the tests' own copy
    return root / "results" / "Dataset901_KiTSLike"


@pytest.fixture(scope="module")
def fullres(results) -> Path:
    return results / "nnUNetTrainer__nnUNetPlans__3d_fullres"


@pytest.fixture(scope="module")
def case():
    return case_images(make_case(*CASE))


@pytest.fixture(scope="module")
def small_case():
    return case_images(make_case(*SMALL_CASE))


def reference_predictor(folder: Path, folds):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5,
        use_gaussian=True,
        use_mirroring=False,
        perform_everything_on_device=False,
        device=torch.device("cpu"),
        allow_tqdm=False,
    )
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds))
    return predictor


def nnunet_read(ct: sitk.Image):
    """The CT as nnU-Net's SimpleITKIO reader returns it."""
    properties = {
        "sitk_stuff": {"spacing": ct.GetSpacing(), "origin": ct.GetOrigin(), "direction": ct.GetDirection()},
        "spacing": list(ct.GetSpacing())[::-1],
    }
    return sitk.GetArrayFromImage(ct).astype(np.float32)[None], properties


def reference_logits(predictor, ct):
    data, properties = nnunet_read(ct)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, properties = preprocessor.run_case_npy(
        data, None, properties, predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    )
    return data, predictor.predict_logits_from_preprocessed_data(torch.from_numpy(data)).float()


@pytest.mark.slow
def test_region_based_card_names_the_regions_as_nnunet_does(fullres):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    card = read_model_card(fullres)
    plans = json.loads((fullres / "plans.json").read_text(encoding="utf-8"))
    dataset = json.loads((fullres / "dataset.json").read_text(encoding="utf-8"))
    label_manager = PlansManager(plans).get_label_manager(dataset)
    assert card.head == "sigmoid" and card.classes == ("kidney", "masses", "tumor")
    assert [tuple(np.atleast_1d(r)) for r in label_manager.foreground_regions] == card.nnunet.regions
    assert len(card.classes) == label_manager.num_segmentation_heads
    # the exported label map writes regions_class_order[i] where region i wins
    assert card.prediction_labels == {1: 0, 3: 1, 2: 2}
    assert card.nnunet.folds == ("0", "1") and card.window == (16, 48, 48)
    assert card.spacing == (6.0, 6.0, 9.0)  # (x, y, z), as every model card (nnU-Net's own: z, y, x)


def test_class_colours_start_after_the_background_for_labels_and_regions():
    from SegHiResGradCAMLib.models.nnunet_folder import COLOURS, _colours

    labels = _colours(("background", "kidney", "tumor", "cyst"))
    regions = _colours(("kidney", "masses", "tumor"))
    assert labels[0] == (0.0, 0.0, 0.0) and labels[1:] == COLOURS[:3] and regions == COLOURS[:3]


def test_logits_and_labels_match_nnunet_predictor(fullres, case):
    ct, _ = case
    card = read_model_card(fullres, folds=["0"])
    prepared = card.prepare_input(ct)
    predictor = reference_predictor(fullres, [0])
    their_input, their_logits = reference_logits(predictor, ct)
    assert np.array_equal(prepared.array, their_input)  # nnU-Net's own preprocessing, bit for bit

    grid = card.tiling.grid(prepared.array.shape[1:])
    their_starts = [
        tuple(s.start for s in slicer[1:])
        for slicer in predictor._internal_get_sliding_window_slicers(prepared.array.shape[1:])
    ]
    assert list(grid.starts) == their_starts and len(grid.starts) > 4

    network = card.build_network()
    ours = sliding_window_logits(network, prepared.array, card.tiling)
    reliable = blend_count(grid, card.tiling.window_weights(grid)) >= RELIABLE_WEIGHT
    assert reliable.float().mean() > 0.7
    difference = (ours - their_logits).abs().amax(0)
    assert difference[reliable].max() < FLOAT16_TOLERANCE, difference[reliable].max()
    assert ours.abs().max() > 1.0  # the comparison is not of near-zero outputs

    data, properties = nnunet_read(ct)
    their_labels = predictor.predict_single_npy_array(data, properties)
    our_labels = prepared.labels_on_original(ours.numpy(), card.head)
    assert our_labels.GetSize() == ct.GetSize() and our_labels.GetDirection() == ct.GetDirection()
    assert our_labels.GetOrigin() == ct.GetOrigin() and our_labels.GetSpacing() == ct.GetSpacing()
    agreement = (sitk.GetArrayFromImage(our_labels) == their_labels).mean()
    assert agreement > 0.995, agreement


@pytest.mark.slow
def test_fold_ensemble_is_the_mean_of_the_folds(fullres, case):
    ct, _ = case
    card = read_model_card(fullres)
    prepared = card.prepare_input(ct)
    ensemble = card.build_network()
    assert isinstance(ensemble, FoldEnsemble) and len(ensemble_members(ensemble)) == 2
    per_fold = [sliding_window_logits(member, prepared.array, card.tiling) for member in ensemble_members(ensemble)]
    ours = sliding_window_logits(ensemble, prepared.array, card.tiling)
    torch.testing.assert_close(ours, (per_fold[0] + per_fold[1]) / 2, atol=1e-5, rtol=1e-5)
    assert (per_fold[0] - per_fold[1]).abs().max() > 0.1  # the folds differ, so the mean means something

    _, their_logits = reference_logits(reference_predictor(fullres, [0, 1]), ct)
    reliable = (
        blend_count(
            card.tiling.grid(prepared.array.shape[1:]),
            card.tiling.window_weights(card.tiling.grid(prepared.array.shape[1:])),
        )
        >= RELIABLE_WEIGHT
    )
    assert (ours - their_logits).abs().amax(0)[reliable].max() < FLOAT16_TOLERANCE


@pytest.mark.slow
def test_ensemble_explanation_is_the_mean_of_the_fold_explanations(fullres, small_case, tmp_path):
    ct, labels = small_case
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(sitk.Equal(labels, 2), str(tmp_path / "tumour.nii.gz"))
    card = read_model_card(fullres)
    prepared = card.prepare_input(ct)
    assert len(card.tiling.grid(prepared.array.shape[1:]).starts) > 1, "blended over several windows"
    mask = prepared.mask_to_model(sitk.Equal(labels, 2))
    ensemble = card.build_network()
    tumour = card.class_index("tumor")
    folds = [
        explain(member, prepared.array, tumour, mask=mask, head="sigmoid", window=card.tiling)
        for member in ensemble_members(ensemble)
    ]
    assert not np.allclose(folds[0].raw, folds[1].raw)

    # The pipeline's explanation of the ensemble: signed map = mean of the folds' signed maps,
    # T = mean of their T (= sum over M of the ensemble's blended logits).
    heatmap, cam = explain_on_model_grid(
        ensemble, card, prepared.array, tumour, mask, "seg-hires-grad-cam", None, "cpu"
    )
    expected_raw = (folds[0].raw + folds[1].raw) / 2
    np.testing.assert_allclose(cam.raw, expected_raw, rtol=1e-4, atol=1e-5 * np.abs(expected_raw).max())
    assert cam.target_score == pytest.approx(np.mean([fold.target_score for fold in folds]), rel=1e-4)
    blended = sliding_window_logits(ensemble, prepared.array, card.tiling)
    assert cam.target_score == pytest.approx(float(blended[tumour][torch.from_numpy(mask)].sum()), rel=1e-3)
    np.testing.assert_allclose(
        heatmap, upsample_to(torch.from_numpy(expected_raw).clamp(min=0), mask.shape).numpy(), rtol=1e-4, atol=1e-6
    )

    # The command line writes it normalised, back on the CT by nnU-Net's export path.
    out, summary = tmp_path / "heat.nrrd", tmp_path / "summary.json"
    code = cli_main(
        [
            "explain",
            "--image",
            str(tmp_path / "ct.nii.gz"),
            "--model",
            str(fullres),
            "--target-class",
            "tumor",
            "--mask",
            str(tmp_path / "tumour.nii.gz"),
            "--out",
            str(out),
            "--summary",
            str(summary),
            "--prediction",
            str(tmp_path / "prediction.nrrd"),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    score = json.loads(summary.read_text(encoding="utf-8"))["methods"]["seg-hires-grad-cam"]["target_score"]
    assert score == pytest.approx(cam.target_score, rel=1e-4)
    normalized = heatmap / heatmap.max() if heatmap.max() > 0 else heatmap
    written = sitk.ReadImage(str(out))
    assert written.GetSize() == ct.GetSize() and written.GetOrigin() == ct.GetOrigin()
    assert written.GetDirection() == ct.GetDirection() and written.GetSpacing() == ct.GetSpacing()
    expected_on_ct = sitk.GetArrayFromImage(prepared.to_original(normalized.astype(np.float32)))
    np.testing.assert_allclose(sitk.GetArrayFromImage(written), expected_on_ct, atol=1e-5)


def test_2d_configuration_runs_slice_by_slice_like_nnunet(results, case):
    ct, _ = case
    folder = results / "nnUNetTrainer__nnUNetPlans__2d"
    card = read_model_card(folder)
    assert card.spatial_dims == 2
    prepared = card.prepare_input(ct)
    predictor = reference_predictor(folder, [0])
    their_input, their_logits = reference_logits(predictor, ct)
    assert np.array_equal(prepared.array, their_input)
    ours = slice_logits(card.build_network(), prepared.array, card.tiling)
    reliable = (
        blend_count(
            card.tiling.grid(prepared.array.shape[2:]),
            card.tiling.window_weights(card.tiling.grid(prepared.array.shape[2:])),
        )
        >= RELIABLE_WEIGHT
    )
    difference = (ours - their_logits).abs().amax(0)  # (slices, rows, columns)
    assert difference[:, reliable].max() < FLOAT16_TOLERANCE


def test_layers_command_lists_the_nnunet_network(fullres, capsys):
    assert cli_main(["layers", "--model", str(fullres), "--json"]) == 0  # both folds: an ensemble
    layers = json.loads(capsys.readouterr().out)
    assert any(layer["recommended"] for layer in layers)
    assert all(not layer["name"].startswith("members.") for layer in layers)


def test_refusals_say_what_is_wrong(fullres, tmp_path):
    with pytest.raises(ExplainInputError, match=r"fold 7.*folds that have one: 0, 1"):
        read_model_card(fullres, folds=["7"])
    with pytest.raises(ExplainInputError, match="holds trained configurations: give one of them"):
        read_model_card(fullres.parent)
    for missing in ("plans.json", "dataset.json"):
        broken = tmp_path / missing / fullres.name
        shutil.copytree(fullres, broken)
        (broken / missing).unlink()
        with pytest.raises(ExplainInputError, match=f"has no {missing}: give the folder of one trained"):
            read_model_card(broken)


def test_plans_cannot_name_code_to_import(fullres, tmp_path):
    folder = tmp_path / fullres.name
    shutil.copytree(fullres, folder)
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    for name in ("subprocess.Popen", "dynamic_network_architectures.architectures.unet.torch.load"):
        plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = name
        (folder / "plans.json").write_text(json.dumps(plans))
        with pytest.raises(ExplainInputError, match="only nnU-Net's own architectures"):
            read_model_card(folder).build_network()
    plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"] = (
        "dynamic_network_architectures.architectures.unet.PlainConvUNet"
    )
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["nonlin"] = "os.system"
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ExplainInputError, match=r"only torch\.nn building blocks"):
        read_model_card(folder).build_network()


def test_checkpoint_that_would_run_code_is_refused_and_the_code_never_runs(fullres, tmp_path):
    folder = tmp_path / fullres.name
    shutil.copytree(fullres, folder)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"network_weights": {}, "trainer_name": Payload()}, folder / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(ExplainInputError, match="never code"):
        read_model_card(folder, folds=["0"]).build_network()
    assert not marker.exists()
    (folder / "fold_1" / "checkpoint_final.pth").write_bytes(b"truncated")
    with pytest.raises(ExplainInputError, match="damaged"):
        read_model_card(folder, folds=["1"]).build_network()


def test_missing_nnunet_says_how_to_install(fullres, monkeypatch):
    card = read_model_card(fullres)  # reading the folder needs neither nnU-Net nor torch
    for name in [name for name in sys.modules if name.startswith("nnunetv2")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    with pytest.raises(ExplainInputError, match=r"pip install --no-deps -r requirements-nnunet.txt"):
        card.build_network()


def test_reading_the_folder_imports_neither_torch_nor_nnunet(fullres):
    """The Slicer process reads class names and folds from the folder, and must never import torch."""
    code = (
        "import sys; from SegHiResGradCAMLib.models.formats import read_model_card; "
        f"card = read_model_card({str(fullres)!r}); print(card.classes, card.window); "
        "assert 'torch' not in sys.modules and 'nnunetv2' not in sys.modules, 'imported'"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr
    assert "('kidney', 'masses', 'tumor') (16, 48, 48)" in completed.stdout


@pytest.mark.slow
def test_slicer_run_with_an_nnunet_folder_names_the_predicted_regions(fullres):
    import slicer

    from mrml_scene import finish, matrix_of, new_scene, phantom_volume, segment_from_labels
    from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings

    scene = new_scene()
    volume, case = phantom_volume(scene)
    segmentation, segment_id = segment_from_labels(scene, volume, case.labels, 2, "tumour")
    run = ExplainRun(
        ExplainSettings(
            volume,
            "tumor",
            segmentation_node=segmentation,
            segment_id=segment_id,
            model=ModelSource(fullres, folds=("0",)),
            with_prediction=True,
        )
    )
    status = finish(run)
    assert status.state == "finished", status.message
    assert run.heatmap_node.GetName() == "CT - tumour - Seg-HiRes-Grad CAM"
    np.testing.assert_allclose(matrix_of(run.heatmap_node), matrix_of(volume), rtol=0, atol=1e-12)
    assert slicer.util.arrayFromVolume(run.heatmap_node).shape == slicer.util.arrayFromVolume(volume).shape
    segments = run.prediction_node.GetSegmentation()
    named = {
        segments.GetNthSegment(i).GetLabelValue(): segments.GetNthSegment(i).GetName()
        for i in range(segments.GetNumberOfSegments())
    }
    # nnU-Net exports region i as label regions_class_order[i]: 1 kidney, 3 masses, 2 tumour
    assert named and all({1: "kidney", 3: "masses", 2: "tumor"}[label] == name for label, name in named.items())


def test_reorienting_reader_matches_nnunet_file_prediction(fullres, case, tmp_path):
    """SimpleITKIOWithReorient reads the CT turned to RAS and writes results turned back: our
    prediction, written in the CT's geometry, equals nnU-Net's own file-to-file prediction."""
    ct, _ = case
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ct.GetDirection()) != "RAS"
    folder = tmp_path / fullres.name
    shutil.copytree(fullres, folder)
    plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    plans["image_reader_writer"] = "SimpleITKIOWithReorient"
    (folder / "plans.json").write_text(json.dumps(plans))
    sitk.WriteImage(ct, str(tmp_path / "case_0000.nii.gz"))
    predictor = reference_predictor(folder, [0])
    (tmp_path / "nnunet").mkdir()
    predictor.predict_from_files_sequential([[str(tmp_path / "case_0000.nii.gz")]], str(tmp_path / "nnunet"))
    theirs = sitk.ReadImage(str(tmp_path / "nnunet" / "case.nii.gz"))

    card = read_model_card(folder, folds=["0"])
    prepared = card.prepare_input(ct)
    ours = prepared.labels_on_original(
        sliding_window_logits(card.build_network(), prepared.array, card.tiling).numpy(), card.head
    )
    for image in (ours, theirs):
        assert image.GetSize() == ct.GetSize() and image.GetOrigin() == pytest.approx(ct.GetOrigin())
        assert image.GetDirection() == pytest.approx(ct.GetDirection())
    agreement = (sitk.GetArrayFromImage(ours) == sitk.GetArrayFromImage(theirs)).mean()
    assert agreement > 0.995, agreement
    # the reader really turned the array: the preprocessed input differs from the stored order's
    stored_order = read_model_card(fullres, folds=["0"]).prepare_input(ct).array
    assert stored_order.shape != prepared.array.shape or not np.array_equal(stored_order, prepared.array)


def test_metrics_count_nested_regions_only_outside_the_segment(fullres, case):
    """KiTS23 regions are nested (kidney + masses contains masses contains tumour): heat in
    M must not be credited again to the regions that contain M."""
    ct, labels = case
    card = read_model_card(fullres, folds=["0"])
    prepared = card.prepare_input(ct)
    mask = prepared.mask_to_model(sitk.Equal(labels, 2))
    # region logits as the network would give them for a correct, nested prediction
    kidney_and_masses = prepared.mask_to_model(sitk.NotEqual(labels, 0))
    logits = torch.stack([torch.from_numpy(np.where(region, 5.0, -5.0)) for region in (kidney_and_masses, mask, mask)])
    regions = anatomy_regions(card, card.class_index("tumor"), logits, prepared, mask)
    assert set(regions) == {"in kidney (predicted) outside M", "in masses (predicted) outside M", "outside body"}
    kidney = regions["in kidney (predicted) outside M"]
    assert kidney.any() and not (kidney & mask).any()
    assert np.array_equal(kidney, kidney_and_masses & ~mask)
    assert not regions["in masses (predicted) outside M"].any()  # the masses region is M itself here


def test_a_segment_outside_the_region_nnunet_keeps_is_refused(fullres, case):
    ct, labels = case
    prepared = read_model_card(fullres, folds=["0"]).prepare_input(ct)
    assert prepared.mask_to_model(sitk.Equal(labels, 2)).any()  # the real tumour is found
    with pytest.raises(ExplainInputError, match="no voxel inside the region nnU-Net keeps"):
        prepared.mask_to_model(sitk.Equal(labels, 99))


def patch_of_1024_cubed(plans, dataset):
    plans["configurations"]["3d_fullres"]["patch_size"] = [1024, 1024, 1024]


def zero_spacing(plans, dataset):
    plans["configurations"]["3d_fullres"]["spacing"] = [0, 6.0, 6.0]


def inheriting_from_itself(plans, dataset):
    plans["configurations"]["3d_fullres"]["inherits_from"] = "3d_fullres"


def label_as_text(plans, dataset):
    dataset["labels"]["tumor"] = "two"


def ignore_label_far_away(plans, dataset):
    dataset["labels"] = {"background": 0, "kidney": 1, "tumor": 2, "ignore": 99}


# name -> (what is changed in plans.json and dataset.json, what the one line says)
PLANS_CASES = {
    "a patch of 1024 cubed": (patch_of_1024_cubed, r"patch: one window of 1024 x 1024 x 1024 voxels"),
    "a spacing of 0": (zero_spacing, r"configurations.3d_fullres.spacing must be 3 positive numbers.*\[0, 6.0, 6.0\]"),
    "a configuration that inherits from itself": (
        inheriting_from_itself,
        r"configurations.3d_fullres.inherits_from makes a loop \(3d_fullres -> 3d_fullres\)",
    ),
    "a label given as text": (label_as_text, r"dataset.json: labels.tumor must be a label value.*'two'"),
    "an ignore label that is not the next value": (
        ignore_label_far_away,
        r"labels.ignore must be the value after the "
        r"last class \(3\).*got 99",
    ),
}


@pytest.mark.parametrize("name", list(PLANS_CASES))
def test_bad_plans_values_are_refused_in_one_line_naming_the_entry(name, fullres, case, tmp_path, capsys):
    folder = tmp_path / "results" / fullres.name
    shutil.copytree(fullres, folder)
    plans, dataset = (
        json.loads((folder / file).read_text(encoding="utf-8")) for file in ("plans.json", "dataset.json")
    )
    change, message = PLANS_CASES[name]
    change(plans, dataset)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    sitk.WriteImage(case[0], str(tmp_path / "ct.nrrd"))
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    out = tmp_path / "out" / "heat.nrrd"
    capsys.readouterr()
    code = cli_main(
        [
            "explain",
            "--image",
            str(tmp_path / "ct.nrrd"),
            "--model",
            str(folder),
            "--target-class",
            "tumor",
            "--from-prediction",
            "--out",
            str(out),
            "--progress",
            "none",
        ]
    )
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not out.parent.exists()
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_questions_kept_between_runs_with_a_fold_ensemble_give_the_maps_of_fresh_runs(fullres, small_case, tmp_path):
    """The warm worker's reuse with nnU-Net's preprocessing, export path and a two-fold
    ensemble: another region and another method run no inference, maps and T unchanged."""
    ct, labels = small_case
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    sitk.WriteImage(sitk.Equal(labels, 2), str(tmp_path / "tumour.nii.gz"))
    sitk.WriteImage(sitk.NotEqual(labels, 0), str(tmp_path / "kidney.nii.gz"))
    card = read_model_card(fullres)

    def make_job(question, out):
        region, mask, method = question
        return ExplainJob(
            image=tmp_path / "ct.nii.gz",
            target_class=region,
            methods=[method],
            heatmaps=[out],
            model=fullres,
            mask=tmp_path / mask,
        )

    assert len(ensemble_members(card.network())) == 2, "a fold ensemble"
    questions = [("tumor", "tumour.nii.gz", "seg-hires-grad-cam"), ("tumor", "tumour.nii.gz", "seg-grad-cam")]
    questions += [("kidney", "kidney.nii.gz", "seg-hires-grad-cam")]
    assert_warm_maps_equal_cold(make_job, questions, tmp_path)
