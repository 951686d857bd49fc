"""A cohort run: every case that is not finished yet, in this process or as Ray tasks, then
the results table and the report, which the driver alone writes.

Nothing is lost: a case's folder appears only when the case has succeeded (``case``); a
run that was interrupted (Ctrl-C, SIGKILL, a lost worker) and is started again computes only
the missing cases; a failed case is a row with its error, and ``retry_failed`` runs it
again. Ray (an optional extra) distributes the cases; the project only describes the tasks.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExplainInputError
from ..volumes.outputs import remove_stale_partials, write_atomically
from .case import CohortSettings, failure, finished_rows, run_case
from .datasets import find_cases

RAY_ADVICE = "Ray is not installed: pip install 'seghiresgradcam[cluster]' (or run without --ray)."
TASK_RETRIES = 3  # Ray runs a case again when its worker dies, this many times


@dataclass
class CohortSummary:
    layout: str
    cases: int
    done: int
    failed: int
    computed: int  # cases computed by this run (the others were finished before)
    seconds: float
    rows: list[dict]


def run_cohort(dataset: Path, results: Path, settings: CohortSettings, ray_address: str | None = None,
               workers: int = 2, gpus_per_case: float = 0.0, retry_failed: bool = False,
               progress=None) -> CohortSummary:  # fmt: skip
    """``ray_address``: None runs in this process; "local" starts a local Ray runtime with
    ``workers`` workers; anything else joins that cluster ("auto", "ray://host:10001")."""
    started = time.perf_counter()
    layout, cases = find_cases(dataset)
    results = Path(results)
    (results / "cases").mkdir(parents=True, exist_ok=True)
    for folder in (results, results / "cases"):
        remove_stale_partials(folder)
    todo = [case for case in cases if finished_rows(results, case.name) is None
            and (retry_failed or failure(results, case.name) is None)]  # fmt: skip
    tracker = _Tracker(len(cases), len(cases) - len(todo), progress)
    if ray_address is None:
        for case in todo:
            tracker.finished(run_case(case, settings, results))
    else:
        _run_on_ray(todo, settings, results, ray_address, workers, gpus_per_case, tracker)
    remove_stale_partials(results / "cases")  # what a killed worker left before its case was run again
    rows = collect_rows(results, [case.name for case in cases])
    write_tables(results, rows)
    from .report import write_report

    write_report(results, rows, layout, settings)
    failed = sum(row["status"] == "failed" for row in rows if row.get("method") is None)
    return CohortSummary(layout, len(cases), len(cases) - failed, failed, len(todo), time.perf_counter() - started,
                         rows)  # fmt: skip


def _run_on_ray(cases, settings, results, address, workers, gpus_per_case, tracker) -> None:
    try:
        import ray
    except ImportError:
        raise ExplainInputError(RAY_ADVICE) from None
    package_parent = str(Path(__file__).resolve().parents[2])
    search_path = os.pathsep.join(filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
    environment = {"env_vars": {"PYTHONPATH": search_path}}  # the workers import this package as the driver does
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, runtime_env=environment,
                     object_store_memory=128 * 2**20)  # fmt: skip
        else:
            ray.init(address=address, log_to_driver=False, runtime_env=environment)
    try:
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_case, max_retries=TASK_RETRIES)(run_case)
        # One torch thread per case: the workers share the machine's cores.
        per_task = dataclasses.replace(settings, torch_threads=settings.torch_threads or 1)
        pending = [task.remote(case, per_task, results) for case in cases]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            tracker.finished(ray.get(ready[0]))
    finally:
        if started_here:
            ray.shutdown()


def collect_rows(results: Path, names: list[str]) -> list[dict]:
    """The finished cases' rows and one row per failed case, in case order."""
    rows = []
    for name in names:
        done = finished_rows(results, name)
        rows += done if done is not None else ([failure(results, name)] if failure(results, name) else [])
    return rows


def write_tables(results: Path, rows: list[dict]) -> None:
    """results.csv and results.parquet, each written whole or not at all."""
    import pandas

    table = pandas.DataFrame(rows)
    for name, write in (("results.csv", lambda path: table.to_csv(path, index=False)),
                        ("results.parquet", lambda path: table.to_parquet(path, index=False))):  # fmt: skip
        write_atomically(results / name, write)


class _Tracker:
    """Progress over cases: done, failed, and the time left at the pace so far."""

    def __init__(self, total: int, already: int, progress):
        self.total, self.done, self.failed, self.progress = total, already, 0, progress
        self.started, self.computed = time.perf_counter(), 0
        self._report()

    def finished(self, rows: list[dict]) -> None:
        self.done += 1
        self.computed += 1
        self.failed += any(row.get("status") == "failed" for row in rows)
        self._report()

    def _report(self) -> None:
        if self.progress is None:
            return
        left = ""
        if self.computed:
            seconds = (time.perf_counter() - self.started) / self.computed * (self.total - self.done)
            left = f", about {seconds / 60:.0f} min left" if seconds >= 60 else f", about {seconds:.0f} s left"
        fraction = self.done / self.total if self.total else 1.0
        self.progress(fraction, f"{self.done}/{self.total} cases, {self.failed} failed{left}")
