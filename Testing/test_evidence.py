"""A map is only written with what a user needs to judge it: T, the class probability and the
network's own prediction inside M, and the positive and negative evidence. A map without
positive evidence is refused; a target the network does not predict is warned about in every
place the map goes (printout, summary, metrics file, the file's metadata)."""

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import bias_free_model_card, write_small_case
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.models.formats import BUNDLED_MODEL

SPACING = (6.0, 6.0, 6.0)
BUNDLED = BUNDLED_MODEL


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    folder = write_small_case(tmp_path_factory.mktemp("evidence"), SPACING)
    return folder


def card_with_head(folder, class_index: int, weights_of) -> str:
    """The bias-free UNet card whose output layer's weights for ``class_index`` are
    ``weights_of(weights)`` (shape: input channels, 3, 3, 3). The layer before the head is
    the explained one and is non-negative (ReLU), so these weights decide the evidence's sign."""
    card = bias_free_model_card(folder, SPACING)
    state = torch.load(folder / "bias_free.pt", weights_only=True)
    state["model.2.conv.weight"][:, class_index] = weights_of(state["model.2.conv.weight"][:, class_index])
    torch.save(state, folder / "bias_free.pt")
    return str(card)


def explain(folder, card, target, *extra):
    return cli_main(
        [
            "explain",
            "--image",
            str(folder / "ct.nrrd"),
            "--model",
            card,
            "--target-class",
            target,
            "--mask",
            str(folder / "kidney.nrrd"),
            "--out",
            str(folder / "heat.nrrd"),
            "--summary",
            str(folder / "summary.json"),
            "--progress",
            "none",
            *extra,
        ]
    )


def test_a_map_without_positive_evidence_is_refused_and_nothing_is_written(small_case, capsys):
    card = card_with_head(small_case, 2, lambda weights: -weights.abs())
    for method in ("seg-hires-grad-cam", "seg-grad-cam"):
        code = explain(small_case, card, "tumour", "--method", method)
        error = capsys.readouterr().err
        assert code == 4, error
        assert "no positive evidence for tumour in M at layer model.1" in error
        assert "T = -" in error and "--layer" in error
        assert not (small_case / "heat.nrrd").exists() and not (small_case / "summary.json").exists()


def test_a_target_against_the_class_is_warned_about_wherever_the_map_goes(small_case, capsys):
    """Evidence of both signs, the negative larger: T < 0, yet a normal-looking map."""
    channels = torch.arange(12).reshape(12, 1, 1, 1) < 6
    card = card_with_head(small_case, 1, lambda weights: torch.where(channels, -4 * weights.abs(), weights.abs()))
    code = explain(
        small_case,
        card,
        "kidney",
        "--metrics",
        str(small_case / "metrics.json"),
        "--signed",
        str(small_case / "signed.nrrd"),
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    summary = json.loads((small_case / "summary.json").read_text(encoding="utf-8"))
    evidence = summary["evidence"]["seg-hires-grad-cam"]
    assert evidence["target_score"] < 0 < evidence["positive_evidence"] < evidence["negative_evidence"]
    # For this bias-free network S sums to T (see test_signed_map): the masses are S's two parts.
    assert evidence["positive_evidence"] - evidence["negative_evidence"] == pytest.approx(
        evidence["target_score"], rel=1e-4
    )
    assert "warning: T = " in printed.err and "is not positive" in printed.err
    assert any("is not positive" in warning for warning in summary["warnings"])
    metrics = json.loads((small_case / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["warnings"] == summary["warnings"] and metrics["evidence"] == evidence
    for name in ("heat.nrrd", "signed.nrrd"):
        written = sitk.ReadImage(str(small_case / name))
        assert "is not positive" in written.GetMetaData("seghiresgradcam_warnings")
        assert float(written.GetMetaData("seghiresgradcam_target_score")) == pytest.approx(
            evidence["target_score"], rel=1e-5
        )
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(small_case / "heat.nrrd")))
    assert heat.max() == pytest.approx(1.0)  # the picture alone would not tell


def test_the_record_says_how_the_result_was_made(small_case, capsys):
    card = card_with_head(small_case, 1, lambda weights: weights.abs())
    assert explain(small_case, card, "kidney", "--prediction", str(small_case / "prediction.nrrd")) == 0
    capsys.readouterr()
    record = json.loads((small_case / "summary.json").read_text(encoding="utf-8"))["record"]
    assert record["class"] == "kidney" and record["mask"] == str((small_case / "kidney.nrrd").resolve())
    assert (
        record["command"].startswith("seghiresgradcam explain --image ")
        and "--target-class kidney" in record["command"]
    )
    from hashlib import sha256

    assert len(record["model_sha256"]) == 64
    weights_before = (small_case / "bias_free.pt").read_bytes()
    assert sha256(weights_before).hexdigest() != record["model_sha256"]  # the card and the weights together
    for name in ("heat.nrrd", "prediction.nrrd"):
        written = sitk.ReadImage(str(small_case / name))
        assert written.GetMetaData("seghiresgradcam_model_sha256") == record["model_sha256"]
        assert written.GetMetaData("seghiresgradcam_software") == record["software"]
    # Other weights, another digest.
    card_with_head(small_case, 1, lambda weights: 2 * weights.abs())
    assert explain(small_case, card, "kidney") == 0
    assert (
        json.loads((small_case / "summary.json").read_text(encoding="utf-8"))["record"]["model_sha256"]
        != record["model_sha256"]
    )


@pytest.fixture(scope="module")
def kits_like(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kits_evidence")
    ct, labels = case_images(make_case(21, Grid.centred((192, 192, 40), (1.6, 1.6, 3.0))))
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    truth = sitk.GetArrayFromImage(labels)
    # A tumour segment of another patient: here it lies in front of the spine, far from the kidneys.
    elsewhere = np.flip(truth == 2, axis=1)
    assert elsewhere.any() and not (elsewhere & (truth > 0)).any()
    for name, array in (("tumour.nrrd", truth == 2), ("elsewhere.nrrd", elsewhere)):
        mask = sitk.GetImageFromArray(array.astype(np.uint8))
        mask.CopyInformation(labels)
        sitk.WriteImage(mask, str(folder / name))
    return folder


@pytest.mark.slow
def test_a_segment_the_network_does_not_predict_is_warned_about(kits_like, capsys):
    def run(mask):
        code = cli_main(
            [
                "explain",
                "--image",
                str(kits_like / "ct.nrrd"),
                "--target-class",
                "tumour",
                "--mask",
                str(kits_like / mask),
                "--out",
                str(kits_like / "heat.nrrd"),
                "--summary",
                str(kits_like / "summary.json"),
                "--progress",
                "none",
            ]
        )
        printed = capsys.readouterr()
        assert code == 0, printed.err
        return json.loads((kits_like / "summary.json").read_text(encoding="utf-8")), printed

    own, printed = run("tumour.nrrd")
    assert own["warnings"] == [] and "warning" not in printed.err
    assert own["evidence"]["seg-hires-grad-cam"]["mean_probability_in_target"] > 0.5
    assert "mean tumour probability in M" in printed.out
    other, printed = run("elsewhere.nrrd")
    evidence = other["evidence"]["seg-hires-grad-cam"]
    assert evidence["mean_probability_in_target"] < 0.1 and evidence["prediction_overlap"] == 0
    assert "The network does not predict M as tumour" in printed.err
    assert evidence["target_score"] < 0 and any("is not positive" in warning for warning in other["warnings"])


def measured(folder, model, method, *extra):
    code = cli_main(
        [
            "explain",
            "--image",
            str(folder / "ct.nrrd"),
            "--model",
            str(model),
            "--target-class",
            "tumour",
            "--mask",
            str(folder / "tumour.nrrd"),
            "--method",
            method,
            "--out",
            str(folder / "heat.nrrd"),
            "--metrics",
            str(folder / "metrics.json"),
            "--fractions",  # three points of each curve: what is tested here is which numbers come with which
            "0",
            "0.025",
            "0.05",
            "--progress",
            "none",
            *extra,
        ]
    )
    assert code == 0
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def randomised_card(folder) -> Path:
    """The bundled model's card with its weights re-initialised (an untrained network)."""
    from SegHiResGradCAMLib.cam.metrics import randomised_copy
    from SegHiResGradCAMLib.models.formats import read_model_card

    card = json.loads(BUNDLED.read_text(encoding="utf-8"))
    torch.save(randomised_copy(read_model_card(BUNDLED).build_network(), seed=3).state_dict(), folder / "random.pt")
    card["weights"] = "random.pt"
    (folder / "random.json").write_text(json.dumps(card))
    return folder / "random.json"


@pytest.mark.slow
def test_every_metric_comes_with_its_baseline_and_every_check_with_its_criterion(kits_like, capsys):
    """At the default layer, next to the head, the heat in M is high whatever the weights: the
    randomised network's own share is printed beside it. Seg-Grad CAM's map there does not
    depend on M at all, and its check says so."""
    hires = measured(kits_like, BUNDLED, "seg-hires-grad-cam")
    printed = capsys.readouterr().out
    assert hires["mass_in_target"] > 0.8 and hires["mass_in_target_randomised"] > 0.5
    assert 0 < hires["mass_in_target_uniform"] < 0.05  # M is a small part of the image
    assert hires["deletion_random"]["area"] > 0 and hires["insertion_random"]["area"] > 0
    names = [check["name"] for check in hires["checks"]]
    assert names == [
        "randomisation (inside M)",
        "heat in M beyond a random network",
        "deletion beyond random order",
        "insertion beyond random order",
        "dependence on M",
    ]
    checks = {check["name"]: check for check in hires["checks"]}
    assert checks["dependence on M"]["passed"] and hires["dependence_on_target"] < 0.5
    assert checks["randomisation (inside M)"]["value"] == hires["randomisation_similarity_in_target"]
    assert checks["deletion beyond random order"]["passed"] == (
        hires["deletion"]["area"] < hires["deletion_random"]["area"]
    )
    assert f"randomised network {100 * hires['mass_in_target_randomised']:.1f} %" in printed
    assert "check: dependence on M" in printed and "pass (rank similarity with the map of M moved aside" in printed
    grad = measured(kits_like, BUNDLED, "seg-grad-cam", "--measure", "dependence")
    assert grad["dependence_on_target"] > 0.99 and grad["deletion"] is None
    assert [check["passed"] for check in grad["checks"]] == [False]
    assert "FAIL (rank similarity with the map of M moved aside below 0.9)" in capsys.readouterr().out


@pytest.mark.slow
def test_an_untrained_network_s_map_is_flagged_by_its_baselines(kits_like, capsys):
    random_card = randomised_card(kits_like)
    hires = measured(kits_like, random_card, "seg-hires-grad-cam", "--measure", "randomisation", "dependence")
    capsys.readouterr()
    checks = {check["name"]: check["passed"] for check in hires["checks"]}
    # An untrained network localises no better than another untrained one.
    assert hires["mass_in_target_randomised"] > 0.5 and not checks["heat in M beyond a random network"]
    assert set(checks) == {"randomisation (inside M)", "heat in M beyond a random network", "dependence on M"}
    assert hires["warnings"], "an untrained network does not predict the tumour"
