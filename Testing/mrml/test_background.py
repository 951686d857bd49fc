"""The background process as Slicer runs it: PythonSlicer is CTK's AppLauncher, which runs
the real interpreter as its own child. Cancel must end both, then remove the work folder;
a failing child's exit code and last error line must reach the status."""

import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mrml_scene import new_scene, phantom_volume
from SegHiResGradCAMLib.models.formats import ModelSource
from SegHiResGradCAMLib.mrml.background import BackgroundRun, python_executable
from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings, ModelInspector, layer_label
from work_clock import wait_while_working

LAUNCHER = """#!{python}
# Like CTK's AppLauncher (PythonSlicer): run the real interpreter as a child, wait, and
# return its exit code; the child's PID goes to the file that the test names.
import os, subprocess, sys
child = subprocess.Popen([{python!r}, *sys.argv[1:]])
with open(os.environ["LAUNCHER_CHILD_PID_FILE"], "w") as file:
    file.write(str(child.pid))
sys.exit(child.wait())
"""


@pytest.fixture
def launcher(tmp_path, monkeypatch):
    """An executable launcher script and the file where it writes its child's PID."""
    script = tmp_path / "PythonSlicer"
    script.write_text(LAUNCHER.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("LAUNCHER_CHILD_PID_FILE", str(pid_file))
    return script, pid_file


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (a zombie holds no memory or GPU)."""
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        try:
            return "\nState:\tZ" not in status.read_text(encoding="utf-8") and "\nState:\tX" not in status.read_text(
                encoding="utf-8"
            )
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(condition):
    wait_while_working(condition, what="the background run's step")


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_cancel_ends_the_launcher_and_its_interpreter_then_removes_the_work_folder(launcher):
    script, pid_file = launcher
    scene = new_scene()
    volume, _ = phantom_volume(scene)
    run = ExplainRun(ExplainSettings(volume, "kidney", with_metrics=True), python=str(script))
    work_dir = run._run.work_dir
    wait_for(pid_file.exists)
    child = int(pid_file.read_text(encoding="utf-8"))
    # Cancel while the interpreter computes (it has reported progress past the import of torch).
    wait_for(lambda: run.poll().fraction > 0 or run.poll().state != "running")
    assert run.poll().state == "running" and alive(run._run.pid) and alive(child)
    run.cancel()
    assert run.poll().state == "cancelled"
    assert not alive(run._run.pid), "the launcher survived Cancel"
    assert not alive(child), "the real interpreter survived Cancel (only the launcher was killed)"
    assert not work_dir.exists()


@pytest.mark.skipif(os.name == "nt", reason="the launcher script needs a POSIX shebang")
def test_a_failing_child_reports_its_exit_code_and_last_error_line_through_the_launcher(launcher, tmp_path):
    script, _ = launcher
    work_dir = Path(tempfile.mkdtemp(prefix="SegHiResGradCAM-"))
    run = BackgroundRun(
        ["explain", "--image", "missing.nrrd", "--target-class", "tumour", "--from-prediction", "--out", "heat.nrrd"],
        work_dir,
        python=str(script),
    )
    run.wait(120)
    status = run.poll()
    assert status.state == "failed"
    assert status.message.startswith("The CT file missing.nrrd does not exist")
    assert "exit code 2" in run.log and any("does not exist" in line for line in run.log)
    run.remove_files()


def test_without_slicer_the_children_run_in_this_interpreter():
    assert python_executable() == sys.executable  # no PythonSlicer on this PATH


def test_inside_slicer_without_pythonslicer_nothing_starts_a_second_slicer(monkeypatch, tmp_path):
    """Inside the application sys.executable is Slicer itself: without PythonSlicer on the
    PATH the run is refused with a clear message, as slicer.util.executePythonModule does."""
    import slicer

    monkeypatch.setattr(slicer, "app", object(), raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="PythonSlicer"):
        python_executable()
    with pytest.raises(RuntimeError, match="PythonSlicer"):
        BackgroundRun(["methods"], tmp_path)


@pytest.mark.slow
def test_model_inspection_runs_once_per_model_version(tmp_path):
    """Methods and layers come from a background process; the same model file is not
    inspected again until it changes."""
    bundled = Path(__file__).resolve().parents[2] / "SegHiResGradCAM" / "SegHiResGradCAMLib" / "resources" / "Models"
    card = tmp_path / "card.json"
    card.write_text((bundled / "kits_demo_unet.json").read_text(encoding="utf-8"))
    (tmp_path / "kits_demo_unet.pt").write_bytes((bundled / "kits_demo_unet.pt").read_bytes())
    inspector = ModelInspector()
    assert inspector.request(ModelSource(card)) is None and inspector.busy
    wait_for(lambda: inspector.poll() is not None or not inspector.busy)
    description = inspector.request(ModelSource(card))  # cached now
    assert description is not None and not inspector.busy
    assert description["target_classes"] == ["kidney", "tumour", "cyst"]
    assert "seg-hires-grad-cam" in {method["name"] for method in description["methods"]}
    assert sum(layer["recommended"] for layer in description["layers"]) == 1
    labels = [layer_label(layer) for layer in description["layers"]]
    marked = [label for label in labels if "(" in label]  # what the layer selector marks
    assert marked == ["model.1.submodule.1 (stage-below-finest)", "model.1 (recommended)"]
    card.write_text(card.read_text(encoding="utf-8").replace("KiTS-like demo 3D U-Net", "renamed"))
    os.utime(card, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert inspector.request(ModelSource(card)) is None  # changed file: inspected again
    wait_for(lambda: inspector.poll() is not None or not inspector.busy)
    assert inspector.request(ModelSource(card))["name"] == "renamed"


@pytest.mark.slow
def test_a_model_that_cannot_be_inspected_says_why(tmp_path):
    card = tmp_path / "card.json"
    card.write_text(
        '{"architecture": "UNet", "kwargs": {"spatial_dims": 3}, "weights": "none.pt", '
        '"preprocessing": {"orientation": "LPS", "spacing": [2, 2, 3], "intensity": {"low": -250, '
        '"high": 350, "centre": 50, "scale": 150}}, "classes": ["background", "kidney"], '
        '"sliding_window": {"size": [32, 32, 32]}}'
    )
    inspector = ModelInspector()
    assert inspector.request(ModelSource(card)) is None
    with pytest.raises(RuntimeError, match=r"network arguments do not fit|does not exist"):
        wait_for(lambda: inspector.poll() is not None)
    assert not inspector.busy


def test_undecodable_output_neither_stops_the_readers_nor_logs_from_their_threads(tmp_path):
    """A child that writes bytes that are not UTF-8, then much more than a pipe holds: every
    line arrives (decoded with replacement characters), and the log records are made on the
    polling thread only."""
    import logging
    import threading

    from SegHiResGradCAMLib.mrml.background import LOGGER, BackgroundProcess

    threads = []

    class Recorder(logging.Handler):
        def emit(self, record):
            threads.append(threading.current_thread())

    handler = Recorder()
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    code = (
        "import sys; sys.stderr.buffer.write(b'bad \\xff\\xfe bytes\\n'); sys.stderr.flush(); "
        "[print('line', i) for i in range(50000)]"
    )
    try:
        child = BackgroundProcess([sys.executable, "-c", code], tmp_path, "test")
        lines = []
        wait_while_working(
            lambda: child.exit_code() is not None, what="the child", between=lambda: lines.extend(child.stdout_lines())
        )
        lines += child.stdout_lines()
    finally:
        LOGGER.removeHandler(handler)
    assert child.exit_code() == 0
    assert len(lines) == 50000 and lines[-1] == "line 49999"
    assert child.log[0] == "bad \ufffd\ufffd bytes"
    assert threads and set(threads) == {threading.main_thread()}
