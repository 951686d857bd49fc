"""The one pipeline behind the command line and the Slicer module: read a CT, prepare it
for the model, predict, explain one target with one or more methods, and write the results
in the CT's exact geometry."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .cam.evidence import Evidence, check_has_evidence, dice, lesion_overlap, signed_masses
from .cam.metric_table import METRIC_GROUPS
from .errors import ExplainInputError
from .models.card import model_grid_memory_problem
from .models.formats import ModelSource
from .reuse import content_key, kept_inputs
from .volumes.label_maps import TargetClass, segment_voxels
from .volumes.outputs import OutputFiles
from .volumes.preparation import check_looks_like_ct
from .volumes.segmentation_file import is_segmentation_file, read_segment
from .volumes.volume_io import check_readable_path, read_ct, read_volume


@dataclass
class ExplainJob:
    image: Path
    target_class: str
    methods: list[str]
    heatmaps: list[Path]  # one output file per method
    model: ModelSource = field(
        default_factory=ModelSource
    )  # any format, with its options; a bare path (or None: the bundled model) too
    mask: Path | None = None  # a label map whose nonzero voxels are M; None: the network's prediction
    layer: str | None = None
    device: str = "auto"
    prediction: Path | None = None  # where to write the predicted label map, if wanted
    summary: Path | None = None  # where to write a JSON summary (method titles, T, layer, times)
    metrics: bool = False  # also measure each map (localisation, deletion/insertion, randomisation, M)
    measure: tuple[str, ...] = METRIC_GROUPS  # which metric groups, when measuring
    fractions: tuple[float, ...] | None = None  # deletion and insertion fractions (None: the default, 0..5 %)
    metrics_file: Path | None = None  # where to write the first method's metrics as JSON, if wanted
    mask_threshold: float | None = None  # M = mask voxels at or above this (for probability maps)
    mask_label: int | None = None  # M = mask voxels of this label (default: the target class's, see label_maps)
    signed: list[Path] | None = None  # also write each method's signed map S here (see signed_on_model_grid)
    layers: list[str] | None = None  # a layer atlas: the first method at each of these layers, one output each
    per_component: Path | None = None  # a folder: each method for each connected component of M
    extra: dict = field(default_factory=dict)  # label -> (path, function(JobResult) -> str or bytes), written last
    progress: object = None  # callable(fraction, message)
    cancel: object = None
    command: str = ""  # the command line that made the job, for the outputs' record
    series: str | None = None  # the DICOM series to read when ``image`` is a folder of several
    segment: str | None = None  # the segment of a Slicer segmentation file (.seg.nrrd) that is M, by name
    other_inputs: list[Path] = field(default_factory=list)  # more files the job reads (e.g. a figure's truth)

    def __post_init__(self):
        self.model = ModelSource.of(self.model)

    def explanations(self) -> list[tuple[str, str, str | None]]:
        """(key, method, layer) of each explanation, in order; the outputs follow this order.
        The key is the method, or in a layer atlas the layer. Per component, the explanations
        are known once M is (``explanation_targets``): none here."""
        if self.per_component:
            return []
        if self.layers:
            return [(layer, self.methods[0], layer) for layer in self.layers]
        return [(method, method, self.layer) for method in self.methods]


@dataclass
class JobResult:
    device: str
    layer: str
    target_class: int
    class_name: str
    scores: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    heatmaps: dict[str, sitk.Image] = field(default_factory=dict)
    signed: dict[str, sitk.Image] = field(default_factory=dict)  # method -> signed map, when asked for
    ct: sitk.Image | None = None  # the CT as the run read it (figures need it; no second read)
    metrics: dict = field(default_factory=dict)  # key (method, or layer in an atlas) -> ExplanationMetrics
    explained: dict = field(default_factory=dict)  # key -> (method, layer) of that explanation
    notes: list[str] = field(default_factory=list)  # what the user should know about how the run read its input
    evidence: dict = field(default_factory=dict)  # key -> Evidence (T, probability and overlap in M, masses)
    warnings: list[str] = field(default_factory=list)  # reasons to distrust the maps (see cam.evidence)
    record: dict = field(default_factory=dict)  # how the results were made (see provenance_record)
    styles: dict = field(default_factory=dict)  # predicted label value -> (class name, colour), for figures
    components: dict = field(default_factory=dict)  # per component of M: key -> size and centre
    component_masks: dict = field(default_factory=dict)  # key -> the component on the CT's grid
    replaced: list[Path] = field(default_factory=list)  # existing files the outputs replaced
    # The predicted label map and M on the CT's grid are made when first read: resampling
    # every class's logits onto a large CT takes seconds that a heatmap alone does not need.
    on_ct_grid: dict = field(default_factory=dict, repr=False)  # name -> the image, or how to make it

    def _on_ct_grid(self, name: str) -> sitk.Image | None:
        value = self.on_ct_grid.get(name)
        if callable(value):
            value = self.on_ct_grid[name] = value()
        return value

    @property
    def prediction(self) -> sitk.Image | None:
        """The predicted label map on the CT's grid."""
        return self._on_ct_grid("prediction")

    @property
    def segment(self) -> sitk.Image | None:
        """M on the CT's grid (1 inside)."""
        return self._on_ct_grid("segment")

    def summary(self) -> dict:
        from .cam.methods import METHODS

        return {
            "record": self.record,
            "warnings": self.warnings,
            "evidence": {key: evidence.as_dict() for key, evidence in self.evidence.items()},
            "metrics": {name: metrics.as_dict() for name, metrics in self.metrics.items()},
            "device": self.device,
            "layer": self.layer,
            "target_class": self.target_class,
            "class_name": self.class_name,
            "methods": {
                key: {
                    "title": METHODS[self.explained[key][0]].title,
                    "method": self.explained[key][0],
                    "layer": self.explained[key][1],
                    "target_score": score,
                }
                for key, score in self.scores.items()
            },
            "seconds": self.seconds,
        }

    def measured(self, key: str) -> dict:
        """One explanation's numbers as the metrics file holds them: the metrics, the
        evidence, the warnings and the record."""
        return {
            **self.metrics[key].as_dict(),
            "evidence": self.evidence[key].as_dict(),
            "warnings": self.warnings,
            "record": {**self.record, "method": self.explained[key][0], "layer": self.explained[key][1]},
        }


def _report(job: ExplainJob, fraction: float, message: str) -> None:
    if job.progress is not None:
        job.progress(fraction, message)


def output_files(job: ExplainJob, card) -> OutputFiles:
    """The job's outputs, and the files it reads, which no output may overwrite."""
    keys = [key for key, _, _ in job.explanations()]
    outputs = {f"{key} heatmap": path for key, path in zip(keys, job.heatmaps, strict=True)}
    outputs |= {f"{key} signed map": path for key, path in zip(keys, job.signed or [], strict=False)}
    volumes = set(outputs) | {"prediction"}
    outputs |= {"prediction": job.prediction, "summary": job.summary, "metrics": job.metrics_file}
    outputs |= {label: path for label, (path, _) in job.extra.items()}
    return OutputFiles(outputs, volumes, [job.image, job.mask, *card.input_files, *job.other_inputs])


def run(job: ExplainJob) -> JobResult:
    """Runs the job. Every output is checked before the computation and written only once
    every result exists, under temporary names renamed into place at the end (nothing
    half-done, no input overwritten)."""
    if job.per_component and (job.layers or job.signed is not None or job.metrics_file is not None):
        raise ExplainInputError(
            "Per component, the heatmaps and each component's numbers go to the folder "
            "(components.json): leave out --layers, --signed and a --metrics file."
        )
    count = len(job.explanations())
    if len(job.heatmaps) != count or (job.signed is not None and len(job.signed) != count):
        raise ExplainInputError("Give one output file per method (in a layer atlas: per layer).")
    started = time.perf_counter()
    for path, what in ((job.image, "CT"), (job.mask, "mask")):
        if path is not None:
            check_readable_path(path, what)  # before the outputs are compared with the inputs
    card = job.model.read()
    class_index = card.class_index(job.target_class)
    outputs = output_files(job, card)
    outputs.check()
    kept = kept_inputs()
    image_key = content_key(job.image, job.series) if kept is not None else None
    ct, notes = kept.read(image_key, lambda: read_ct(job.image, job.series)) if kept else read_ct(job.image, job.series)
    check_looks_like_ct(ct, Path(job.image).name)
    card = card.resolved()  # a bundle's evaluated configuration (its window, spacing)
    check_model_grid_memory(ct, card, Path(job.image).name)
    mask_image = None
    mask_source = "the network's prediction"
    if job.mask is not None:
        mask_image, note = read_mask(job, TargetClass(class_index, card.classes[class_index], card.head == "softmax"))
        notes += [note] if note else []
        mask_source = describe_mask(job)
    from .cam.methods import get_method  # the first imports of torch: after the cheap checks
    from .cam.model_inspection import resolve_device

    for method in job.methods:
        get_method(method)
    device = resolve_device(job.device)
    try:
        kept_case = kept.for_model(image_key, (card.identity(), repr(card), str(device))) if kept else None
        result = _compute(job, card, class_index, ct, mask_image, device, started, kept_case)
        # The model's files were read by now, so their digest names what made the result.
        result.notes, result.ct = notes, ct
        result.record = provenance_record(job, card, card.classes[class_index], mask_source)
        if job.per_component:  # the components' files are known now; checked like every output
            for key in result.heatmaps:
                outputs.add(f"{key} heatmap", Path(job.per_component) / f"heatmap_{key}.nrrd", volume=True)
            outputs.check()
        _label_outputs(job, result)
        _stage(outputs, job, result)
        result.replaced = outputs.commit()
    finally:
        outputs.discard()
    _report(job, 1.0, "done")
    return result


def read_mask(job: ExplainJob, target: TargetClass):
    """(M as a binary image on the mask's grid, a note or None): a segment of a Slicer
    segmentation file by name (slicerio, layers included), else a label map's voxels."""
    by_name = job.segment is not None or (
        is_segmentation_file(job.mask)
        and job.mask_label is None
        and job.mask_threshold is None
        and slicerio_installed()
    )
    if by_name:
        if not is_segmentation_file(job.mask):
            raise ExplainInputError(
                f"--segment chooses a segment of a Slicer segmentation (.seg.nrrd); "
                f"{Path(job.mask).name} is not one: use --mask-label N for a label "
                "map."
            )
        return read_segment(job.mask, job.segment, target.name)
    return segment_voxels(
        read_volume(job.mask, "mask"), Path(job.mask).name, job.mask_threshold, job.mask_label, target
    )


def slicerio_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("slicerio") is not None


def describe_mask(job: ExplainJob) -> str:
    """Where M came from, in words, for the record."""
    how = (
        f" (segment '{job.segment}')"
        if job.segment is not None
        else f" (label {job.mask_label})"
        if job.mask_label is not None
        else f" (values >= {job.mask_threshold:g})"
        if job.mask_threshold is not None
        else ""
    )
    return f"{Path(job.mask).resolve()}{how}"


def files_digest(paths) -> str:
    """One SHA-256 over the model's files (their names and contents), so that a result
    names exactly the weights that made it."""
    digest = hashlib.sha256()
    for path in sorted({Path(path).resolve() for path in paths}):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def provenance_record(job: ExplainJob, card, class_name: str, mask_source: str) -> dict[str, str]:
    """How a run's results were made; every output carries it (JSON, and NRRD metadata)."""
    return {
        "software": f"SegHiResGradCAM {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": job.command,
        "image": str(Path(job.image).resolve()),
        "model": card.name,
        "model_file": str(job.model.path.resolve()) if job.model.path is not None else "bundled demo model",
        "model_sha256": files_digest(card.input_files),
        "class": class_name,
        "mask": mask_source,
    }


def _label_outputs(job: ExplainJob, result: JobResult) -> None:
    """Every output volume carries the record, its evidence and the run's warnings."""
    common = {**result.record, "warnings": " | ".join(result.warnings)}
    for key, heatmap in result.heatmaps.items():
        # T is already there, at the precision each map needs (the signed map's sums to it).
        evidence = {
            name: f"{value:.6g}" for name, value in result.evidence[key].as_dict().items() if name != "target_score"
        }
        for volume in (heatmap, result.signed.get(key)):
            if volume is not None:
                _set_metadata(volume, {**common, **evidence})
    if job.prediction is not None:  # the predicted label map is made only when written (or read)
        _set_metadata(result.prediction, common)


def _set_metadata(volume: sitk.Image, entries: dict[str, str]) -> None:
    for name, value in entries.items():
        volume.SetMetaData(f"seghiresgradcam_{name}", " ".join(str(value).split()))


def check_model_grid_memory(ct: sitk.Image, card, name: str) -> None:
    """Refuses a CT whose field of view on the model's grid would not fit in memory, before
    anything is resampled."""
    problem = model_grid_memory_problem(ct.GetSize(), ct.GetSpacing(), card, name)
    if problem:
        raise ExplainInputError(problem)


def _stage(outputs: OutputFiles, job: ExplainJob, result: JobResult) -> None:
    for key in result.heatmaps:
        outputs.stage_volume(f"{key} heatmap", result.heatmaps[key])
        if job.signed is not None:
            outputs.stage_volume(f"{key} signed map", result.signed[key])
    if job.prediction is not None:
        outputs.stage_volume("prediction", result.prediction)
    if job.summary is not None:
        outputs.stage_text("summary", json.dumps(result.summary(), indent=2))
    if job.metrics_file is not None:
        outputs.stage_text("metrics", json.dumps(result.measured(job.explanations()[0][0]), indent=2) + "\n")
    for label, (_, make) in job.extra.items():
        outputs.stage_text(label, make(result))


def _compute(job: ExplainJob, card, class_index: int, ct, mask_image, device, started: float, kept=None) -> JobResult:
    """Predict, segment, then explain and measure each target (see ``_Computation``); with
    ``kept`` (a ``reuse.PreparedCase``), the prepared CT and the logits of an earlier run on
    the same CT and model are used, and this run's are kept."""
    computation = _Computation(job, card, class_index, ct, mask_image, device, started, kept)
    logits = computation.predict()
    predicted, mask = computation.segment(logits)
    result = computation.result
    regions = anatomy_regions(card, class_index, logits, computation.model_input, mask) if job.metrics else {}
    probabilities = computation.probabilities(logits)
    targets = explanation_targets(job, mask)
    if job.per_component:
        for key, _, _, target in targets:
            result.components[key], result.component_masks[key] = component_row(computation.model_input, target)
    computation.plan_progress(len(targets))
    for key, method, layer, target in targets:
        heatmap, explain_with = computation.explain(key, method, layer, target, predicted, probabilities)
        if job.metrics:
            computation.measure(key, target, heatmap, regions, explain_with)
    model_input = computation.model_input
    result.on_ct_grid["prediction"] = lambda: model_input.labels_on_original(logits.numpy(), card.head)
    result.on_ct_grid["segment"] = lambda: model_input.to_original(mask.astype(np.uint8), labels=True)
    result.seconds = computation.seconds
    return result


class _Computation:
    """One job's computation on the model grid, in the pipeline's (z, y, x) axis order: the
    network run on the prepared CT (``predict``), M (``segment``), each target's map with its
    evidence and outputs (``explain``) and its metrics (``measure``). How the format's network
    sees a volume (axis order, 2D, tiling, crop) is ``cam.volume_runner``'s."""

    def __init__(self, job: ExplainJob, card, class_index: int, ct, mask_image, device, started: float, kept=None):
        self.job, self.card, self.class_index, self.device, self.kept = job, card, class_index, device, kept
        self.seconds: dict[str, float] = {}
        self.network = card.network()  # built once per process while the model's files stay the same
        if kept is not None and kept.model_input is None:
            kept.model_input = card.prepare_input(ct, job.image)
        self.model_input = kept.model_input if kept is not None else card.prepare_input(ct, job.image)
        if self.model_input.array.shape[0] != card.in_channels:
            raise ExplainInputError(f"The model expects {card.in_channels} input channels; a CT gives 1.")
        # What would be refused after inference is refused before it (minutes on a large CT).
        self.given_mask = self.model_input.mask_to_model(mask_image) if mask_image is not None else None
        check_layers(self.network, card, job)
        self.seconds["preparation"] = time.perf_counter() - started
        self.share = 1.0 / (1 + len(job.explanations()) * (2 if job.metrics else 1))  # of the progress, per step
        self.step, self.done = self.share, self.share
        self.result = JobResult(str(device), "", class_index, card.classes[class_index], {}, styles=card.segment_styles)
        self.random_curves: dict[int, tuple] = {}  # M's id -> random-order curves (they depend on M, not the map)

    def _progress(self, first: float, label: str, width=None):
        def report(fraction: float, message: str) -> None:
            done = first + (width or self.share) * fraction * 0.95
            _report(self.job, done, f"{label} finished" if message == "done" else message)

        return report

    def predict(self):
        """The blended logits (classes, z, y, x) on the model grid."""
        from .cam.volume_runner import volume_logits

        if self.kept is not None and self.kept.logits is not None:
            _report(self.job, self.share, "inference kept from the previous run")
            self.seconds["inference"] = 0.0
            return self.kept.logits
        started = time.perf_counter()
        logits = volume_logits(
            self.network,
            self.card,
            self.model_input.array,
            self.device,
            self._progress(0.0, "inference"),
            self.job.cancel,
        )
        self.seconds["inference"] = time.perf_counter() - started
        if self.kept is not None:
            self.kept.logits = logits
        return logits

    def segment(self, logits) -> tuple[np.ndarray, np.ndarray]:
        """(the network's prediction of the class, M): M is the given mask, else the prediction."""
        card, class_index = self.card, self.class_index
        if card.head == "softmax":
            predicted = (self._predicted_labels(logits) == class_index).numpy()
        else:
            predicted = (logits[class_index] > 0).numpy()
        if self.given_mask is not None:
            return predicted, self.given_mask
        if not predicted.any():
            raise ExplainInputError(
                f"The network predicts no {card.classes[class_index]} voxel in this CT, so there is nothing to "
                "explain: give a segment with --mask, or choose another class."
            )
        return predicted, predicted

    def _predicted_labels(self, logits):
        """The softmax head's label per voxel (kept with the logits: on a large CT it takes a while)."""
        kept = self.kept
        if kept is None:
            return logits.argmax(0)
        if kept.labels is None:
            kept.labels = logits.argmax(0)
        return kept.labels

    def probabilities(self, logits) -> np.ndarray:
        from .cam.passes import class_probability

        return class_probability(logits[None].float(), self.class_index, self.card.head)[0].numpy()

    def plan_progress(self, targets: int) -> None:
        self.step = (1 - self.share) / (targets * (2 if self.job.metrics else 1))

    def explain(self, key: str, method: str, layer, target: np.ndarray, predicted, probabilities):
        """The map of one target with its evidence, as outputs on the CT's grid; returns the
        map on the model grid and the function that explains it again (for the metrics)."""
        from .cam.methods import METHODS
        from .cam.volume_runner import explain_on_model_grid, signed_on_model_grid

        job, card, result = self.job, self.card, self.result
        started = time.perf_counter()

        def explain_with(net, progress=None, target=target):
            chosen = layer or card.default_layer
            array, index, cancel = self.model_input.array, self.class_index, job.cancel
            return explain_on_model_grid(net, card, array, index, target, method, chosen, self.device, progress, cancel)

        heatmap, cam = explain_with(self.network, self._progress(self.done, key, self.step))
        self.done += self.step
        overlap = lesion_overlap(target, predicted) if job.per_component else dice(target, predicted)
        evidence = Evidence(cam.target_score, float(probabilities[target].mean()), overlap, *signed_masses(cam.raw))
        result.evidence[key] = evidence
        for warning in evidence.warnings(result.class_name):
            if warning not in result.warnings:
                result.warnings.append(warning)
        if job.layers and not heatmap.max() > 0:  # an atlas shows every layer; a layer without evidence is said
            result.warnings.append(f"No positive evidence for {result.class_name} in M at layer {cam.layer}.")
        else:
            check_has_evidence(heatmap, METHODS[method].title, cam.layer, result.class_name, cam.target_score)
        normalized = heatmap / heatmap.max() if heatmap.max() > 0 else heatmap
        original = self.model_input.to_original(normalized.astype(np.float32))
        original.SetMetaData("seghiresgradcam_method", method)
        original.SetMetaData("seghiresgradcam_target_score", f"{cam.target_score:.6g}")
        original.SetMetaData("seghiresgradcam_heatmap_max", f"{float(heatmap.max()):.6g}")
        original.SetMetaData("seghiresgradcam_layer", cam.layer)
        result.heatmaps[key] = original
        if job.signed is not None:
            signed = signed_on_model_grid(card, cam, target)
            result.signed[key] = _signed_image(self.model_input, signed, method, cam.target_score)
        result.scores[key] = cam.target_score
        result.explained[key] = (method, cam.layer)
        result.layer = cam.layer
        self.seconds[key] = time.perf_counter() - started
        return heatmap, explain_with

    def measure(self, key: str, target: np.ndarray, heatmap: np.ndarray, regions: dict, explain_with) -> None:
        """The metrics of a map ``explain`` made, each beside its baseline."""
        from .cam.volume_runner import metrics_on_model_grid

        started = time.perf_counter()
        _report(self.job, self.done, f"measuring {key}")
        measured = metrics_on_model_grid(
            self.network,
            self.card,
            self.model_input.array,
            self.class_index,
            target,
            heatmap,
            regions,
            explain_with,
            measure=self.job.measure,
            random_curves=self.random_curves.get(id(target)),
            **({"fractions": self.job.fractions} if self.job.fractions else {}),
        )
        self.result.metrics[key] = measured
        if measured.deletion_random is not None:
            self.random_curves[id(target)] = (measured.deletion_random, measured.insertion_random)
        self.done += self.step
        self.seconds[f"{key} metrics"] = time.perf_counter() - started


def explanation_targets(job: ExplainJob, mask: np.ndarray) -> list[tuple[str, str, str | None, np.ndarray]]:
    """(key, method, layer, M) of each explanation. With ``per_component``, one per connected
    component of M (26-connected, largest first, keys ``component_1``, ...) and method."""
    if not job.per_component:
        return [(key, method, layer, mask) for key, method, layer in job.explanations()]
    from scipy import ndimage

    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum(mask, components, range(1, count + 1))
    order = np.argsort(-np.asarray(sizes), kind="stable") + 1
    targets = []
    for rank, label in enumerate(order, 1):
        component = components == label
        for method in job.methods:  # one key per component and method: component_1, or component_1_<method>
            suffix = f"_{method}" if len(job.methods) > 1 else ""
            targets.append((f"component_{rank}{suffix}", method, job.layer, component))
    return targets


def component_row(model_input, component: np.ndarray) -> tuple[dict, sitk.Image]:
    """A component's size and where it lies, measured on the CT's own grid (LPS mm), and the
    component on that grid."""
    on_ct = model_input.to_original(component.astype(np.uint8), labels=True)
    voxels = sitk.GetArrayFromImage(on_ct) > 0
    volume = float(voxels.sum() * np.prod(on_ct.GetSpacing())) / 1000.0
    centre = np.argwhere(voxels).mean(0)[::-1] if voxels.any() else np.zeros(3)
    centre_mm = on_ct.TransformContinuousIndexToPhysicalPoint(centre.tolist())
    row = {"voxels_on_ct": int(voxels.sum()), "volume_ml": volume, "centre_lps_mm": [round(v, 1) for v in centre_mm]}
    return row, on_ct


def _signed_image(model_input, signed: np.ndarray, method: str, target_score: float) -> sitk.Image:
    """The signed map on the CT's grid, not normalised: its values are S per model-grid voxel,
    so on a CT stored on the model's own grid the file sums to T."""
    image = model_input.to_original(signed.astype(np.float32))
    image.SetMetaData("seghiresgradcam_method", method)
    image.SetMetaData("seghiresgradcam_map", "signed")
    image.SetMetaData("seghiresgradcam_target_score", f"{target_score:.9g}")
    return image


def check_layers(network, card, job: ExplainJob) -> None:
    """Each layer the job names must exist and lie on the path to the output (as ``layers``
    lists them), judged on one window of zeros."""
    from .cam.ensemble import ensemble_members
    from .cam.model_inspection import LAYER_RULES, find_layer, list_layers, reaches_output

    named = {layer or card.default_layer for _, _, layer in job.explanations()} - {None} - set(LAYER_RULES)
    if not named:
        return
    import torch

    member = ensemble_members(network)[0]
    shape = (card.in_channels, *card.window)  # the window is in the network's own axis order
    explainable = {info.name for info in list_layers(member, shape)}
    probe = torch.zeros((1, *shape))
    for name in sorted(named - explainable):
        module = find_layer(member, name, probe)  # an unknown name: its message lists the layers
        if not reaches_output(member, module, probe):
            raise ExplainInputError(
                f"The output does not depend on layer {name!r} (no path from it to the "
                "segmentation output): choose one that `layers` lists."
            )


def anatomy_regions(card, class_index: int, logits, model_input, target_mask) -> dict[str, np.ndarray]:
    """Where else the heat could go, on the model grid: the network's other predicted
    classes and the outside of the patient's body. Sigmoid regions are nested (KiTS23:
    kidney + masses contains masses contains tumour), so each region counts only outside
    M; otherwise a region holding M would also be credited with the heat inside M."""
    from .cam.metrics import body_mask

    if card.head == "softmax":
        predicted = logits.argmax(0).numpy()
        regions = {
            f"in {name} (predicted)": predicted == index
            for index, name in enumerate(card.classes)
            if index not in (0, class_index)
        }
    else:
        regions = {
            f"in {name} (predicted) outside M": (logits[index] > 0).numpy() & ~target_mask
            for index, name in enumerate(card.classes)
            if index != class_index
        }
    ct = model_input.original
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    axial = 2 - int(np.argmax(np.abs(direction[2])))  # the array axis closest to head-feet
    body = np.moveaxis(body_mask(np.moveaxis(sitk.GetArrayFromImage(ct), axial, 0)), 0, axial)
    body_image = sitk.GetImageFromArray(body.astype(np.uint8))
    body_image.CopyInformation(ct)
    regions["outside body"] = ~model_input.mask_to_model(body_image)
    return regions
