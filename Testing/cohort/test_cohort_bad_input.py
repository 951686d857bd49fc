"""Bad input to the cohort command, table-driven. A refusal ends with exit code 2 and one
line on stderr (no traceback) before anything is written; any other case gives a row for
every case folder or CSV row (a broken one an error row that says what is wrong), records
the settings, never shows results of other inputs or settings, and leaves the dataset
byte-identical. Inputs are real files: small synthetic KiTS-like CTs and a small network."""

import hashlib
import importlib.util
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas
import pytest

from conftest import bias_free_model_card
from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, write_cohort
from SegHiResGradCAMLib.volumes.outputs import PARTIAL_PREFIX
from work_clock import wait_while_working

SPACING = (6.0, 6.0, 9.0)
GRID = Grid.centred((64, 64, 16), SPACING)
GOOD, OTHER = "case_00003", "case_00004"  # the dataset's two cases


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The dataset (two KiTS cases), a third case's files and the model; each case copies them."""
    folder = tmp_path_factory.mktemp("originals")
    write_cohort(folder / "data", [3, 4], "kits", GRID)
    write_cohort(folder / "spare", [5], "kits", GRID)
    return folder, bias_free_model_card(folder, SPACING)


def arguments(folder: Path, **replace) -> list:
    """A good cohort command on the case folder's dataset, with options replaced (None drops one)."""
    options = {
        "--cases": folder / "data",
        "--out": folder / "results",
        "--model": folder / "bias_free.json",
        "--target-class": "kidney",
        "--explain": "truth",
        "--methods": "seg-hires-grad-cam",
        "--progress": "none",
    }
    options.update({f"--{key.replace('_', '-')}": value for key, value in replace.items()})
    command = ["cohort"]
    for option, value in options.items():
        if value is not None:
            command += [option] if value is True else [option, *(value if isinstance(value, list) else [value])]
    return command


def finished(folder: Path) -> Path:
    """The results of a finished cohort of the case folder's dataset, which this run goes on in."""
    assert cli_main([str(value) for value in arguments(folder)]) == 0
    return folder / "results"


def kits_case(folder: Path, make) -> None:
    """Case OTHER's folder made broken by ``make(case folder)``."""
    case = folder / "data" / OTHER
    shutil.rmtree(case)
    case.mkdir()
    make(case)


def csv_of(folder: Path, text: str, encoding="utf-8") -> Path:
    (folder / "data" / "cases.csv").write_text(text.replace("DATA", str(folder / "data")), encoding=encoding)
    return folder / "data" / "cases.csv"


GOOD_ROWS = f"case,image,truth\n{GOOD},{GOOD}/imaging.nii.gz,{GOOD}/segmentation.nii.gz\n"
OTHER_ROW = f"{OTHER},{OTHER}/imaging.nii.gz,{OTHER}/segmentation.nii.gz\n"
OUTSIDE_ROWS = f"case,image\n{GOOD},DATA/{GOOD}/imaging.nii.gz\n{OTHER},../data/{OTHER}/imaging.nii.gz\n"


def bundle(folder: Path) -> Path:
    (folder / "bundle" / "configs").mkdir(parents=True)
    (folder / "bundle" / "configs" / "inference.json").write_text('{"network_def": {"_target_": "UNet"}}')
    return folder / "bundle"


# name -> (arguments for the case folder, what the one line says); exit code 2, nothing written
REFUSALS = {
    "an unknown class": (lambda f: arguments(f, target_class="spleen"), "no class 'spleen'"),
    "an unknown method": (lambda f: arguments(f, methods="grad-cam-deluxe"), "Unknown CAM method 'grad-cam-deluxe'"),
    "an untrusted bundle": (lambda f: arguments(f, model=bundle(f)), "can run arbitrary Python"),
    "a local Ray runtime with no worker": (lambda f: arguments(f, ray=True, workers=0), "--workers must be at least 1"),
    "GPUs per case on a machine without": (
        lambda f: arguments(f, ray=True, workers=1, gpus_per_case=1),
        r"--gpus-per-case 1: this machine has 0 GPU\(s\) for Ray",
    ),
    # Without ray[client] (grpcio) Ray says so; with it (TensorBoard brings grpcio) the connection times out.
    "a Ray client address where no cluster answers": (
        lambda f: arguments(f, ray="ray://127.0.0.1:10001"),
        r"Cannot join the Ray cluster at ray://127.0.0.1:10001: .*(ray\[client\]|connection timeout).*reachable",
    ),
    "a CSV row without a case name": (
        lambda f: arguments(f, cases=csv_of(f, GOOD_ROWS + f",{OTHER}/imaging.nii.gz,\n")),
        "cases.csv, line 3: the case column is empty",
    ),
    "a CSV without the columns": (
        lambda f: arguments(f, cases=csv_of(f, "name\timage\nx\ty\n")),
        r"needs the columns case,image.*separated by commas.*'name\\timage'",
    ),
    "a CSV that is not UTF-8": (lambda f: arguments(f, cases=csv_of(f, "case,image\nfé,x\n", "latin-1")), "UTF-8"),
    "resuming with another target class": (
        lambda f: arguments(f, out=finished(f), target_class="tumour"),
        r"holds a cohort made with other settings: --target-class kidney \(this run: tumour\)",
    ),
    "resuming with other methods": (
        lambda f: arguments(f, out=finished(f), methods=["seg-hires-grad-cam", "seg-grad-cam"]),
        r"--methods seg-hires-grad-cam \(this run: seg-grad-cam seg-hires-grad-cam\)",
    ),
    "resuming on another dataset": (
        lambda f: arguments(f, out=finished(f), cases=f / "spare"),
        r"--cases .*data \(this run: .*spare\)",
    ),
    "resuming on the ground truth's M after the prediction's": (
        lambda f: arguments(f, out=finished(f), explain="prediction"),
        r"--explain truth \(this run: prediction\)",
    ),
}


def fingerprints(folder: Path) -> dict:
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def prepare(originals, folder: Path) -> None:
    source, _ = originals
    for name in ("data", "spare"):
        shutil.copytree(source / name, folder / name, symlinks=True)
    for name in ("bias_free.json", "bias_free.pt"):
        shutil.copy(source / name, folder / name)


def test_there_are_at_least_twenty_kinds_of_bad_cohort_input():
    assert len(REFUSALS) + len(ROW_CASES) >= 20


@pytest.mark.slow
@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_cohort_says_why_in_one_line_and_writes_nothing(case, originals, tmp_path, capsys, monkeypatch):
    if all(importlib.util.find_spec(name) for name in ("ray", "grpc")):  # Ray's client: tries of 5, 10, 15 s; here 1 s
        from ray.util.client import worker

        monkeypatch.setattr(worker, "INITIAL_TIMEOUT_SEC", 1)
        monkeypatch.setattr(worker, "MAX_TIMEOUT_SEC", 1)
    folder = tmp_path / "case"
    prepare(originals, folder)
    make_arguments, message = REFUSALS[case]
    command = [str(value) for value in make_arguments(folder)]
    results = Path(command[command.index("--out") + 1])
    before, existed = fingerprints(folder), results.exists()
    capsys.readouterr()
    assert cli_main(command) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("seghiresgradcam: error: ") and re.search(message, lines[0]), lines[0]
    assert fingerprints(folder) == before, "inputs and earlier results byte-identical, nothing new written"
    assert results.exists() == existed, "a refused run leaves no results folder behind"


def replaced_ct(folder: Path) -> Path:
    """The finished results, then OTHER's CT replaced by another case's."""
    results = finished(folder)
    shutil.copy(folder / "spare" / "case_00005" / "imaging.nii.gz", folder / "data" / OTHER / "imaging.nii.gz")
    return results


def damaged_rows(folder: Path) -> Path:
    results = finished(folder)
    rows = results / "cases" / GOOD / "rows.json"
    rows.write_bytes(rows.read_bytes()[:40])
    return results


def damaged_failure(folder: Path) -> Path:
    """OTHER failed once (its record since damaged); its CT is fine now."""
    results = finished(folder)
    shutil.rmtree(results / "cases" / OTHER)
    (results / "failed").mkdir(exist_ok=True)
    (results / "failed" / f"{OTHER}.json").write_text('{"case": "case_000')
    return results


def looped(case: Path) -> None:
    (case / "imaging.nii.gz").symlink_to(case / "loop.nii.gz")
    (case / "loop.nii.gz").symlink_to(case / "imaging.nii.gz")


def case_named_like_a_record(folder: Path) -> Path:
    """Case "x" fails (no CT) and case "x.failed.json" succeeds: both keep their row."""
    good = f"x.failed.json,{GOOD}/imaging.nii.gz,{GOOD}/segmentation.nii.gz\n"
    return csv_of(folder, "case,image,truth\nx,missing.nii.gz,\n" + good)


# name -> (prepare the case folder; returns the command's replaced options), exit code,
#          {case: "done" or what its error row says}, how many cases this run computes)
ROW_CASES = {
    "a KiTS case whose CT is a folder": (
        lambda f: kits_case(f, lambda c: (c / "imaging.nii.gz").mkdir()) or {},
        1,
        {GOOD: "done", OTHER: "imaging.nii.gz is a folder, not the case's CT file"},
        2,
    ),
    "a KiTS case whose CT is a link loop": (
        lambda f: kits_case(f, looped) or {},
        1,
        {GOOD: "done", OTHER: "imaging.nii.gz is a link that loops back on itself"},
        2,
    ),
    "a KiTS case whose CT is a dangling link": (
        lambda f: kits_case(f, lambda c: (c / "imaging.nii.gz").symlink_to(c / "gone.nii.gz")) or {},
        1,
        {GOOD: "done", OTHER: r"imaging.nii.gz is a link to .*gone.nii.gz, which does not exist"},
        2,
    ),
    "a KiTS case whose CT is misnamed imaging.nii": (
        lambda f: kits_case(f, lambda c: (c / "imaging.nii").write_bytes(b"x")) or {},
        1,
        {GOOD: "done", OTHER: r"has no imaging.nii.gz \(it holds imaging.nii\)"},
        2,
    ),
    "a KiTS case with only its segmentation": (
        lambda f: kits_case(f, lambda c: (c / "segmentation.nii.gz").write_bytes(b"x")) or {},
        1,
        {GOOD: "done", OTHER: r"has no imaging.nii.gz \(it holds segmentation.nii.gz\)"},
        2,
    ),
    "a case's CT replaced since its results": (lambda f: {"out": replaced_ct(f)}, 0, {GOOD: "done", OTHER: "done"}, 1),
    "a damaged rows.json": (lambda f: {"out": damaged_rows(f)}, 0, {GOOD: "done", OTHER: "done"}, 1),
    "a damaged failure record": (lambda f: {"out": damaged_failure(f)}, 0, {GOOD: "done", OTHER: "done"}, 1),
    "a case named like another case's failure record": (
        lambda f: {"cases": case_named_like_a_record(f)},
        1,
        {"x": "Case x has no ground truth", "x.failed.json": "done"},
        2,
    ),
    "a CSV saved by Excel as CSV UTF-8 (byte-order mark)": (
        lambda f: {"cases": csv_of(f, GOOD_ROWS + OTHER_ROW, "utf-8-sig")},
        0,
        {GOOD: "done", OTHER: "done"},
        2,
    ),
    "a CSV separated by semicolons": (
        lambda f: {"cases": csv_of(f, (GOOD_ROWS + OTHER_ROW).replace(",", ";"))},
        0,
        {GOOD: "done", OTHER: "done"},
        2,
    ),
    "a CSV that points outside its folder (absolute and ../)": (
        lambda f: {"cases": csv_of(f, OUTSIDE_ROWS)},
        0,
        {GOOD: "done", OTHER: "done"},
        2,
    ),
}


@pytest.mark.parametrize("case", list(ROW_CASES))
def test_every_case_is_a_row_and_no_row_is_of_other_inputs(case, originals, tmp_path, capsys):
    folder = tmp_path / "case"
    prepare(originals, folder)
    make, code, expected, computed = ROW_CASES[case]
    replaced = make(folder)
    if case.startswith("a CSV that points outside"):
        replaced["explain"] = "prediction"  # no truth column
    command = [str(value) for value in arguments(folder, **replaced)]
    results = Path(command[command.index("--out") + 1])
    inputs = folder / "data"
    before = fingerprints(inputs)
    old = pandas.read_csv(results / "results.csv") if (results / "results.csv").exists() else None
    capsys.readouterr()
    assert cli_main(command) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    assert f"({computed} computed now" in captured.out, captured.out
    rows = pandas.read_csv(results / "results.csv", keep_default_na=False)
    assert sorted(rows["case"]) == sorted(expected)
    for name, outcome in expected.items():
        row = rows[rows["case"] == name].iloc[0]
        if outcome == "done":
            assert row["status"] == "done", row["error"]
        else:
            assert row["status"] == "failed" and re.search(outcome, row["error"]), row["error"]
    if case == "a case's CT replaced since its results":
        said = "computed again because their CT, truth, mask, model or settings changed since their results"
        assert f"{said}: {OTHER}" in captured.out
        score = dict(zip(old["case"], old["target_score"], strict=True))
        assert rows[rows["case"] == OTHER].iloc[0]["target_score"] != pytest.approx(score[OTHER])
        assert rows[rows["case"] == GOOD].iloc[0]["target_score"] == pytest.approx(score[GOOD])
    record = json.loads((results / "cohort.json").read_text(encoding="utf-8"))["settings"]
    assert record["target_class"] == "kidney" and record["methods"] == ["seg-hires-grad-cam"]
    assert fingerprints(inputs) == before
    assert not list(results.rglob(f"{PARTIAL_PREFIX}*"))


@pytest.mark.slow
def test_a_second_cohort_into_the_same_folder_is_refused_while_the_first_runs(originals, tmp_path, capsys):
    """Two cohorts writing one folder would each record failures of cases the other is
    writing; the second is refused at once, and the first finishes undisturbed."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    write_cohort(folder / "data", [5, 6, 8, 10], "kits", GRID)  # enough work for the first to be running
    command = [str(value) for value in arguments(folder)]
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        [sys.executable, "-m", "SegHiResGradCAMLib.cli", *command],
        stdout=log,
        stderr=log,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        wait_while_working(lambda: (folder / "results" / "cohort.json").exists() or first.poll() is not None)
        assert first.poll() is None, (tmp_path / "first.log").read_text()
        capsys.readouterr()
        assert cli_main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "Another cohort is writing into" in err and len(err.splitlines()) == 1
        assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    rows = pandas.read_csv(folder / "results" / "results.csv")
    assert set(rows["status"]) == {"done"} and len(rows) == 6
    assert not (folder / "results" / "failed").exists() or not list((folder / "results" / "failed").iterdir())


@pytest.mark.slow
def test_a_full_disk_while_writing_the_report_leaves_no_partial_report_or_table(originals, tmp_path):
    """Run as a process whose files may not grow past 64 KiB (as on a full disk): the finished
    cases are kept, the table and report are either whole or absent, and one line says why."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    results = finished(folder)
    for name in ("report.html", "results.csv", "results.parquet"):
        (results / name).unlink()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    command = [str(value) for value in arguments(folder)]
    done = subprocess.run(
        [sys.executable, "-m", "SegHiResGradCAMLib.cli", *command],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert not (results / "report.html").exists()
    assert not list(results.rglob(f"{PARTIAL_PREFIX}*"))
    assert sorted(os.listdir(results / "cases")) == [GOOD, OTHER]


def test_with_cohort_json_lost_other_settings_still_recompute_every_case(originals, tmp_path, capsys):
    """Each case's identity holds the settings too: without the folder's record, a run with
    another class recomputes every case instead of showing rows of the old class."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    results = finished(folder)
    (results / "cohort.json").write_text("{damaged")
    capsys.readouterr()
    assert cli_main([str(value) for value in arguments(folder, target_class="tumour", explain="prediction")]) in (0, 1)
    assert "(2 computed now" in capsys.readouterr().out
    rows = pandas.read_csv(results / "results.csv", keep_default_na=False)
    assert set(rows[rows["status"] == "done"]["class"]) <= {"tumour"} and len(rows) == 2
