"""What the integrations add to the work they sit in, as ratios of CPU (process) time measured
in this process, the two computations interleaved, median of ``--pairs`` pairs:

- the documented MONAI bundle (docs/integrations.md), its evaluator run with the original
  ``SlidingWindowInferer`` and with ``ExplainingInferer``, on a 400 x 400 x 180 mm phantom CT
  with a tumour (the bundle resamples it to 2 x 2 x 3 mm: 200 x 200 x 60 voxels);
- one call of ``ValidationExplanations`` on two held-out cases (the crops around their tumours)
  with the bundled network and its sliding window, with and without the randomisation check,
  against one sliding-window inference of the same two crops.

    .venv/bin/python bench/bench_integrations.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))  # the tests' case helpers
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing" / "integrations"))  # and bundle

import SimpleITK as sitk
from monai.bundle import ConfigParser
from test_monai_inferer import documented_bundle_config, write_bundle

from conftest import bundled_network_tumour_crop
from SegHiResGradCAMLib import sliding_window_logits
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.integrations.validation import ValidationCase, ValidationExplanations
from SegHiResGradCAMLib.models.formats import read_model_card


def cpu_seconds(work) -> float:
    started = time.process_time()
    work()
    return time.process_time() - started


def median_ratio(pairs: int, measured, baseline) -> tuple[float, float, float]:
    """(median seconds of ``measured``, of ``baseline``, median of the pairwise ratios)."""
    times = [(cpu_seconds(measured), cpu_seconds(baseline)) for _ in range(pairs)]
    ratios = [first / second for first, second in times]
    return (
        statistics.median(first for first, _ in times),
        statistics.median(second for _, second in times),
        statistics.median(ratios),
    )


def bundle_evaluation(bundle: Path, data: Path, output: Path):
    """The bundle's evaluator, parsed and its weights loaded (not timed); its run (timed)."""

    def run() -> None:
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.json"))
        parser.update({"bundle_root": str(bundle), "dataset_dir": str(data), "output_dir": str(output)})
        evaluator = parser.get_parsed_content("evaluator")
        parser.get_parsed_content("initialize")
        started = time.process_time()
        evaluator.run()
        run.seconds = time.process_time() - started

    return run


def bench_bundle(folder: Path, pairs: int) -> None:
    data = folder / "data"
    data.mkdir()
    ct, _ = case_images(make_case(300, Grid.centred((200, 200, 60), (2.0, 2.0, 3.0))))
    sitk.WriteImage(ct, str(data / "case300.nii.gz"))
    config = documented_bundle_config()
    original = {**config, "inferer": "@sliding_window"}
    transforms = config["postprocessing"]["transforms"]
    original["postprocessing"] = {
        "_target_": "Compose",
        "transforms": [transforms[1], {**transforms[2], "keys": ["pred"]}, *transforms[3:5]],
    }
    explaining = bundle_evaluation(write_bundle(folder / "explaining", config), data, folder / "out1")
    plain = bundle_evaluation(write_bundle(folder / "original", original), data, folder / "out2")
    explaining()  # a first run each: imports, allocations
    plain()
    times = []
    for _ in range(pairs):
        explaining()
        plain()
        times.append((explaining.seconds, plain.seconds))
    first = statistics.median(a for a, _ in times)
    second = statistics.median(b for _, b in times)
    ratio = statistics.median(a / b for a, b in times)
    print(
        f"MONAI bundle evaluator, 200 x 200 x 60 after resampling: with ExplainingInferer {first:.1f} s CPU, "
        f"original inferer {second:.1f} s CPU, ratio {ratio:.2f}"
    )


def bench_validation(folder: Path, pairs: int) -> None:
    card = read_model_card()
    tiling = card.tiling
    crops = [bundled_network_tumour_crop(seed)[1:] for seed in (300, 302)]
    network = card.network()
    cases = [ValidationCase(f"case{number}", image, tumour) for number, (image, tumour) in enumerate(crops)]

    def inference() -> None:
        for image, _ in crops:
            sliding_window_logits(network, image, tiling)

    for randomisation in (False, True):
        output = folder / f"validation_{randomisation}"
        explanations = ValidationExplanations(
            cases, 2, output, tiling=tiling, randomisation=randomisation, tensorboard=False
        )
        epochs = iter(range(1000))
        explanations(network, next(epochs))  # warm-up

        def one_call(explanations=explanations, epochs=epochs) -> None:
            explanations(network, next(epochs))

        call, baseline, ratio = median_ratio(pairs, one_call, inference)
        shape = "x".join(str(size) for size in crops[0][0].shape[1:])
        print(
            f"ValidationExplanations, 2 crops ({shape}, ...), randomisation {'on' if randomisation else 'off'}: "
            f"{call:.1f} s CPU per call, inference alone {baseline:.1f} s CPU, ratio {ratio:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench_validation(Path(folder), arguments.pairs)
        bench_bundle(Path(folder), arguments.pairs)


if __name__ == "__main__":
    main()
