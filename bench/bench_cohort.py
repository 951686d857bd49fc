"""Cohort throughput: in this process (torch with 2 threads) against a local Ray runtime with
2 workers of 1 thread each, on the same synthetic cases, runs interleaved.

Prints, per pair of runs, the wall time of each and Ray's throughput relative to the
in-process run; then the medians, Ray's added time per case (the workers' wall time not
spent computing cases: (wall x workers - sum of the cases' own times) / cases), the peak
memory of a worker, and the per-case times a cost estimate for a 489-case cohort uses.

    .venv/bin/python bench/bench_cohort.py [--cases 8] [--pairs 2]

Also, in this process: the network built once for all cases (as the pipeline does: once
per process while the model's files are unchanged) against built again for every case,
interleaved, with the time one build takes (``--reuse-only`` measures just this).

Wall time is the quantity here (parallel throughput); run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from SegHiResGradCAMLib.cohort.case import CohortSettings, run_case
from SegHiResGradCAMLib.cohort.datasets import find_cases
from SegHiResGradCAMLib.cohort.run import run_cohort
from SegHiResGradCAMLib.demo.phantom import Grid, write_cohort

GRID = Grid.centred((160, 160, 36), (2.6, 2.6, 5.0))  # a 416 x 416 x 180 mm field of view
SETTINGS = CohortSettings(target_class="kidney", methods=("seg-hires-grad-cam",))


def peak_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))


def timed_run(dataset: Path, scratch: Path, ray_address: str | None) -> tuple[float, list[dict]]:
    results = scratch / f"results-{time.monotonic_ns()}"
    started = time.perf_counter()
    summary = run_cohort(dataset, results, SETTINGS, ray_address=ray_address, workers=2)
    wall = time.perf_counter() - started
    shutil.rmtree(results)
    assert summary.failed == 0, summary.rows
    return wall, summary.rows


def worker_peak_memory(dataset: Path, scratch: Path) -> list[int]:
    """The peak RSS (KB) of each Ray worker process after its cases."""
    import ray

    @ray.remote(num_cpus=1)
    def case_and_peak(case, settings, results):
        torch.set_num_threads(1)
        run_case(case, settings, results)
        import os

        return os.getpid(), peak_kb()

    _, cases = find_cases(dataset)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
    try:
        peaks = dict(ray.get([case_and_peak.remote(case, SETTINGS, scratch / "peak") for case in cases]))
    finally:
        ray.shutdown()
    return sorted(peaks.values())


def reuse_gain(dataset: Path, scratch: Path, pairs: int) -> dict:
    """In-process cohort wall times with the network built per case and built once."""
    from SegHiResGradCAMLib.models import card as card_module
    from SegHiResGradCAMLib.models.formats import read_model_card

    reuse = card_module.ModelCard.network
    per_case, once = [], []
    for _ in range(pairs):
        card_module.ModelCard.network = lambda card: card.build_network()
        try:
            per_case.append(timed_run(dataset, scratch, None)[0])
        finally:
            card_module.ModelCard.network = reuse
        card_module._BUILT.clear()
        once.append(timed_run(dataset, scratch, None)[0])
    card = read_model_card()
    started = time.perf_counter()
    card.build_network()
    return {
        "network_built_per_case_seconds": [round(value, 1) for value in per_case],
        "network_built_once_seconds": [round(value, 1) for value in once],
        "reuse_speedup_median": round(statistics.median(per_case) / statistics.median(once), 3),
        "one_build_seconds": round(time.perf_counter() - started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--reuse-only", action="store_true", help="measure only building the network once")
    arguments = parser.parse_args()
    torch.set_num_threads(2)
    scratch = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    try:
        dataset = write_cohort(scratch / "data", range(200, 200 + arguments.cases), "kits", GRID)
        timed_run(write_cohort(scratch / "warm-up-process", [197], "kits", GRID), scratch, None)  # imports
        reuse = reuse_gain(dataset, scratch, arguments.pairs)
        print(json.dumps(reuse, indent=2))
        if arguments.reuse_only:
            return
        # The runtime is started once, as a cluster would be running already; its start is
        # reported on its own. A first unmeasured run lets the two workers import torch.
        import ray

        started = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 2**20)
        start_seconds = time.perf_counter() - started
        warm_up = write_cohort(scratch / "warm-up", [199, 198], "kits", GRID)
        timed_run(warm_up, scratch, "local")
        ratios, overheads, in_process_cases = [], [], []
        for pair in range(arguments.pairs):
            in_process, rows = timed_run(dataset, scratch, None)
            on_ray, ray_rows = timed_run(dataset, scratch, "local")
            ratio = in_process / on_ray  # throughput of Ray relative to in-process
            ray_case_seconds = sum({row["case"]: row["seconds_case"] for row in ray_rows}.values())
            overhead = (on_ray * 2 - ray_case_seconds) / arguments.cases
            ratios.append(ratio)
            overheads.append(overhead)
            in_process_cases += [row["seconds_case"] for row in rows]
            print(
                f"pair {pair + 1}: in-process {in_process:.1f} s, Ray {on_ray:.1f} s -> Ray throughput "
                f"{ratio:.2f}x, Ray's added time {overhead:.2f} s per case"
            )
        ray.shutdown()
        peaks = worker_peak_memory(dataset, scratch)
        summary = {
            "cases": arguments.cases,
            "grid": "160 x 160 x 36 at 2.6 x 2.6 x 5 mm",
            "ray_runtime_start_seconds": round(start_seconds, 2),
            "ray_throughput_ratio_median": round(statistics.median(ratios), 3),
            "ray_added_seconds_per_case_median": round(statistics.median(overheads), 3),
            "in_process_seconds_per_case_median": round(statistics.median(in_process_cases), 2),
            "worker_peak_rss_mib": [round(kb / 1024) for kb in peaks],
            **reuse,
        }
        print(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
