"""Interactive questions through the Slicer module's own path: ExplainRun over a real MRML
scene (slicer-core), the CT exported, the run in a background process, its results loaded
as nodes.

For each CT (the shipped sample, 240 x 240 x 56, and a 512 x 512 x 120 phantom) it times:

- today's cold run: a process of its own per question (as before the warm worker);
- the warm path's first question: a new worker started, then the question; and the first
  question as the module asks it, after its model inspection (run in the worker when the
  module is entered, so the libraries are imported and the network is built);
- then, in the same worker, a second segment, a second class, a second method and a
  second layer on the same CT;

each the median of ``--repeats`` runs, with its ratio to today's cold run; and the peak
memory (RSS) of a one-question process against that of the warm worker after all the
questions. Then the command line: two classes in one run against two runs.

    .venv/bin/python bench/bench_interactive.py [--repeats 3] [--only sample]

Wall time is the quantity here (what the user waits for); run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))  # the tests' MRML scene helpers

from mrml_scene import load_sample, new_scene, phantom_volume, segment_from_labels
from SegHiResGradCAMLib.models.formats import ModelSource
from SegHiResGradCAMLib.mrml.background import WarmWorker
from SegHiResGradCAMLib.mrml.sample_data import SAMPLE_FOLDER
from SegHiResGradCAMLib.mrml.slicer_logic import ExplainRun, ExplainSettings, ModelInspector


def segment_id(segmentation, name: str) -> str:
    return segmentation.GetSegmentation().GetSegmentIdBySegmentName(name)


def sample_ct(scene):
    volume, segmentation = load_sample(scene)
    return volume, segmentation, {name: segment_id(segmentation, name) for name in ("tumour", "kidney")}


def large_ct(scene):
    """A 512 x 512 x 120 phantom (0.78 x 0.78 x 2.5 mm) with its tumour and kidney as segments."""
    volume, case = phantom_volume(scene, shape=(512, 512, 120), spacing=(0.78, 0.78, 2.5))
    segmentation, tumour = segment_from_labels(scene, volume, case.labels, 2, "tumour")
    segments = {"tumour": tumour}
    kidney, kidney_id = segment_from_labels(scene, volume, case.labels, 1, "kidney")
    segmentation.GetSegmentation().CopySegmentFromSegmentation(kidney.GetSegmentation(), kidney_id)
    segments["kidney"] = segment_id(segmentation, "kidney")
    scene.RemoveNode(kidney)
    return volume, segmentation, segments


def questions(volume, segmentation, segments) -> dict[str, ExplainSettings]:
    def asked(target: str, segment: str | None, **changes) -> ExplainSettings:
        """M is the segment, or with None the network's prediction of the class."""
        chosen = segmentation if segment else None
        settings = ExplainSettings(volume, target, segmentation_node=chosen, segment_id=segments.get(segment))
        for name, value in changes.items():
            setattr(settings, name, value)
        return settings

    return {
        "first question": asked("tumour", "tumour"),
        "second segment": asked("tumour", None),
        "second class": asked("kidney", "kidney"),
        "second method": asked("tumour", "tumour", method="seg-grad-cam"),
        "second layer": asked("tumour", "tumour", layer="stage-below-finest"),
    }


def timed(settings: ExplainSettings, worker: WarmWorker | None = None) -> float:
    started = time.perf_counter()
    run = ExplainRun(settings, python=sys.executable, worker=worker)
    status = run.wait(1800)
    elapsed = time.perf_counter() - started
    if status.state != "finished":
        raise RuntimeError(f"{status.state}: {status.message}")
    scene = settings.volume_node.GetScene()
    for node in {run.heatmap_node, *run.atlas_nodes} - {None}:
        scene.RemoveNode(node)
    return elapsed


def inspected(worker: WarmWorker) -> None:
    """The module's inspection of the bundled model, done in the worker (as on entering the module)."""
    inspector = ModelInspector(worker=worker)
    inspector.request(ModelSource())
    while inspector.poll() is None:
        time.sleep(0.02)


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def measure(name: str, make_ct, repeats: int) -> None:
    scene = new_scene()
    volume, segmentation, segments = make_ct(scene)
    asked = questions(volume, segmentation, segments)
    size = " x ".join(map(str, volume.GetImageData().GetDimensions()))
    print(f"\n{name} ({size} voxels), median of {repeats}")
    cold = statistics.median(timed(asked["first question"]) for _ in range(repeats))
    cold_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    print(f"  {'today: a process per question':<44} {cold:7.2f} s   1.00")
    times: dict[str, list[float]] = {"new worker, first question": [], "after the inspection": []}
    times |= {label: [] for label in list(asked)[1:]}
    worker = WarmWorker(python=sys.executable)
    for _ in range(repeats):
        worker.release()
        times["new worker, first question"].append(timed(asked["first question"], worker))
        worker.release()
        inspected(worker)
        times["after the inspection"].append(timed(asked["first question"], worker))
        for label, settings in list(asked.items())[1:]:
            times[label].append(timed(settings, worker))
    warm_peak = peak_rss_mb(worker.pid)
    worker.release()
    for label, values in times.items():
        median = statistics.median(values)
        print(f"  {'warm path: ' + label:<44} {median:7.2f} s   {median / cold:.2f}")
    ratio = warm_peak / cold_peak
    print(f"  peak RSS: a process per question {cold_peak:.0f} MB, warm worker {warm_peak:.0f} MB ({ratio:.2f}x)")


def command_line(repeats: int) -> None:
    """Two classes of the sample CT in one command against one command per class."""
    ct, segments = SAMPLE_FOLDER / "KiTSLikeCT.nrrd", SAMPLE_FOLDER / "KiTSLikeCT.seg.nrrd"
    common = [sys.executable, "-m", "SegHiResGradCAMLib.cli", "explain", "--image", str(ct), "--mask", str(segments)]
    common += ["--progress", "none"]

    def wall(arguments: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run([*common, *arguments], check=True, capture_output=True)
        return time.perf_counter() - started

    together, apart = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as folder:
            together.append(wall(["--target-class", "tumour", "kidney", "--out", f"{folder}/both"]))
            apart.append(
                sum(
                    wall(["--target-class", name, "--segment", name, "--out", f"{folder}/{name}.nrrd"])
                    for name in ("tumour", "kidney")
                )
            )
    one, two = statistics.median(together), statistics.median(apart)
    print(f"\ncommand line, sample CT: two classes in one run {one:.2f} s, in two runs {two:.2f} s ({one / two:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["sample", "large", "command-line"])
    arguments = parser.parse_args()
    cases = {"sample": ("sample CT", sample_ct), "large": ("512 x 512 x 120 phantom CT", large_ct)}
    for key, (name, make_ct) in cases.items():
        if arguments.only in (None, key):
            measure(name, make_ct, arguments.repeats)
    if arguments.only in (None, "command-line"):
        command_line(arguments.repeats)


if __name__ == "__main__":
    main()
