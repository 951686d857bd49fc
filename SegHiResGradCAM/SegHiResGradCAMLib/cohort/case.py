"""One case of a cohort through the one pipeline: prediction, M, each method, optional
metrics, and Dice and surface distance against the truth; its folder appears only when
the whole case has succeeded.

``cases/<case>/`` holds a heatmap per method, the prediction, the paper-style figure and
``rows.json`` (one row per method) and ``inputs.json`` (the identity of the files that made
it: ``input_identity``). It is built under its partial name (``volumes.outputs.partial_path``)
and renamed when complete, so a case that was interrupted leaves no folder under its name and
is computed again; one that failed leaves ``failed/<case>.json`` with its error and the same
identity. A record that cannot be read (damaged, cut short) counts as no record: the case is
computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cam.metric_table import METRIC_GROUPS, failed_checks
from ..errors import ExplainInputError
from ..models.formats import ModelSource
from ..volumes.outputs import write_atomically
from .datasets import CohortCase

ROWS = "rows.json"
INPUTS = "inputs.json"
FAILED_FOLDER = "failed"  # beside cases/, so that no case name can collide with a failure record
HEAD_BYTES = 1 << 16  # the part of a file hashed for its identity: the header and the first voxels


@dataclass(frozen=True)
class CohortSettings:
    model: ModelSource = field(
        default_factory=ModelSource
    )  # any format, with its options; a bare path (or None: the bundled model) too
    target_class: str = "tumour"
    methods: tuple[str, ...] = ("seg-hires-grad-cam", "seg-grad-cam")
    explain: str = "prediction"  # M: "prediction" (the network's) or "truth" (the ground-truth segment)
    metrics: bool = False  # deletion/insertion and the randomisation check (about 25 more passes per map)
    device: str = "auto"
    torch_threads: int | None = None  # torch's threads in the process that runs the case
    layer: str | None = None  # the layer or layer rule (None: the model's default)
    mask_label: int | None = None  # with a mask column: M = the mask's voxels of this label
    measure: tuple[str, ...] = METRIC_GROUPS  # which metric groups, with metrics
    fractions: tuple[float, ...] | None = None  # the deletion, insertion and ROAD fractions (None: 0..5 %)
    command: str = ""  # the command line that made the cohort, for the report's record
    per_component: bool = False  # a row per connected component of M (several tumours) and method
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "model", ModelSource.of(self.model))  # a bare path is a source without options


def case_folder(results: Path, name: str) -> Path:
    return Path(results) / "cases" / name


def _read_record(path: Path, kind: type):
    """A JSON record of ``kind``, or None when it is absent or cannot be read (damaged, cut short)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return record if isinstance(record, kind) else None


def finished_rows(results: Path, name: str) -> list[dict] | None:
    rows = _read_record(case_folder(results, name) / ROWS, list)
    return rows if rows and all(isinstance(row, dict) for row in rows) else None


def finished_inputs(results: Path, name: str) -> dict | None:
    """The identity of the inputs that made a finished case (None: unknown)."""
    return _read_record(case_folder(results, name) / INPUTS, dict)


def finished_cases(results: Path) -> list[str]:
    """The names of the cases whose results are complete, in name order."""
    cases = Path(results) / "cases"
    found = cases.glob(f"*/{ROWS}") if cases.is_dir() else []
    return sorted(path.parent.name for path in found if not path.parent.name.startswith("."))  # not a partial one


def failure_path(results: Path, name: str) -> Path:
    return Path(results) / FAILED_FOLDER / f"{name}.json"


def failure(results: Path, name: str) -> dict | None:
    record = _read_record(failure_path(results, name), dict)
    return record if record is not None and record.get("case") == name else None


def file_identity(path: Path | None) -> dict | None:
    """What tells a file apart from a replaced one: its resolved path, size, modification
    time and a hash of its first 64 KiB (a folder, such as a DICOM series: its files' names,
    sizes and times)."""
    if path is None:
        return None
    path = Path(path)
    try:
        if path.is_dir():
            files = [(item, item.stat()) for item in path.rglob("*") if item.is_file()]
            listing = sorted(
                (str(item.relative_to(path)), status.st_size, status.st_mtime_ns) for item, status in files
            )
            return {"path": str(path.resolve()), "listing": hashlib.sha256(repr(listing).encode()).hexdigest()}
        status = path.stat()
        with path.open("rb") as stream:
            head = hashlib.sha256(stream.read(HEAD_BYTES)).hexdigest()
    except OSError:
        return {"path": str(path), "missing": True}
    return {"path": str(path.resolve()), "size": status.st_size, "mtime_ns": status.st_mtime_ns, "head": head}


def input_identity(case: CohortCase, model_digest: str) -> dict:
    """The identity of everything a case's results depend on besides the settings."""
    return {
        "image": file_identity(case.image),
        "truth": file_identity(case.truth),
        "mask": file_identity(case.mask),
        "series": case.series,
        "segment": case.segment,
        "model_sha256": model_digest,
    }


def run_case(case: CohortCase, settings: CohortSettings, results: Path, identity: dict | None = None) -> list[dict]:
    """The case's rows, computed once: a finished case made from the same inputs (``identity``)
    is read back, never recomputed; one made from other inputs, or whose record is damaged,
    is replaced."""
    done = finished_rows(results, case.name)
    if done is not None and finished_inputs(results, case.name) == identity:
        return done
    failed = failure_path(results, case.name)
    rows = []

    def build(partial: Path) -> None:
        if case.problem:
            raise ExplainInputError(case.problem)
        partial.mkdir(parents=True)
        rows.extend(_explain_case(case, settings, partial))
        (partial / INPUTS).write_text(json.dumps(identity), encoding="utf-8")
        (partial / ROWS).write_text(json.dumps(rows, indent=1), encoding="utf-8")  # last: it marks the case done

    folder = case_folder(results, case.name)
    try:
        if os.path.lexists(folder):  # results of other inputs, or a damaged record: replaced
            shutil.rmtree(folder) if folder.is_dir() and not folder.is_symlink() else folder.unlink()
        write_atomically(folder, build)  # the case appears whole, or not at all
        failed.unlink(missing_ok=True)
        return rows
    except Exception as error:  # Ctrl-C and other interruptions leave nothing (write_atomically)
        done = finished_rows(results, case.name)
        if done is not None and finished_inputs(results, case.name) == identity:
            return done  # another run into the same folder finished this case meanwhile
        message = str(error) if isinstance(error, ExplainInputError | OSError) else f"{type(error).__name__}: {error}"
        record = {
            "case": case.name,
            "status": "failed",
            "error": " ".join(message.split())[:500],
            **_inputs(case),
            "inputs": identity,
        }
        failed.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(failed, lambda partial: partial.write_text(json.dumps(record), encoding="utf-8"))
        return [{key: value for key, value in record.items() if key != "inputs"}]


def _explain_case(case: CohortCase, settings: CohortSettings, folder: Path) -> list[dict]:
    import SimpleITK as sitk

    from ..cam.methods import METHODS
    from ..cam.metrics import body_mask, mass_share
    from ..demo.run_demo import case_figure
    from ..pipeline import ExplainJob, run
    from ..volumes.volume_io import read_volume

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    started = time.perf_counter()
    card = settings.model.read()
    class_index = card.class_index(settings.target_class)
    mask, label = case.mask, settings.mask_label if case.mask is not None else None
    if mask is None and settings.explain == "truth":
        if case.truth is None:
            raise ExplainInputError(f"Case {case.name} has no ground truth to explain (--explain truth).")
        mask, label = case.truth, class_index  # truth labels are the model's class indices
    heatmaps = [] if settings.per_component else [folder / f"heatmap_{method}.nrrd" for method in settings.methods]
    job = ExplainJob(
        image=case.image,
        target_class=str(class_index),
        methods=list(settings.methods),
        heatmaps=heatmaps,
        model=settings.model,
        per_component=folder if settings.per_component else None,
        mask=mask,
        mask_label=label,
        device=settings.device,
        prediction=folder / "prediction.nrrd",
        metrics=settings.metrics,
        layer=settings.layer,
        measure=settings.measure,
        fractions=settings.fractions,
        command=settings.command,
        series=case.series,
        segment=case.segment,
    )
    result = run(job)
    sitk.WriteImage(result.segment, str(folder / "segment.nrrd"), useCompression=True)  # M, for the review
    ct = result.ct
    truth = read_volume(case.truth, "truth") if case.truth is not None else None
    # Every map here is on the CT's grid.
    segment, body = sitk.GetArrayFromImage(result.segment) > 0, body_mask(sitk.GetArrayFromImage(ct))
    quality = _quality(result.prediction, truth, card, class_index) if truth is not None else {}
    case_figure(
        folder / "figure.png",
        ct,
        _on_grid(truth, ct) if truth is not None else None,
        result,
        f"{case.name}: {card.classes[class_index]}",
    )
    seconds = time.perf_counter() - started
    rows = []
    for key, (method, _) in result.explained.items():
        heat = sitk.GetArrayFromImage(result.heatmaps[key])
        component = {}
        if settings.per_component:  # heat in M is heat in this component
            segment = sitk.GetArrayFromImage(result.component_masks[key]) > 0
            component = {"component": int(key.split("_")[1]), **result.components[key]}
        row = {
            "case": case.name,
            "method": method,
            **component,
            "title": METHODS[method].title,
            "status": "done",
            "error": "",
            **_inputs(case),
            "class": card.classes[class_index],
            "layer": result.layer,
            "device": result.device,
            "target_score": result.scores[key],
            "heat_in_m": mass_share(heat, segment),
            "heat_outside_body": mass_share(heat, ~body),
            "peak_in_m": bool(heat.max() > 0 and segment.flat[int(np.argmax(heat))]),
            "seconds_case": seconds,
            "seconds_method": result.seconds.get(key, 0.0),
            **quality,
            **_evidence_columns(result.evidence[key]),
            "warnings": " ".join(result.warnings),
            "software": result.record["software"],
            "model_sha256": result.record["model_sha256"],
            "mask_source": result.record["mask"],
        }
        if key in result.metrics:
            row |= _metric_columns(result.metrics[key].as_dict())
        rows.append(row)
    return rows


def _evidence_columns(evidence) -> dict:
    return {
        "mean_probability_in_m": evidence.mean_probability_in_target,
        "prediction_overlap": evidence.prediction_overlap,
        "positive_evidence": evidence.positive_evidence,
        "negative_evidence": evidence.negative_evidence,
    }


def _metric_columns(measured: dict) -> dict:
    """A map's metrics, each beside its baseline, and the checks it failed."""

    def area(curve):
        return (measured.get(curve) or {}).get("area")

    return {
        "deletion_area": area("deletion"),
        "deletion_area_random": area("deletion_random"),
        "insertion_area": area("insertion"),
        "insertion_area_random": area("insertion_random"),
        "heat_in_m_randomised": measured.get("mass_in_target_randomised"),
        "randomisation_similarity": measured.get("randomisation_similarity"),
        "randomisation_similarity_in_m": measured.get("randomisation_similarity_in_target"),
        "dependence_on_m": measured.get("dependence_on_target"),
        # the last step of cascading randomisation (every layer randomised, from the output down)
        "cascade_similarity_in_m": (measured.get("cascade") or [{}])[-1].get("similarity_in_target"),
        "road_area": area("road_most_relevant_first"),
        "road_area_least_relevant_first": area("road_least_relevant_first"),
        "failed_checks": "; ".join(failed_checks(measured)),
    }


def _inputs(case: CohortCase) -> dict:
    """Where the case's files are, for the review in Slicer."""
    return {"image": os.path.realpath(case.image), "truth": os.path.realpath(case.truth) if case.truth else ""}


def _on_grid(image, reference):
    """A label map on the reference's grid (nearest neighbour), as it is when already there."""
    import SimpleITK as sitk

    if image.GetSize() == reference.GetSize() and np.allclose(image.GetOrigin(), reference.GetOrigin()):
        return image
    return sitk.Resample(image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, image.GetPixelID())


def _quality(prediction, truth, card, class_index: int) -> dict:
    """The segmentation's quality per class and KiTS region (``quality``), and the explained
    class's Dice, surface Dice and HD95 as ``dice``, ``surface_dice``, ``hd95_mm``."""
    from ..volumes.label_maps import class_name_key
    from .quality import segmentation_quality

    columns = segmentation_quality(prediction, truth, card)
    name = class_name_key(card.classes[class_index])
    return {
        "dice": columns[f"dice_{name}"],
        "surface_dice": columns[f"surface_dice_{name}"],
        "hd95_mm": columns[f"hd95_mm_{name}"],
        **columns,
    }
