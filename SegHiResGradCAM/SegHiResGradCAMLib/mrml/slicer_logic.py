"""The Slicer module's logic without Qt or torch: check the inputs, export them, run the
pipeline in the background, and bring the results into the scene.

A run leaves the scene untouched until it has finished: on failure or Cancel no node is
created and the temporary files are removed; input nodes are never modified.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..cam.evidence import Evidence
from ..cam.metric_table import METRIC_GROUPS, check_fractions, metric_rows
from ..errors import ExplainInputError
from ..models.formats import ModelSource
from . import mrml_adapter
from .background import BackgroundQuery, BackgroundRun, Status, WarmQuery, WarmWorker, new_work_dir


@dataclass
class ExplainSettings:
    volume_node: object
    target_class: str
    method: str = "seg-hires-grad-cam"
    segmentation_node: object = None  # with segment_id; None: explain the network's prediction
    segment_id: str | None = None
    model: ModelSource = field(default_factory=ModelSource)  # any format with its options; or a bare path, None
    layer: str | None = None
    device: str = "auto"
    with_prediction: bool = False  # also load the predicted segmentation
    with_metrics: bool = False  # also measure the map and load the numbers as a table
    replace_previous: bool = False  # replace this module's earlier output of the same name
    signed: bool = False  # also load the signed map S (diverging colours centred on 0)
    atlas: bool = False  # a layer atlas: one heatmap per decoder stage, with every layer's metrics
    per_component: bool = False  # one heatmap per connected part of the segment, largest first
    volume_rendering_logic: object = None  # show the heatmap in 3D with this (Slicer's volume rendering logic)
    # the deletion and insertion curves' fractions of the image (None: the command line's default);
    # fewer fractions cost fewer passes
    fractions: tuple[float, ...] | None = None

    def __post_init__(self):
        self.model = ModelSource.of(self.model)  # a bare path is a source without options
        if self.fractions is not None:
            self.fractions = tuple(check_fractions(self.fractions))


# What a layer atlas measures at each layer unless the user asks for every metric: the cheap
# checks (two more explanations per layer), not deletion and insertion (about 44 passes).
ATLAS_MEASURES = ("localisation", "randomisation", "dependence")


class ExplainRun:
    """One background computation; poll() until its state is not "running"."""

    def __init__(self, settings: ExplainSettings, python: str | None = None, worker: WarmWorker | None = None):
        self.settings = settings
        self.heatmap_node = None
        self.signed_node = None
        self.prediction_node = None
        self.metrics_node = None
        self.atlas_nodes: list = []  # a layer atlas's heatmaps, coarsest first (the last is heatmap_node)
        self.warnings: list[str] = []  # reasons to distrust the map, from the run's summary
        self._import_failure: Status | None = None
        mrml_adapter.check_volume(settings.volume_node)
        if settings.atlas and settings.signed:
            raise ExplainInputError("The signed map is made for one layer: untick it for the layer atlas.")
        if settings.per_component and (settings.atlas or settings.signed):
            raise ExplainInputError(
                "Each part on its own is made at one layer, without the signed map: untick the "
                "layer atlas and the signed map, or the parts."
            )
        # Refuses a missing or unreadable card, or an untrusted bundle, before any work.
        card = settings.model.read()
        self.class_index = card.class_index(settings.target_class)
        self.card = card
        if worker is not None:
            worker.start()  # it imports its libraries while the CT is exported
        with new_work_dir("SegHiResGradCAM-") as work_dir:
            arguments = self._export_inputs(work_dir)
            if worker is not None:  # the warm worker keeps the network, the CT and its logits
                self._run = worker.submit(arguments, work_dir, loads=card.name)
            else:
                self._run = BackgroundRun(arguments, work_dir, python)

    def _export_inputs(self, work_dir: Path) -> list[str]:
        settings = self.settings
        mrml_adapter.export_volume(settings.volume_node, work_dir / "ct.nrrd")
        out = ["--layers", "atlas", "--out", "atlas"] if settings.atlas else ["--out", "heatmap.nrrd"]
        out = ["--per-component", "--out", "components"] if settings.per_component else out
        arguments = [
            "explain",
            "--image",
            "ct.nrrd",
            "--target-class",
            str(self.class_index),
            "--method",
            settings.method,
            "--device",
            settings.device,
            *out,
            "--summary",
            "summary.json",
        ]
        if settings.segmentation_node is not None:
            mrml_adapter.export_segment(
                settings.segmentation_node, settings.segment_id, settings.volume_node, work_dir / "segment.nrrd"
            )
            arguments += ["--mask", "segment.nrrd"]
        else:
            arguments += ["--from-prediction"]
        if settings.with_prediction:
            arguments += ["--prediction", "prediction.nrrd"]
        if settings.with_metrics and not (settings.atlas or settings.per_component):
            arguments += ["--metrics", "metrics.json"]
        if settings.with_metrics and settings.per_component:  # each part's numbers go to components.json
            arguments += ["--measure", *METRIC_GROUPS]
        if settings.atlas and not settings.with_metrics:  # the slider's numbers, without the costly curves
            arguments += ["--measure", *ATLAS_MEASURES]
        if settings.with_metrics and settings.fractions:
            arguments += ["--fractions", *map(str, settings.fractions)]
        if settings.signed:
            arguments += ["--signed", "signed.nrrd"]
        arguments += settings.model.arguments()
        if settings.layer and not settings.atlas:
            arguments += ["--layer", settings.layer]
        return arguments

    @property
    def segment_name(self) -> str:
        settings = self.settings
        if settings.segmentation_node is None:
            return f"{self.card.classes[self.class_index]} (prediction)"
        return settings.segmentation_node.GetSegmentation().GetSegment(settings.segment_id).GetName()

    @property
    def log(self) -> list[str]:
        """The background process's progress messages and error output, in order."""
        return self._run.log

    def poll(self) -> Status:
        if self._import_failure is not None:
            return self._import_failure
        status = self._run.poll()
        if status.state == "finished" and self.heatmap_node is None:
            try:
                self._import_results()
            except ExplainInputError as error:
                self._import_failure = status = Status("failed", 1.0, str(error))
            finally:
                self._run.remove_files()
        elif status.state == "failed":
            self._run.remove_files()
        return status

    def _import_results(self) -> None:
        """Loads every result, or none: a failure part-way removes what was already added."""
        settings, work_dir = self.settings, self._run.work_dir
        summary = json.loads((work_dir / "summary.json").read_text(encoding="utf-8"))
        self.warnings = list(summary.get("warnings", []))
        atlas = (
            json.loads((work_dir / "atlas" / "atlas.json").read_text(encoding="utf-8"))["layers"]
            if settings.atlas
            else []
        )
        parts = self._parts(work_dir)
        key = atlas[-1]["layer"] if atlas else settings.method  # the finest layer is the atlas's main map
        key = parts[0]["component"] if parts else key  # the largest part is the main map
        title = summary["methods"][key]["title"]
        name = mrml_adapter.output_name(settings.volume_node, self.segment_name, title)
        scene = settings.volume_node.GetScene()
        prediction_name = f"{settings.volume_node.GetName()} - prediction"
        outputs = (
            name,
            f"{name} - metrics",
            f"{name} - signed",
            *(f"{name} at {row['layer']}" for row in atlas),
            *(f"{name} part {number}" for number in range(2, len(parts) + 1)),
            *((prediction_name,) if settings.with_prediction else ()),
        )
        previous = []
        if settings.replace_previous:
            previous = [mrml_adapter.previous_output(scene, output) for output in outputs]
        try:
            for row in atlas[:-1]:  # coarser layers first; the finest is imported last, and shown
                node = mrml_adapter.import_heatmap(
                    work_dir / "atlas" / f"heatmap_{row['layer']}.nrrd",
                    settings.volume_node,
                    f"{name} at {row['layer']}",
                )
                self.atlas_nodes.append(node)
            main_file = work_dir / "atlas" / f"heatmap_{key}.nrrd" if atlas else work_dir / "heatmap.nrrd"
            main_file = work_dir / "components" / f"heatmap_{key}.nrrd" if parts else main_file
            self.heatmap_node = mrml_adapter.import_heatmap(main_file, settings.volume_node, name)
            if parts:
                self._import_parts(parts, name)
            elif atlas:
                self.atlas_nodes.append(self.heatmap_node)
                layer_rows = {row["layer"]: metric_rows(row["metrics"]) for row in atlas}
                self.metrics_node = mrml_adapter.import_layer_table(layer_rows, self.heatmap_node, f"{name} - metrics")
            elif settings.with_metrics:
                measured = json.loads((work_dir / "metrics.json").read_text(encoding="utf-8"))
                self.metrics_node = mrml_adapter.import_metrics_table(
                    metric_rows(measured), self.heatmap_node, f"{name} - metrics"
                )
                if measured.get("deletion"):  # the fractions the curves' areas were measured over
                    fractions = " ".join(f"{value:g}" for value in measured["deletion"]["fractions"])
                    self.metrics_node.SetAttribute(mrml_adapter.PROVENANCE + "Fractions", fractions)
            if settings.with_prediction:
                self.prediction_node = mrml_adapter.import_prediction(
                    work_dir / "prediction.nrrd",
                    settings.volume_node,
                    self.card.segment_styles,
                    prediction_name,
                )
            if settings.signed:
                self.signed_node = mrml_adapter.import_signed_map(
                    work_dir / "signed.nrrd", settings.volume_node, f"{name} - signed"
                )
            provenance = self._provenance(summary, key)
            for node in {
                *self.atlas_nodes,
                self.heatmap_node,
                self.metrics_node,
                self.prediction_node,
                self.signed_node,
            } - {None}:
                mrml_adapter.record_provenance(node, provenance, settings.volume_node)
            for node, row in zip(self.atlas_nodes, atlas, strict=False):
                node.SetAttribute(mrml_adapter.PROVENANCE + "Layer", row["layer"])
            for node, row in zip(self.atlas_nodes, parts, strict=False):
                for attribute, value in (
                    ("Component", row["component"]),
                    ("VolumeMl", f"{row['volume_ml']:.2f}"),
                    ("TargetScore", str(row["target_score"])),
                ):
                    node.SetAttribute(mrml_adapter.PROVENANCE + attribute, value)
            if settings.volume_rendering_logic is not None:
                mrml_adapter.show_in_3d(self.heatmap_node, settings.volume_rendering_logic, self.prediction_node)
        except BaseException:
            added = {*self.atlas_nodes, self.heatmap_node, self.metrics_node, self.prediction_node, self.signed_node}
            for node in added - {None}:
                mrml_adapter.remove_output(node)
            self.heatmap_node = self.metrics_node = self.prediction_node = self.signed_node = None
            self.atlas_nodes = []
            raise
        for node in previous:
            if node is not None:
                mrml_adapter.remove_output(node)

    def _parts(self, work_dir: Path) -> list[dict]:
        """The rows of components.json (one per part of the segment), or none."""
        if not self.settings.per_component:
            return []
        return json.loads((work_dir / "components" / "components.json").read_text(encoding="utf-8"))["components"]

    def _import_parts(self, parts: list[dict], name: str) -> None:
        """The other parts' heatmaps (the largest is the main one) and a table of every part."""
        work_dir, volume = self._run.work_dir, self.settings.volume_node
        self.atlas_nodes.append(self.heatmap_node)
        for number, row in enumerate(parts[1:], 2):
            path = work_dir / "components" / f"heatmap_{row['component']}.nrrd"
            self.atlas_nodes.append(mrml_adapter.import_heatmap(path, volume, f"{name} part {number}"))
        rows = {f"part {number}": part_rows(row) for number, row in enumerate(parts, 1)}
        self.metrics_node = mrml_adapter.import_layer_table(rows, self.heatmap_node, f"{name} - metrics")

    def _provenance(self, summary: dict, key: str) -> dict[str, str]:
        """How the outputs were made, as node attributes (kept in saved scenes and MRBs)."""
        from .. import __version__

        settings, explained = self.settings, summary["methods"][key]
        return {
            "Method": explained["title"],
            "Layer": explained["layer"],
            "Model": self.card.name,
            "ModelFile": str(settings.model.path.resolve()) if settings.model.path is not None else "bundled",
            "Class": self.card.classes[self.class_index],
            "TargetScore": str(explained["target_score"]),
            "Segment": self.segment_name,
            "Device": settings.device,
            "Version": __version__,
            "Warnings": " ".join(self.warnings),
            "ModelSHA256": summary["record"]["model_sha256"],
            "Created": summary["record"]["created"],
        }

    def cancel(self) -> None:
        self._run.cancel()

    def wait(self, timeout: float | None = None) -> Status:
        self._run.wait(timeout)
        return self.poll()


def part_rows(row: dict) -> list[tuple[str, str]]:
    """One part of the segment as (column, value) pairs: its size, place, T, evidence and metrics."""
    evidence = Evidence(**row["evidence"])
    centre = ", ".join(f"{value:g}" for value in row["centre_lps_mm"])
    measured = metric_rows(row["metrics"]) if row["metrics"] else []
    return [("volume (ml)", f"{row['volume_ml']:.2f}"), ("centre (LPS mm)", centre), *evidence.rows(), *measured]


def memory_warning(settings: ExplainSettings) -> str | None:
    """Why a run would be refused for memory, judged before it starts from the CT's header
    as the pipeline judges it (the CT on the model's grid); None when it fits."""
    from ..models.card import model_grid_memory_problem

    card = settings.model.read()
    size, spacing = settings.volume_node.GetImageData().GetDimensions(), settings.volume_node.GetSpacing()
    return model_grid_memory_problem(size, spacing, card, settings.volume_node.GetName())


def model_version(model: Path | None) -> tuple:
    """What changes when a model's files change: each file's path, size and modification
    time (a folder's files two levels down: configs, folds, weights)."""
    if model is None:
        return ("bundled",)
    path = Path(model).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file())
    if path.is_dir():
        files += sorted(p for p in path.glob("*/*") if p.is_file())
    return tuple((str(file), file.stat().st_size, file.stat().st_mtime_ns) for file in files[:500])


def layer_label(layer: dict) -> str:
    """A layer of an inspection, as the layer selector shows it: its name, whether it is the
    recommended one, and which other layer rule (such as the former default) selects it."""
    notes = ["recommended"] if layer["recommended"] else []
    notes += [rule for rule in layer.get("rules", ()) if not layer["recommended"]]
    return f"{layer['name']} ({', '.join(notes)})" if notes else layer["name"]


class ModelInspector:
    """Describes a model (its classes, methods and layers: ``seghiresgradcam inspect``) in a
    background process, because building a network needs torch, which never enters the
    Slicer process. Descriptions are kept per model version, so a model is inspected once
    until its files change."""

    def __init__(self, python: str | None = None, worker: WarmWorker | None = None):
        self._python, self._worker = python, worker  # with a worker, inspecting warms it for the runs
        self._cache: dict[tuple, dict] = {}
        self._pending: tuple | None = None  # (key, query, work folder)

    def request(self, model: ModelSource) -> dict | None:
        """The description if known; else starts the inspection (replacing one under way)
        and returns None: ``poll()`` until it is there."""
        key = (model_version(model.path), model.trust_bundle, model.folds)
        if key in self._cache:
            return self._cache[key]
        self.cancel()
        with new_work_dir("SegHiResGradCAM-inspect-") as work_dir:
            arguments = ["inspect", *model.arguments()]
            if self._worker is not None:
                query = WarmQuery(self._worker, arguments, work_dir)
            else:
                query = BackgroundQuery(arguments, work_dir, self._python)
        self._pending = (key, query, work_dir)
        return None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def poll(self) -> dict | None:
        """The description once the inspection has finished, else None; raises RuntimeError
        with the command's own message when the model cannot be used."""
        if self._pending is None:
            return None
        key, query, work_dir = self._pending
        try:
            description = query.poll()
        except RuntimeError:
            self._pending = None
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        if description is None:
            return None
        self._pending = None
        shutil.rmtree(work_dir, ignore_errors=True)
        self._cache[key] = description
        return description

    def cancel(self) -> None:
        if self._pending is not None:
            _, query, work_dir = self._pending
            self._pending = None
            query.cancel()
            shutil.rmtree(work_dir, ignore_errors=True)
