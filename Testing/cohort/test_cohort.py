"""Cohorts: the same table in each dataset layout, in this process or on a local Ray runtime;
nothing lost or computed twice when a worker or the driver is killed; a bad case is one
error row; the report has every section with its plots."""

import dataclasses
import html.parser
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas
import pytest

from conftest import bias_free_model_card
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.cohort.case import CohortSettings
from SegHiResGradCAMLib.cohort.run import run_cohort
from SegHiResGradCAMLib.demo.phantom import Grid, write_cohort
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.volumes.outputs import PARTIAL_PREFIX
from work_clock import wait_while_working

SEEDS = (3, 4, 5, 6, 8, 10)
SPACING = (6.0, 6.0, 9.0)
GRID = Grid.centred((64, 64, 16), SPACING)  # small CTs: a few windows each
COMPARED = ["target_score", "heat_in_m", "heat_outside_body", "peak_in_m", "dice", "surface_dice", "hd95_mm"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small network on the cases' own grid, explaining the ground-truth kidney (a random
    network's own prediction could be empty)."""
    return bias_free_model_card(tmp_path_factory.mktemp("model"), SPACING)


@pytest.fixture(scope="module")
def settings(model):
    return CohortSettings(model=str(model), target_class="kidney", explain="truth")


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory, settings):
    """The six cases in each layout, and the table of an uninterrupted in-process run."""
    folder = tmp_path_factory.mktemp("cohorts")
    sources = {layout: write_cohort(folder / layout, SEEDS, layout, GRID) for layout in ("kits", "nnunet", "csv")}
    reference = run_cohort(sources["kits"], folder / "in-process", settings)
    assert reference.failed == 0 and reference.done == len(SEEDS)
    return sources, table(folder / "in-process")


def table(results: Path) -> pandas.DataFrame:
    frame = pandas.read_csv(results / "results.csv")
    return frame.sort_values(["case", "method"]).reset_index(drop=True)


def assert_same_table(first: pandas.DataFrame, second: pandas.DataFrame) -> None:
    assert list(first["case"]) == list(second["case"]) and list(first["method"]) == list(second["method"])
    for column in COMPARED:
        np.testing.assert_allclose(first[column].astype(float), second[column].astype(float), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_the_layouts_are_read_alike_and_parquet_holds_the_same_table(cohorts, settings, tmp_path):
    sources, reference = cohorts
    assert len(reference) == 2 * len(SEEDS) and set(reference["status"]) == {"done"}
    parquet = pandas.read_parquet(Path(sources["kits"]).parent / "in-process" / "results.parquet")
    assert_same_table(reference, parquet.sort_values(["case", "method"]).reset_index(drop=True))
    for layout in ("nnunet", "csv"):
        summary = run_cohort(
            sources[layout], tmp_path / layout, dataclasses.replace(settings, methods=("seg-hires-grad-cam",))
        )
        assert summary.done == len(SEEDS)
        hires = reference[reference["method"] == "seg-hires-grad-cam"].reset_index(drop=True)
        assert_same_table(hires, table(tmp_path / layout))


def test_a_cohort_builds_its_network_once_and_the_table_is_the_one_built_per_case(settings, tmp_path):
    """As nnU-Net's predictor does: one network per process for all its cases, equal results."""
    from SegHiResGradCAMLib.models import card as card_module

    seeds = SEEDS[:3]
    dataset = write_cohort(tmp_path / "data", seeds, "csv", GRID)
    builds = []
    build = card_module.ModelCard.build_network
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(card_module.ModelCard, "build_network", lambda card: builds.append(card.name) or build(card))
        patch.setattr(card_module.ModelCard, "network", lambda card: card.build_network())  # no reuse
        run_cohort(dataset, tmp_path / "per-case", settings)
        assert len(builds) == len(seeds)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(card_module.ModelCard, "build_network", lambda card: builds.append(card.name) or build(card))
        card_module._BUILT.clear()
        run_cohort(dataset, tmp_path / "reused", settings)
    assert len(builds) == len(seeds) + 1
    assert_same_table(table(tmp_path / "per-case"), table(tmp_path / "reused"))


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["kits", "nnunet", "csv"])
def test_the_same_table_on_a_local_ray_runtime_with_two_workers(layout, cohorts, settings, ray_runtime, tmp_path):
    sources, reference = cohorts
    summary = run_cohort(sources[layout], tmp_path / "ray", settings, ray_address="local", workers=2)
    assert summary.done == len(SEEDS) and summary.failed == 0
    assert_same_table(reference, table(tmp_path / "ray"))


def model_options(model: Path) -> list[str]:
    return ["--model", str(model), "--target-class", "kidney", "--explain", "truth"]


def as_from_a_shell() -> None:
    """The child's Ctrl-C as an interactive shell leaves it: a test run started in the
    background (``make test &``, some CI runners) ignores SIGINT, and an ignored signal stays
    ignored across exec, so the cohort would never see the interrupt."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_in_background(arguments: list[str], log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "SegHiResGradCAMLib.cli", "cohort", *arguments, "--progress", "none"]
    return subprocess.Popen(
        command, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=as_from_a_shell
    )


def wait_for(condition):
    return wait_while_working(condition, what="the cohort's step")


def exit_code(process: subprocess.Popen) -> int:
    return wait_while_working(lambda: process.poll() is not None and (process.returncode,), what="the cohort")[0]


@pytest.mark.slow
def test_a_ray_worker_killed_in_the_middle_of_a_case_is_retried(cohorts, model, tmp_path):
    sources, reference = cohorts
    results = tmp_path / "results"
    process = run_in_background(
        ["--cases", str(sources["kits"]), "--out", str(results), *model_options(model), "--ray", "--workers", "2"],
        tmp_path / "log.txt",
    )
    # A case being computed is a folder <PARTIAL_PREFIX><pid of the worker computing it>-<case>.
    partial = wait_for(
        lambda: next((results / "cases").glob(f"{PARTIAL_PREFIX}*-case_*"), None) if results.exists() else None
    )
    victim = int(partial.name[len(PARTIAL_PREFIX) :].split("-", 1)[0])
    os.kill(victim, signal.SIGKILL)
    assert exit_code(process) == 0, (tmp_path / "log.txt").read_text(encoding="utf-8")[-3000:]
    folders = sorted(path.name for path in (results / "cases").iterdir())
    assert folders == [f"case_{seed:05d}" for seed in SEEDS]  # every case once, no leftovers
    assert_same_table(reference, table(results))


@pytest.mark.slow
def test_a_killed_driver_then_run_again_computes_only_the_missing_cases(cohorts, model, settings, tmp_path):
    sources, reference = cohorts
    results = tmp_path / "results"
    process = run_in_background(
        ["--cases", str(sources["kits"]), "--out", str(results), *model_options(model)], tmp_path / "log.txt"
    )
    wait_for(lambda: len(list((results / "cases").glob("case_*/rows.json"))) >= 2 if results.exists() else False)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {path.parent.name: path.stat().st_mtime_ns for path in (results / "cases").glob("case_*/rows.json")}
    assert 2 <= len(finished) < len(SEEDS)
    summary = run_cohort(sources["kits"], results, settings)
    assert summary.computed == len(SEEDS) - len(finished) and summary.done == len(SEEDS)
    for name, modified in finished.items():  # finished cases were read back, not recomputed
        assert (results / "cases" / name / "rows.json").stat().st_mtime_ns == modified
    assert not list((results / "cases").glob(f"{PARTIAL_PREFIX}*"))
    assert_same_table(reference, table(results))


def test_a_corrupt_image_is_one_error_row_and_the_cohort_goes_on(model, tmp_path, capsys):
    dataset = write_cohort(tmp_path / "data", SEEDS[:3], "kits", GRID)
    broken = dataset / f"case_{SEEDS[1]:05d}" / "imaging.nii.gz"
    broken.write_bytes(broken.read_bytes()[:2000])
    arguments = [
        "cohort",
        "--cases",
        str(dataset),
        "--out",
        str(tmp_path / "results"),
        *model_options(model),
        "--methods",
        "seg-hires-grad-cam",
        "--progress",
        "none",
    ]
    assert cli_main(arguments) == 1
    captured = capsys.readouterr()
    assert "1 case(s) failed: case_00004" in captured.err and "2 of 3 cases explained" in captured.out
    rows = pandas.read_csv(tmp_path / "results" / "results.csv")
    failed = rows[rows["status"] == "failed"]
    assert list(failed["case"]) == ["case_00004"] and "damaged" in failed["error"].iloc[0]
    assert set(rows[rows["status"] == "done"]["case"]) == {"case_00003", "case_00005"}
    # Again, with --retry-failed once the file is repaired: only that case is computed.
    write_cohort(tmp_path / "repair", [SEEDS[1]], "kits", GRID)
    broken.write_bytes((tmp_path / "repair" / "case_00004" / "imaging.nii.gz").read_bytes())
    assert cli_main([*arguments, "--retry-failed"]) == 0
    assert "3 of 3 cases explained (1 computed now, 0 failed)" in capsys.readouterr().out


class Sections(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.section, self.images, self.captions = None, {}, []

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "section":
            self.section = attributes["id"]
            self.images[self.section] = []
        elif tag == "img":
            self.images[self.section].append(attributes["src"])


def test_the_report_has_every_section_and_an_embedded_image_for_every_plot(cohorts):
    sources, _ = cohorts
    page = (Path(sources["kits"]).parent / "in-process" / "report.html").read_text(encoding="utf-8")
    parser = Sections()
    parser.feed(page)
    assert list(parser.images) == ["summary", "distributions", "quality", "checks", "paired", "suspicious", "failures"]
    assert len(parser.images["distributions"]) == 3  # heat in M, outside the body, quality (once, not per method)
    # The bias-free model's classes (background, kidney, tumour) allow no KiTS region with cysts.
    assert "<td>kidney</td><td>" in page and "<td>KiTS mass</td>" not in page
    assert len(parser.images["paired"]) >= 2  # one scatter per paired measure
    assert len(parser.images["suspicious"]) == len(SEEDS)  # each case's figure
    for images in parser.images.values():
        assert all(src.startswith("data:image/png;base64,") and len(src) > 1000 for src in images)
    assert "HiRes better" in page and "6 cases explained, 0 failed" in page


@pytest.mark.slow
def test_a_measured_cohort_s_report_records_how_it_was_made_and_marks_what_fails(model, tmp_path, capsys):
    """Metrics beside their baselines, the inside-M similarity with its criterion, the maps
    that fail a check, the record (version, command, weights' digest, class, layer, M), links
    to each case's files, and a case without ground truth listed, not ranked."""
    dataset = write_cohort(tmp_path / "data", SEEDS[:3], "csv", GRID)
    lines = dataset.read_text(encoding="utf-8").splitlines()
    lines[3] = ",".join(lines[3].split(",")[:2]) + ","  # the last case has no ground truth
    dataset.write_text("\n".join(lines) + "\n")
    results = tmp_path / "results"
    arguments = [
        "cohort",
        "--cases",
        str(dataset),
        "--out",
        str(results),
        "--model",
        str(model),
        "--target-class",
        "kidney",
        "--metrics",
        "--measure",
        "randomisation",
        "dependence",
        "--layer",
        "model.1.submodule",
        "--progress",
        "none",
    ]
    assert cli_main(arguments) == 0, capsys.readouterr().err
    rows = pandas.read_csv(results / "results.csv")
    assert set(rows["layer"]) == {"model.1.submodule"}  # not the default layer (model.1)
    for column in (
        "heat_in_m_randomised",
        "randomisation_similarity_in_m",
        "dependence_on_m",
        "mean_probability_in_m",
        "prediction_overlap",
    ):
        assert rows[column].notna().all(), column
    assert rows["deletion_area"].isna().all()  # not asked for
    page = (results / "report.html").read_text(encoding="utf-8")
    parser = Sections()
    parser.feed(page)
    assert len(parser.images["distributions"]) == 5  # heat in M, outside body, inside-M similarity, dependence, Dice
    for part in (
        "SegHiResGradCAM 0.1.0",
        "seghiresgradcam cohort --cases",
        "--layer model.1.submodule",
        str(rows["model_sha256"].iloc[0]),
        "Dice</th><td>of the predicted kidney against the ground truth",
        "no ground truth: not ranked",
        'href="cases/case_00003/figure.png"',
        "randomisation, dependence",
    ):
        assert part in page, part
    failing = rows[rows["failed_checks"].notna()]
    for _, row in failing.iterrows():
        assert row["failed_checks"] in page
    no_truth = page.index("no ground truth: not ranked")
    assert page.index("<td>1</td><td>") < no_truth  # the ranked cases come first


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_cases_names_them_and_leaves_no_partial_case(model, tmp_path):
    dataset = write_cohort(tmp_path / "data", SEEDS, "kits", GRID)
    results = tmp_path / "results"
    log = tmp_path / "log.txt"
    # With --metrics a case takes several seconds, so the interrupt lands while cases remain.
    process = run_in_background(
        ["--cases", str(dataset), "--out", str(results), *model_options(model), "--metrics"], log
    )
    wait_for(lambda: len(list((results / "cases").glob("case_*/rows.json"))) >= 2 if results.exists() else False)
    os.killpg(process.pid, signal.SIGINT)
    assert exit_code(process) == 130, log.read_text(encoding="utf-8")[-3000:]
    kept = sorted(path.parent.name for path in (results / "cases").glob("case_*/rows.json"))
    message = log.read_text(encoding="utf-8")
    assert f"the {len(kept)} finished case(s) were kept ({', '.join(kept)})" in message, message
    assert "Traceback" not in message
    assert sorted(path.name for path in (results / "cases").iterdir()) == kept  # no partial case folder


@pytest.mark.slow
def test_per_component_gives_a_row_for_each_kidney_of_each_case(model, tmp_path, capsys):
    dataset = write_cohort(tmp_path / "data", SEEDS[:2], "kits", GRID)
    results = tmp_path / "results"
    arguments = [
        "cohort",
        "--cases",
        str(dataset),
        "--out",
        str(results),
        *model_options(model),
        "--per-component",
        "--progress",
        "none",
    ]
    assert cli_main(arguments) == 0, capsys.readouterr().err
    rows = pandas.read_csv(results / "results.csv")
    for case, group in rows.groupby("case"):
        counted = group.groupby("method")["component"].apply(sorted).to_dict()
        assert counted == {"seg-grad-cam": [1, 2], "seg-hires-grad-cam": [1, 2]}, case  # two kidneys, two methods
        hires = group[group["method"] == "seg-hires-grad-cam"].sort_values("component")
        assert hires["volume_ml"].iloc[0] >= hires["volume_ml"].iloc[1]
        assert ((hires["heat_in_m"] > 0) & (hires["heat_in_m"] <= 1)).all()
        for component in (1, 2):
            assert (results / "cases" / case / f"heatmap_component_{component}_seg-hires-grad-cam.nrrd").is_file()
    page = (results / "report.html").read_text(encoding="utf-8")
    assert ", component 2 " in page and "HiRes better" in page


@pytest.mark.slow
def test_an_nnunet_raw_dataset_in_nrrd_is_found_by_its_declared_file_ending(cohorts, settings, tmp_path):
    import json

    import SimpleITK as sitk

    sources, reference = cohorts
    dataset = tmp_path / "Dataset001_Nrrd"
    for folder in ("imagesTs", "labelsTs"):
        (dataset / folder).mkdir(parents=True)
        for path in (Path(sources["nnunet"]) / folder).iterdir():
            name = path.name.replace(".nii.gz", ".nrrd")
            sitk.WriteImage(sitk.ReadImage(str(path)), str(dataset / folder / name))
    (dataset / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "CT"}, "file_ending": ".nrrd", "labels": {"background": 0, "kidney": 1}})
    )
    summary = run_cohort(dataset, tmp_path / "results", dataclasses.replace(settings, methods=("seg-hires-grad-cam",)))
    assert summary.layout == "nnunet" and summary.done == len(SEEDS)
    hires = reference[reference["method"] == "seg-hires-grad-cam"].reset_index(drop=True)
    assert_same_table(hires, table(tmp_path / "results"))
    (dataset / "dataset.json").write_text(json.dumps({"file_ending": "nrrd"}))
    with pytest.raises(ExplainInputError, match="file_ending must be a file ending"):
        run_cohort(dataset, tmp_path / "again", settings)


@pytest.mark.slow
def test_the_gradient_free_references_and_road_in_a_cohort_s_method_comparison(model, tmp_path, capsys):
    dataset = write_cohort(tmp_path / "data", SEEDS[:2], "csv", GRID)
    methods = ["seg-hires-grad-cam", "seg-ablation-cam", "seg-occlusion"]
    arguments = ["cohort", "--cases", str(dataset), "--out", str(tmp_path / "results"), "--model", str(model)]
    arguments += ["--target-class", "kidney", "--explain", "truth", "--methods", *methods, "--progress", "none"]
    arguments += ["--metrics", "--measure", "road", "--fractions", "0", "0.02", "0.05"]
    assert cli_main(arguments) == 0, capsys.readouterr().err
    rows = pandas.read_csv(tmp_path / "results" / "results.csv")
    assert sorted(rows["method"]) == sorted(methods * 2) and set(rows["status"]) == {"done"}
    assert rows["road_area"].notna().all() and rows["road_area_least_relevant_first"].notna().all()
    assert rows["deletion_area"].isna().all()  # only ROAD was asked for
    record = json.loads((tmp_path / "results" / "cohort.json").read_text(encoding="utf-8"))
    assert record["settings"]["fractions"] == [0.0, 0.02, 0.05]
    page = (tmp_path / "results" / "report.html").read_text(encoding="utf-8")
    parser = Sections()
    parser.feed(page)
    assert len(parser.images["distributions"]) == 4  # heat in M, outside the body, ROAD (beside its baseline), Dice
    assert all(method in page for method in methods)
