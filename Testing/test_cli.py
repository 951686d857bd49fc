"""The ``seghiresgradcam`` command on real files: started as a user starts it where the
process is part of what is checked (its exit code, its one-line errors, the demo), its entry
point called in the test's process where what it computes and prints is."""

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.demo.run_demo import sample_case
from SegHiResGradCAMLib.models.formats import BUNDLED_MODEL
from SegHiResGradCAMLib.volumes.volume_io import reorient

# The command as this interpreter runs it, in any environment (not a path into the source tree).
COMMAND = [sys.executable, "-m", "SegHiResGradCAMLib.cli"]
BUNDLED = BUNDLED_MODEL


def seghiresgradcam(*arguments):
    return subprocess.run([*COMMAND, *map(str, arguments)], capture_output=True, text=True)


def in_this_process(capsys, *arguments):
    """The command's entry point called here, for tests of what it computes and prints (the
    process itself, its exit and its stray output are what the tests that start one check):
    no second interpreter importing PyTorch."""
    code = cli_main([str(argument) for argument in arguments])
    printed = capsys.readouterr()
    return subprocess.CompletedProcess(arguments, code, printed.out, printed.err)


@pytest.fixture(scope="module")
def kits_like_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    ct, labels = case_images(make_case(21, Grid.centred((192, 192, 40), (1.6, 1.6, 3.0))))
    sitk.WriteImage(reorient(ct, "IPL"), str(folder / "imaging.nii.gz"))
    sitk.WriteImage(reorient(labels, "IPL"), str(folder / "segmentation.nii.gz"))
    tumour = sitk.Equal(labels, 2)
    sitk.WriteImage(tumour, str(folder / "tumour.nrrd"))  # stored in another orientation and format
    return folder


@pytest.mark.slow
def test_explain_writes_the_heatmap_and_prediction_in_the_ct_geometry(kits_like_case, tmp_path):
    ct_path = kits_like_case / "imaging.nii.gz"
    run = seghiresgradcam(
        "explain",
        "--image",
        ct_path,
        "--target-class",
        "tumour",
        "--mask",
        kits_like_case / "tumour.nrrd",
        "--out",
        tmp_path / "heat.nrrd",
        "--prediction",
        tmp_path / "prediction.nii.gz",
        "--progress",
        "none",
    )
    assert run.returncode == 0, run.stderr
    ct, heat = sitk.ReadImage(str(ct_path)), sitk.ReadImage(str(tmp_path / "heat.nrrd"))
    prediction = sitk.ReadImage(str(tmp_path / "prediction.nii.gz"))
    for result in (heat, prediction):
        assert result.GetSize() == ct.GetSize()
        assert np.allclose(result.GetSpacing(), ct.GetSpacing()) and np.allclose(result.GetOrigin(), ct.GetOrigin())
        assert np.allclose(result.GetDirection(), ct.GetDirection())
    values = sitk.GetArrayFromImage(heat)
    assert values.min() >= 0 and values.max() == pytest.approx(1.0, abs=0.02)
    assert heat.GetMetaData("seghiresgradcam_method") == "seg-hires-grad-cam"
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(kits_like_case / "segmentation.nii.gz")))
    assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= {0, 1, 2, 3}
    # The explanation of a tumour segment lies mostly in and around the kidneys, not in the air.
    assert values[truth > 0].sum() > values[sitk.GetArrayFromImage(ct) < -900].sum()


@pytest.mark.slow
def test_json_progress_is_monotone_and_ends_at_one(kits_like_case, tmp_path, capsys):
    run = in_this_process(
        capsys,
        "explain",
        "--image",
        kits_like_case / "imaging.nii.gz",
        "--target-class",
        "1",
        "--from-prediction",
        "--method",
        "seg-grad-cam",
        "--out",
        tmp_path / "heat.nii.gz",
        "--progress",
        "json",
    )
    assert run.returncode == 0, run.stderr
    fractions = [json.loads(line)["fraction"] for line in run.stdout.splitlines()]
    assert len(fractions) > 5 and fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.slow
def test_layers_lists_the_bundled_model_s_layers_with_a_recommended_one_and_the_rules(capsys):
    run = in_this_process(capsys, "layers")
    assert run.returncode == 0, run.stderr
    recommended = [line for line in run.stdout.splitlines() if "(recommended)" in line]
    assert len(recommended) == 1 and recommended[0].split()[0] == "model.1"
    staged = [line.split()[0] for line in run.stdout.splitlines() if " of 3" in line]
    assert staged == ["model.1.submodule.1.submodule.1", "model.1.submodule.1", "model.1"]
    assert "decoder stage 3 of 3" in recommended[0]
    deeper = [line for line in run.stdout.splitlines() if line.endswith("(--layer stage-below-finest)")]
    assert [line.split()[0] for line in deeper] == ["model.1.submodule.1"] and "decoder stage 2 of 3" in deeper[0]
    assert "recommended (rule last-before-head): the last layer before the output" in run.stdout
    assert "--layer stage-below-finest: the decoder stage one resolution level coarser" in run.stdout


def test_explain_help_names_every_layer_rule():
    from SegHiResGradCAMLib.cam.model_inspection import LAYER_RULES

    printed = " ".join(seghiresgradcam("explain", "--help").stdout.split())
    assert all(rule in printed for rule in LAYER_RULES)


@pytest.mark.slow
def test_explain_takes_a_layer_rule_for_a_layer(kits_like_case, tmp_path, capsys):
    """--layer stage-below-finest explains the layer that rule selects; the summary names it."""
    run = in_this_process(
        capsys,
        "explain",
        "--image",
        kits_like_case / "imaging.nii.gz",
        "--target-class",
        "1",
        "--from-prediction",
        "--layer",
        "stage-below-finest",
        "--out",
        tmp_path / "heat.nii.gz",
        "--summary",
        tmp_path / "summary.json",
        "--progress",
        "none",
    )
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))["layer"] == "model.1.submodule.1"


def test_methods_lists_every_registered_method_with_its_cost():
    from SegHiResGradCAMLib import METHODS

    listed = json.loads(seghiresgradcam("methods", "--json").stdout)
    assert [entry["name"] for entry in listed] == list(METHODS)
    assert all(entry["cost"] for entry in listed)
    assert {entry["name"] for entry in listed if not entry["sliding_windows"]} == {
        "seg-eigen-cam",
        "eigen-cam",
        "seg-score-cam",
        "seg-ablation-cam",
        "seg-occlusion",
    }


@pytest.mark.slow
def test_metrics_of_a_method_that_explains_a_crop_around_m(kits_like_case, tmp_path, capsys):
    """Seg-Eigen CAM cannot run window by window: the command explains a crop around M,
    returns the map on the whole CT, and measures it (table on stdout, JSON in a file)."""
    run = in_this_process(
        capsys,
        "explain",
        "--image",
        kits_like_case / "imaging.nii.gz",
        "--target-class",
        "tumour",
        "--mask",
        kits_like_case / "tumour.nrrd",
        "--method",
        "seg-eigen-cam",
        "--out",
        tmp_path / "heat.nrrd",
        "--metrics",
        tmp_path / "metrics.json",
        "--fractions",
        "0",
        "0.025",
        "0.05",
        "--progress",
        "none",
    )
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["mass_in_regions"]) == {"in kidney (predicted)", "in cyst (predicted)", "outside body"}
    assert metrics["mass_in_target"] + sum(metrics["mass_in_regions"].values()) <= 1 + 1e-6
    assert metrics["deletion"]["fractions"] == metrics["insertion"]["fractions"] == [0, 0.025, 0.05]
    assert len(metrics["deletion"]["scores"]) == len(metrics["insertion"]["scores"]) == 3
    assert -1 <= metrics["randomisation_similarity"] <= 1
    assert "deletion area (lower is better)" in run.stdout and "heat mass inside M" in run.stdout
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "heat.nrrd")))
    ct = sitk.ReadImage(str(kits_like_case / "imaging.nii.gz"))
    assert heat.shape == sitk.GetArrayFromImage(ct).shape and heat.max() == pytest.approx(1.0, abs=0.02)
    assert (heat == 0).mean() > 0.5  # zero outside the crop


def bad_model_files(folder: Path) -> dict:
    truncated = folder / "truncated.json"
    truncated.write_text(BUNDLED.read_text(encoding="utf-8")[:200])
    damaged_weights = folder / "damaged" / "model.json"
    damaged_weights.parent.mkdir()
    card = json.loads(BUNDLED.read_text(encoding="utf-8"))
    (damaged_weights.parent / "weights.pt").write_bytes((BUNDLED.parent / card["weights"]).read_bytes()[:5000])
    card["weights"] = "weights.pt"
    damaged_weights.write_text(json.dumps(card))
    return {"truncated": truncated, "damaged": damaged_weights, "missing": folder / "nowhere.json"}


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/seghiresgradcam-payload-ran"),))


@pytest.mark.slow
def test_a_weights_file_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = Path("/tmp/seghiresgradcam-payload-ran")
    marker.unlink(missing_ok=True)
    card = json.loads(BUNDLED.read_text(encoding="utf-8"))
    with open(tmp_path / "evil.pt", "wb") as handle:
        pickle.dump({"model.0.conv.weight": Payload()}, handle)
    card["weights"] = "evil.pt"
    (tmp_path / "evil.json").write_text(json.dumps(card))
    run = seghiresgradcam("layers", "--model", tmp_path / "evil.json")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "Only tensors are loaded, never code" in run.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_a_torchscript_model_is_refused_with_how_to_export_an_eager_one(tmp_path):
    import torch
    from monai.networks.nets import UNet

    card = json.loads(BUNDLED.read_text(encoding="utf-8"))
    network = UNet(**card["kwargs"]).eval()
    torch.jit.save(torch.jit.script(network), str(tmp_path / "compiled.pt"))
    card["weights"] = "compiled.pt"
    (tmp_path / "compiled.json").write_text(json.dumps(card))
    run = seghiresgradcam("layers", "--model", tmp_path / "compiled.json")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "TorchScript" in run.stderr and "torch.save(model.state_dict()" in run.stderr


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["missing image", "not a CT", "truncated", "damaged", "missing", "bad class"])
def test_bad_input_gives_one_clear_line_and_a_nonzero_exit(problem, kits_like_case, tmp_path):
    models = bad_model_files(tmp_path)
    image = kits_like_case / "imaging.nii.gz"
    arguments = ["--target-class", "tumour", "--from-prediction", "--out", tmp_path / "heat.nrrd"]
    if problem == "missing image":
        image = tmp_path / "no-such-ct.nii.gz"
    elif problem == "not a CT":
        image = kits_like_case / "segmentation.nii.gz"
    elif problem == "bad class":
        arguments[1] = "spleen"
    else:
        arguments += ["--model", models[problem]]
    run = seghiresgradcam("explain", "--image", image, *arguments, "--progress", "none")
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seghiresgradcam: error: ")
    assert not (tmp_path / "heat.nrrd").exists()


@pytest.mark.slow
def test_demo_writes_the_case_heatmaps_and_figure_and_reuses_the_case(tmp_path):
    first = seghiresgradcam("demo", "--out", tmp_path, "--progress", "none")
    assert first.returncode == 0, first.stderr
    for name in [
        "case_00007_ct.nii.gz",
        "case_00007_ground_truth.nii.gz",
        "prediction.nrrd",
        "heatmap_seg-grad-cam.nrrd",
        "heatmap_seg-hires-grad-cam.nrrd",
    ]:
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "in tumour" in first.stdout and "Making the synthetic" in first.stdout
    # The headline numbers come with their baselines and with what they do not show.
    assert "randomised network" in first.stdout and "flat map" in first.stdout
    assert "What it does not show" in first.stdout  # a random network also puts most heat in M at this layer
    assert "Seg-Grad CAM's map does not depend on M here" in first.stdout
    # A second run reuses the case instead of making it again (without computing it all again here).
    said, before = [], (tmp_path / "case_00007_ct.nii.gz").stat().st_mtime_ns
    assert sample_case(tmp_path, 7, said.append) == (
        tmp_path / "case_00007_ct.nii.gz",
        tmp_path / "case_00007_ground_truth.nii.gz",
    )
    assert said == [f"Reusing the sample case in {tmp_path}/"]
    assert (tmp_path / "case_00007_ct.nii.gz").stat().st_mtime_ns == before


def test_version_prints_the_package_version(capsys):
    import SegHiResGradCAMLib

    with pytest.raises(SystemExit) as stop:
        cli_main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"seghiresgradcam {SegHiResGradCAMLib.__version__}"
