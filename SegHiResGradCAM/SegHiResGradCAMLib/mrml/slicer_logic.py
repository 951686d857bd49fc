"""The Slicer module's logic without Qt or torch: check the inputs, export them, run the
pipeline in the background, and bring the results into the scene.

A run leaves the scene untouched until it has finished: on failure or Cancel no node is
created and the temporary files are removed; input nodes are never modified.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..cam.metric_table import metric_rows
from ..errors import ExplainInputError
from ..models.formats import read_model_card
from . import mrml_adapter
from .background import BackgroundRun, Status


@dataclass
class ExplainSettings:
    volume_node: object
    target_class: str
    method: str = "seg-hires-grad-cam"
    segmentation_node: object = None  # with segment_id; None: explain the network's prediction
    segment_id: str | None = None
    model: Path | None = None  # model card or folder; None: the bundled demo model
    layer: str | None = None
    device: str = "auto"
    with_prediction: bool = False  # also load the predicted segmentation
    with_metrics: bool = False  # also measure the map and load the numbers as a table
    trust_bundle: bool = False  # the user trusts the MONAI bundle given as the model (its config can run code)
    folds: list[str] | None = None  # nnU-Net results folder: the folds to ensemble (None: all)
    replace_previous: bool = False  # replace this module's earlier output of the same name


class ExplainRun:
    """One background computation; poll() until its state is not "running"."""

    def __init__(self, settings: ExplainSettings, python: str | None = None):
        self.settings = settings
        self.heatmap_node = None
        self.prediction_node = None
        self.metrics_node = None
        self._import_failure: Status | None = None
        mrml_adapter.check_volume(settings.volume_node)
        # Refuses a missing or unreadable card, or an untrusted bundle, before any work.
        card = read_model_card(settings.model, trust_bundle=settings.trust_bundle, folds=settings.folds)
        self.class_index = card.class_index(settings.target_class)
        self.card = card
        work_dir = Path(tempfile.mkdtemp(prefix="SegHiResGradCAM-"))
        try:
            arguments = self._export_inputs(work_dir)
            self._run = BackgroundRun(arguments, work_dir, python)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise

    def _export_inputs(self, work_dir: Path) -> list[str]:
        settings = self.settings
        mrml_adapter.export_volume(settings.volume_node, work_dir / "ct.nrrd")
        arguments = ["explain", "--image", "ct.nrrd", "--target-class", str(self.class_index),
                     "--method", settings.method, "--device", settings.device, "--out", "heatmap.nrrd",
                     "--summary", "summary.json"]  # fmt: skip
        if settings.segmentation_node is not None:
            mrml_adapter.export_segment(settings.segmentation_node, settings.segment_id, settings.volume_node,
                                        work_dir / "segment.nrrd")  # fmt: skip
            arguments += ["--mask", "segment.nrrd"]
        else:
            arguments += ["--from-prediction"]
        if settings.with_prediction:
            arguments += ["--prediction", "prediction.nrrd"]
        if settings.with_metrics:
            arguments += ["--metrics", "metrics.json"]
        if settings.model is not None:
            arguments += ["--model", str(Path(settings.model).resolve())]
        if settings.trust_bundle:
            arguments += ["--trust-bundle"]
        if settings.folds:
            arguments += ["--folds", *map(str, settings.folds)]
        if settings.layer:
            arguments += ["--layer", settings.layer]
        return arguments

    @property
    def segment_name(self) -> str:
        settings = self.settings
        if settings.segmentation_node is None:
            return f"{self.card.classes[self.class_index]} (prediction)"
        return settings.segmentation_node.GetSegmentation().GetSegment(settings.segment_id).GetName()

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
        summary = json.loads((work_dir / "summary.json").read_text())
        title = summary["methods"][settings.method]["title"]
        name = mrml_adapter.output_name(settings.volume_node, self.segment_name, title)
        scene = settings.volume_node.GetScene()
        previous = [
            mrml_adapter.previous_output(scene, output) for output in (name, f"{name} - metrics")
        ] if settings.replace_previous else []  # fmt: skip
        try:
            self.heatmap_node = mrml_adapter.import_heatmap(work_dir / "heatmap.nrrd", settings.volume_node, name)
            self.heatmap_node.SetAttribute(
                "SegHiResGradCAM.TargetScore", str(summary["methods"][settings.method]["target_score"])
            )
            self.heatmap_node.SetAttribute("SegHiResGradCAM.Layer", summary["layer"])
            if settings.with_metrics:
                rows = metric_rows(json.loads((work_dir / "metrics.json").read_text()))
                self.metrics_node = mrml_adapter.import_metrics_table(rows, self.heatmap_node, f"{name} - metrics")
            if settings.with_prediction:
                self.prediction_node = mrml_adapter.import_prediction(
                    work_dir / "prediction.nrrd", settings.volume_node, self.card.segment_styles,
                    f"{settings.volume_node.GetName()} - prediction",
                )  # fmt: skip
        except BaseException:
            for node in (self.heatmap_node, self.metrics_node, self.prediction_node):
                if node is not None:
                    mrml_adapter.remove_output(node)
            self.heatmap_node = self.metrics_node = self.prediction_node = None
            raise
        for node in previous:
            if node is not None:
                mrml_adapter.remove_output(node)

    def cancel(self) -> None:
        self._run.cancel()

    def wait(self, timeout: float | None = None) -> Status:
        self._run.wait(timeout)
        return self.poll()
