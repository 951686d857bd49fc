"""The one pipeline behind the command line and the Slicer module: read a CT, prepare it
for the model, predict, explain one target with one or more methods, and write the results
in the CT's exact geometry."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ExplainInputError
from .model_card import read_model_card
from .preprocessing import (
    check_looks_like_ct,
    labels_on_original_grid,
    mask_to_model_grid,
    to_model_grid,
    to_original_grid,
)
from .volume_io import read_volume, write_volume


@dataclass
class ExplainJob:
    image: Path
    target_class: str
    methods: list[str]
    heatmaps: list[Path]  # one output file per method
    model: Path | None = None  # model card or folder; None: the bundled demo model
    mask: Path | None = None  # a label map whose nonzero voxels are M; None: the network's prediction
    layer: str | None = None
    device: str = "auto"
    prediction: Path | None = None  # where to write the predicted label map, if wanted
    summary: Path | None = None  # where to write a JSON summary (method titles, T, layer, times)
    progress: object = None  # callable(fraction, message)
    cancel: object = None


@dataclass
class JobResult:
    device: str
    layer: str
    target_class: int
    class_name: str
    scores: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    heatmaps: dict[str, sitk.Image] = field(default_factory=dict)
    prediction: sitk.Image | None = None
    segment: sitk.Image | None = None

    def summary(self) -> dict:
        from .methods import METHODS

        return {
            "device": self.device,
            "layer": self.layer,
            "target_class": self.target_class,
            "class_name": self.class_name,
            "methods": {
                name: {"title": METHODS[name].title, "target_score": score} for name, score in self.scores.items()
            },
            "seconds": self.seconds,
        }


def _report(job: ExplainJob, fraction: float, message: str) -> None:
    if job.progress is not None:
        job.progress(fraction, message)


def run(job: ExplainJob) -> JobResult:
    """Runs the job; files are written only once every result exists (nothing half-done)."""
    from .engine import explain
    from .methods import get_method
    from .model_inspection import resolve_device
    from .sliding_window import sliding_window_logits

    if len(job.methods) != len(job.heatmaps):
        raise ExplainInputError("Give one output file per method.")
    for method in job.methods:
        get_method(method)
    seconds = {}
    started = time.perf_counter()
    card = read_model_card(job.model)
    class_index = card.class_index(job.target_class)
    ct = read_volume(job.image, "CT")
    check_looks_like_ct(ct, Path(job.image).name)
    mask_image = read_volume(job.mask, "mask") if job.mask is not None else None
    network = card.build_network()
    device = resolve_device(job.device)
    model_input = to_model_grid(ct, card)
    if model_input.array.shape[0] != card.in_channels:
        raise ExplainInputError(f"The model expects {card.in_channels} input channels; a CT gives 1.")
    seconds["preparation"] = time.perf_counter() - started
    share = 1.0 / (1 + len(job.methods))

    def scaled(first: float, label: str):
        def report(fraction: float, message: str) -> None:
            _report(job, first + share * fraction * 0.95, f"{label} finished" if message == "done" else message)

        return report

    started = time.perf_counter()
    logits = sliding_window_logits(network, model_input.array, card.window, card.overlap, device=device,
                                   progress=scaled(0.0, "inference"), cancel=job.cancel)  # fmt: skip
    seconds["inference"] = time.perf_counter() - started
    if mask_image is not None:
        mask = mask_to_model_grid(mask_image, model_input)
    else:
        predicted = logits.argmax(0) == class_index if card.head == "softmax" else logits[class_index] > 0
        mask = predicted.numpy()
        if not mask.any():
            raise ExplainInputError(
                f"The network predicts no {card.classes[class_index]} voxel in this CT, so there is nothing to "
                "explain: give a segment with --mask, or choose another class."
            )
    result = JobResult(str(device), "", class_index, card.classes[class_index], {})
    for number, method in enumerate(job.methods, start=1):
        started = time.perf_counter()
        cam = explain(network, model_input.array, class_index, mask=mask, layer=job.layer or card.default_layer,
                      method=method, head=card.head, window=card.window, overlap=card.overlap, device=device,
                      progress=scaled(number * share, method), cancel=job.cancel)  # fmt: skip
        heatmap = to_original_grid(cam.normalized.astype(np.float32), model_input)
        heatmap.SetMetaData("seghiresgradcam_method", method)
        heatmap.SetMetaData("seghiresgradcam_target_score", f"{cam.score:.6g}")
        heatmap.SetMetaData("seghiresgradcam_heatmap_max", f"{float(cam.heatmap.max()):.6g}")
        result.heatmaps[method] = heatmap
        result.scores[method] = cam.score
        result.layer = cam.layer
        seconds[method] = time.perf_counter() - started
    result.prediction = labels_on_original_grid(logits.numpy(), model_input, card.head)
    result.segment = to_original_grid(mask.astype(np.uint8), model_input, labels=True)
    result.seconds = seconds
    for method, path in zip(job.methods, job.heatmaps, strict=True):
        write_volume(result.heatmaps[method], path)
    if job.prediction is not None:
        write_volume(result.prediction, job.prediction)
    if job.summary is not None:
        job.summary.write_text(json.dumps(result.summary(), indent=2))
    _report(job, 1.0, "done")
    return result
