"""A cohort run: every case that is not finished yet, in this process or as Ray tasks, then
the results table and the report, which the driver alone writes.

Nothing is lost: a case's folder appears only when the case has succeeded (``case``); a
run that was interrupted (Ctrl-C, SIGKILL, a lost worker) and is started again computes only
the missing cases; a failed case is a row with its error, and ``retry_failed`` runs it
again. Ray (an optional extra) distributes the cases; the project only describes the tasks.

Nothing is mixed: ``cohort.json`` records the dataset and the settings that shape the
results, and a run into the same folder with others is refused, naming the difference; a
case whose files (CT, truth, mask) or model changed since its results is computed again. One
cohort at a time writes into a results folder (a lock held while it runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExplainInputError
from ..volumes.outputs import remove_stale_partials, write_atomically
from .case import FAILED_FOLDER, CohortSettings, failure, finished_inputs, finished_rows, input_identity, run_case
from .datasets import find_cases

RAY_ADVICE = "Ray is not installed: pip install 'seghiresgradcam[cluster]' (or run without --ray)."
RECORD = "cohort.json"
LOCK = ".cohort.lock"
# What shapes a cohort's results, with the option that sets it (the device does not).
# The model is compared by its files' contents, per case (``input_identity``): a changed model
# is computed again, a moved one is not.
RECORDED = {
    "dataset": "--cases",
    "folds": "--folds",
    "target_class": "--target-class",
    "methods": "--methods",
    "explain": "--explain",
    "metrics": "--metrics",
    "measure": "--measure",
    "fractions": "--fractions",
    "layer": "--layer",
    "mask_label": "--mask-label",
    "per_component": "--per-component",
}
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
    changed: list[str] = dataclasses.field(default_factory=list)  # computed again: their inputs changed


def run_cohort(
    dataset: Path,
    results: Path,
    settings: CohortSettings,
    ray_address: str | None = None,
    workers: int = 2,
    gpus_per_case: float = 0.0,
    retry_failed: bool = False,
    progress=None,
) -> CohortSummary:
    """``ray_address``: None runs in this process; "local" starts a local Ray runtime with
    ``workers`` workers; anything else joins that cluster ("auto", "ray://host:10001")."""
    started = time.perf_counter()
    if ray_address == "local" and workers < 1:
        raise ExplainInputError(f"--workers must be at least 1 (got {workers}).")
    if gpus_per_case < 0:
        raise ExplainInputError(f"--gpus-per-case must be 0 or more (got {gpus_per_case:g}).")
    layout, cases = find_cases(dataset)
    model_digest = check_settings(settings)
    results = Path(results)
    with _case_runner(ray_address, workers, gpus_per_case) as run_cases:  # Ray checked before any file is made
        (results / "cases").mkdir(parents=True, exist_ok=True)
        with _only_writer(results):
            record = settings_record(dataset, settings)
            _check_record(results, record)
            for folder in (results, results / "cases", results / FAILED_FOLDER):
                if folder.is_dir():
                    remove_stale_partials(folder)
            # The settings are part of each case's identity too, should cohort.json be lost.
            identities = {case.name: {**input_identity(case, model_digest), "settings": record} for case in cases}
            states = {case.name: _state(results, case.name, identities[case.name]) for case in cases}
            changed = [name for name, state in states.items() if state == "changed"]
            todo = [
                case
                for case in cases
                if states[case.name] in ("new", "changed") or (states[case.name] == "failed" and retry_failed)
            ]
            tracker = _Tracker(len(cases), len(cases) - len(todo), progress)
            run_cases(todo, settings, results, identities, tracker)
            remove_stale_partials(results / "cases")  # what a killed worker left before its case was run again
            rows = collect_rows(results, [case.name for case in cases])
            write_tables(results, rows)
            from .report import write_report

            write_report(results, rows, layout, settings)
    failed = sum(row["status"] == "failed" for row in rows if row.get("method") is None)
    return CohortSummary(
        layout, len(cases), len(cases) - failed, failed, len(todo), time.perf_counter() - started, rows, changed
    )


def check_settings(settings: CohortSettings) -> str:
    """Refuses, before any case runs, what would fail every case (a model that cannot be read
    or is not trusted, an unknown class or method); returns the model files' digest."""
    from ..cam.methods import METHODS
    from ..pipeline import files_digest

    unknown = [method for method in settings.methods if method not in METHODS]
    if unknown:
        raise ExplainInputError(f"Unknown CAM method {unknown[0]!r}: choose from {', '.join(METHODS)}.")
    card = settings.model.read()
    card.class_index(settings.target_class)
    return files_digest(card.input_files)


def settings_record(dataset: Path, settings: CohortSettings) -> dict:
    values = dataclasses.asdict(settings)
    record = {key: values.get(key) for key in RECORDED if key != "dataset"}
    record["dataset"] = os.path.realpath(dataset)
    record["methods"] = sorted(settings.methods)
    record["folds"] = sorted(settings.model.folds) if settings.model.folds else None
    record["measure"] = sorted(settings.measure) if settings.metrics else None
    return json.loads(json.dumps(record))  # as it reads back from the file


def _check_record(results: Path, record: dict) -> None:
    """The folder's recorded settings equal this run's, or the run is refused naming the
    difference; a new folder (or one from before the record existed) gets this run's."""
    path = results / RECORD
    try:
        before = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        before = None  # damaged: rewritten, and every case's inputs are compared as usual
    if isinstance(before, dict) and before.get("settings") is not None:
        earlier = before["settings"]
        differences = [
            f"{option} {_shown(earlier.get(key))} (this run: {_shown(record.get(key))})"
            for key, option in RECORDED.items()
            if earlier.get(key) != record.get(key)
        ]
        if differences:
            raise ExplainInputError(
                f"{results} holds a cohort made with other settings: {'; '.join(differences)}. "
                "Give another --out, or the same settings to go on."
            )
        return
    write_atomically(
        path, lambda partial: partial.write_text(json.dumps({"settings": record}, indent=1), encoding="utf-8")
    )


def _shown(value) -> str:
    """A recorded setting as the command line gives it."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, bool) or value is None:
        return {True: "on", False: "off", None: "(none)"}[value]
    return str(value)


def _state(results: Path, name: str, identity: dict) -> str:
    """Where a case stands: "done" or "failed" from these inputs and settings, "changed" when
    its results or failure came from others, "new" when it has neither."""
    if finished_rows(results, name) is not None:
        return "done" if finished_inputs(results, name) == identity else "changed"
    failed = failure(results, name)
    if failed is None:
        return "new"
    return "failed" if failed.get("inputs") == identity else "changed"


@contextlib.contextmanager
def _only_writer(results: Path):
    """Holds the results folder's lock while a cohort writes into it; a second cohort into the
    same folder is refused (the lock goes with the process, however it ends)."""
    stream = open(results / LOCK, "a+b")  # noqa: SIM115 - held open while the cohort runs
    try:
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(stream.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ExplainInputError(
                f"Another cohort is writing into {results} now: wait until it ends, or give another --out."
            ) from None
        yield
    finally:
        stream.close()


def _in_process(cases, settings, results, identities, tracker) -> None:
    for case in cases:
        tracker.finished(run_case(case, settings, results, identities[case.name]))


@contextlib.contextmanager
def _case_runner(address: str | None, workers: int, gpus_per_case: float):
    """How the cases run: in this process (``address`` None), or as tasks on a Ray runtime
    started here ("local") or joined; the runtime is checked to offer what a case asks for."""
    if address is None:
        yield _in_process
        return
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
            ray.init(
                num_cpus=workers,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env=environment,
                object_store_memory=128 * 2**20,
                logging_level=logging.ERROR,
            )
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Ray's own warning would be a second message beside ours
                    ray.init(address=address, log_to_driver=False, runtime_env=environment, logging_level=logging.ERROR)
            except (ValueError, ConnectionError, RuntimeError) as error:  # ray:// without ray[client], no cluster
                raise ExplainInputError(
                    f"Cannot join the Ray cluster at {address}: {' '.join(str(error).split())[:300]}. Check the "
                    "address and that the cluster is running and reachable, or run without --ray."
                ) from None

    def on_ray(cases, settings, results, identities, tracker) -> None:
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_case, max_retries=TASK_RETRIES)(run_case)
        # One torch thread per case: the workers share the machine's cores.
        per_task = dataclasses.replace(settings, torch_threads=settings.torch_threads or 1)
        pending = [task.remote(case, per_task, results, identities[case.name]) for case in cases]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            tracker.finished(ray.get(ready[0]))

    try:
        _check_resources(ray.cluster_resources(), gpus_per_case, address)
        yield on_ray
    finally:
        if started_here:
            ray.shutdown()


def _check_resources(resources: dict, gpus_per_case: float, address: str) -> None:
    """A case asking for more than the cluster has would wait forever: refused instead."""
    where = "this machine" if address == "local" else f"the Ray cluster at {address}"
    if resources.get("CPU", 0) < 1:
        raise ExplainInputError(f"{where} offers Ray no CPU: a case needs one.")
    if gpus_per_case > resources.get("GPU", 0):
        raise ExplainInputError(
            f"--gpus-per-case {gpus_per_case:g}: {where} has {resources.get('GPU', 0):g} GPU(s) "
            "for Ray. Give --gpus-per-case 0 to run on CPUs."
        )


def collect_rows(results: Path, names: list[str]) -> list[dict]:
    """The finished cases' rows and one row per failed case, in case order."""
    rows = []
    for name in names:
        done, failed = finished_rows(results, name), failure(results, name)
        if done is not None:
            rows += done
        elif failed is not None:
            rows.append({key: value for key, value in failed.items() if key != "inputs"})
    return rows


def write_tables(results: Path, rows: list[dict]) -> None:
    """results.csv and results.parquet, each written whole or not at all."""
    import pandas

    table = pandas.DataFrame(rows)
    for name, write in (
        ("results.csv", lambda path: table.to_csv(path, index=False)),
        ("results.parquet", lambda path: table.to_parquet(path, index=False)),
    ):
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
