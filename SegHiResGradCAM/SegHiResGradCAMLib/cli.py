"""The ``seghiresgradcam`` command line: explain a segmentation network's segment in a CT."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from . import __version__
from .cam.metric_table import EXTRA_GROUPS, METRIC_GROUPS, check_fractions
from .errors import ExplainCancelled, ExplainInputError, ExplainNoEvidence, ExplainResourceError


class TerminalProgress:
    """A one-line progress bar on stderr."""

    def __init__(self, stream=None, width: int = 30):
        self.stream = stream or sys.stderr  # the stream of the moment (tests replace sys.stderr)
        self.width, self.last, self.open = width, "", False

    def __call__(self, fraction: float, message: str) -> None:
        filled = round(fraction * self.width)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {100 * fraction:5.1f}% {message:<24}"
        if line != self.last:
            self.stream.write(line)
            self.stream.flush()
            self.last, self.open = line, True
        if fraction >= 1.0:
            self.end_line()

    def end_line(self) -> None:
        """Ends the bar's line, so that what is printed next (an error) starts on its own."""
        if self.open:
            self.stream.write("\n")
            self.stream.flush()
            self.open = False


def json_progress(fraction: float, message: str) -> None:
    print(json.dumps({"fraction": round(fraction, 4), "message": message}), flush=True)


def _progress(arguments):
    """The run's progress reporter, kept on ``arguments`` so that errors can end its line; a
    caller's own (``main(progress=...)``, the warm worker's) comes first."""
    styles = {"bar": TerminalProgress, "json": lambda: json_progress, "none": lambda: None}
    arguments.reporter = arguments.progress_hook or styles[arguments.progress]()
    return arguments.reporter


def _atlas(arguments, out: Path) -> tuple[list[str], list[Path], dict]:
    """A layer atlas's layers (``atlas``: one per decoder stage), its heatmap files in the
    folder ``out``, and its table and figure as extra outputs."""
    from .cam.model_inspection import decoder_stages

    layers = arguments.layers
    if layers == ["atlas"]:
        _, listed = _card_and_layers(arguments)
        layers = [layer.name for layer in decoder_stages(listed)]

    def table(result) -> str:
        rows = [
            {
                "layer": key,
                "method": result.explained[key][0],
                "target_score": result.scores[key],
                "evidence": result.evidence[key].as_dict(),
                "metrics": result.metrics[key].as_dict() if key in result.metrics else None,
            }
            for key in result.heatmaps
        ]
        return (
            json.dumps(
                {"class": result.class_name, "record": result.record, "warnings": result.warnings, "layers": rows},
                indent=2,
            )
            + "\n"
        )

    def figure(result) -> bytes:
        from .demo.run_demo import atlas_figure

        return atlas_figure(result.ct, result, f"{arguments.method} at each decoder stage")

    extra = {"atlas table": (out / "atlas.json", table), "atlas figure": (out / "atlas.png", figure)}
    return layers, [out / f"heatmap_{layer}.nrrd" for layer in layers], extra


def _case_figure(arguments):
    """The paper-style figure of the user's own case, with the ground truth when given."""

    from .volumes.volume_io import read_volume

    truth = read_volume(arguments.truth, "ground truth") if arguments.truth else None  # refused before the run

    def figure(result) -> bytes:
        import io

        from .demo.run_demo import case_figure

        buffer = io.BytesIO()
        case_figure(
            buffer, result.ct, truth, result, f"{Path(arguments.image).name}: {result.class_name}, layer {result.layer}"
        )
        return buffer.getvalue()

    return figure


def _explain(arguments) -> int:
    targets = _targets(arguments)
    if len(targets) > 1 or arguments.all_classes:
        return _explain_several(arguments, targets)
    (arguments.target_class, arguments.mask_label), _ = targets[0]
    return _explain_one(arguments)


def _targets(arguments) -> list[tuple[tuple[str, int | None], str]]:
    """((class, mask label), key) of each map asked for: several classes, several labels of
    the mask (paired with as many classes, or each with the one class), or every class."""
    labels = arguments.mask_label or [None]
    classes = arguments.target_class
    if arguments.all_classes:
        if len(labels) > 1:
            raise ExplainInputError("--all-classes takes at most one --mask-label; name the classes to pair labels.")
        classes = list(model_source(arguments).read().target_classes)
    if len(classes) > 1 and len(labels) > 1 and len(classes) != len(labels):
        raise ExplainInputError(
            f"{len(classes)} classes and {len(labels)} mask labels cannot be paired: give as many of each, "
            "or one class for several labels."
        )
    if len(labels) == 1:
        pairs = [(name, labels[0]) for name in classes]
    elif len(classes) == 1:
        pairs = [(classes[0], label) for label in labels]
    else:
        pairs = list(zip(classes, labels, strict=True))
    keyed = [(pair, _target_key(pair, several_labels=len(set(labels)) > 1)) for pair in pairs]
    keys = [key for _, key in keyed]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ExplainInputError(f"The target {repeated[0]} is asked for twice: name each class and label once.")
    return keyed


def _target_key(pair: tuple[str, int | None], several_labels: bool) -> str:
    name, label = pair
    key = "".join(character if character.isalnum() or character in "-_" else "_" for character in str(name))
    return f"{key}_label{label}" if several_labels else key


SEVERAL_TARGETS_REFUSE = {
    "layers": "--layers",
    "per_component": "--per-component",
    "signed": "--signed",
    "summary": "--summary",
    "figure": "--figure",
}


def _explain_several(arguments, targets) -> int:
    """One map per target, each written as the one-target run writes it, into the folder
    ``--out``; the CT is read and prepared, and the network run over it, once (``reuse``).
    All or nothing: the folder must be new or empty, and is removed when a target fails."""
    import shutil

    from .reuse import keep_prepared_inputs, kept_inputs

    given = [option for name, option in SEVERAL_TARGETS_REFUSE.items() if getattr(arguments, name)]
    given += ["--metrics FILE"] if arguments.metrics else []
    if given:
        raise ExplainInputError(
            f"With several targets, --out is a folder that receives heatmap_<target>.nrrd and "
            f"summary_<target>.json (and metrics_<target>.json) for each: leave out {', '.join(given)}."
        )
    out = Path(arguments.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExplainInputError(f"With several targets, --out is a new or empty folder; {out} is not one.")
    _check_explain_arguments(arguments)
    created = not out.exists()
    kept_before = kept_inputs() is not None
    keep_prepared_inputs()
    prediction, written, skipped = arguments.prediction, [], []
    try:
        for (target_class, mask_label), key in targets:
            arguments.target_class, arguments.mask_label = target_class, mask_label
            arguments.out = str(out / f"heatmap_{key}.nrrd")
            arguments.summary = str(out / f"summary_{key}.json")
            arguments.metrics = str(out / f"metrics_{key}.json") if arguments.metrics is not None else None
            arguments.prediction = None if written or skipped else prediction
            try:
                _explain_one(arguments)
            except ExplainInputError as error:
                if not (arguments.all_classes and arguments.from_prediction and "predicts no" in str(error)):
                    raise ExplainInputError(f"{target_class}: {error}") from error
                skipped.append(target_class)  # a class absent from this CT has no map
                continue
            written.append(key)
    except BaseException:  # what this command wrote goes, the folder too if it made it
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for path in out.iterdir():
                path.unlink()
        raise
    finally:
        keep_prepared_inputs(kept_before)
    if not written:
        raise ExplainInputError(f"The network predicts none of {', '.join(skipped)} in this CT: nothing to explain.")
    if arguments.progress != "json":
        absent = f"; not predicted in this CT: {', '.join(skipped)}" if skipped else ""
        print(f"{len(written)} maps ({', '.join(written)}) written to {out}, inference done once{absent}")
    return 0


def _explain_one(arguments) -> int:
    from .pipeline import ExplainJob, run

    _check_explain_arguments(arguments)
    out = Path(arguments.out)
    layers, heatmaps, extra = _atlas(arguments, out) if arguments.layers else (None, [out], {})
    if arguments.per_component:
        heatmaps, extra = [], {"components table": (out / "components.json", _components_table)}
    if arguments.figure:
        if layers:
            raise ExplainInputError("--figure is made for one map: a layer atlas writes its own atlas.png.")
        extra["figure"] = (Path(arguments.figure), _case_figure(arguments))
    inputs = [Path(arguments.truth)] if arguments.truth else []
    job = ExplainJob(
        image=Path(arguments.image),
        target_class=arguments.target_class,
        methods=[arguments.method],
        heatmaps=heatmaps,
        layers=layers,
        extra=extra,
        model=model_source(arguments),
        mask=Path(arguments.mask) if arguments.mask else None,
        layer=arguments.layer,
        device=arguments.device,
        prediction=Path(arguments.prediction) if arguments.prediction else None,
        summary=Path(arguments.summary) if arguments.summary else None,
        metrics=_measuring(arguments),
        measure=tuple(group for group in arguments.measure or METRIC_GROUPS if group != "none"),
        fractions=tuple(arguments.fractions) if arguments.fractions else None,
        metrics_file=Path(arguments.metrics) if arguments.metrics else None,
        mask_threshold=arguments.mask_threshold,
        mask_label=arguments.mask_label,
        signed=[Path(arguments.signed)] if arguments.signed else None,
        progress=_progress(arguments),
        cancel=arguments.cancel_hook,
        command=arguments.command_line,
        other_inputs=inputs,
        per_component=out if arguments.per_component else None,
        series=arguments.series,
        segment=arguments.segment,
    )
    result = run(job)
    _print_warnings(arguments, result.warnings)
    if arguments.per_component:
        if arguments.progress != "json":
            _print_components(result, out)
        return 0
    if layers:
        if arguments.progress != "json":
            print(
                f"layer atlas of {result.class_name} ({arguments.method}) at {', '.join(layers)}: heatmaps, "
                f"atlas.json and atlas.png written to {out}"
            )
            # both similarities: near the head, the whole-image one mostly measures its support (docs/layer-study.md)
            if result.metrics:
                rows = [
                    (
                        key,
                        f"{result.scores[key]:.4g}",
                        f"{100 * result.metrics[key].mass_in_target:.1f} %",
                        _format(result.metrics[key].randomisation_similarity),
                        _format(result.metrics[key].randomisation_similarity_in_target),
                        ", ".join(check.name for check in result.metrics[key].checks if not check.passed) or "-",
                    )
                    for key in layers
                ]
                print_table(["layer", "T", "heat in M", "randomisation similarity", "in M", "failed checks"], rows)
        return 0
    if arguments.progress != "json":
        replaced = "".join(f"; replaced {path}" for path in result.replaced)
        print(
            f"{arguments.method} of class {result.class_name} at layer {result.layer} on {result.device}: "
            f"T = {result.scores[arguments.method]:.4g}; heatmap written to {out}{replaced}"
        )
        evidence = result.evidence[arguments.method]
        print(
            f"mean {result.class_name} probability in M {evidence.mean_probability_in_target:.3f}, overlap of M "
            f"with the prediction (Dice) {evidence.prediction_overlap:.3f}; evidence for the class "
            f"{evidence.positive_evidence:.4g}, against {evidence.negative_evidence:.4g}"
        )
        for note in result.notes:
            print(note)
        if arguments.metrics is not None:
            print_table(["metric", "value"], result.metrics[arguments.method].rows())
    return 0


def component_rows(result) -> list[dict]:
    """One row per connected component of M: its size and place, T, evidence and metrics."""
    return [
        {
            "component": key,
            **result.components[key],
            "method": result.explained[key][0],
            "layer": result.explained[key][1],
            "target_score": result.scores[key],
            "evidence": result.evidence[key].as_dict(),
            "metrics": result.metrics[key].as_dict() if key in result.metrics else None,
        }
        for key in result.heatmaps
    ]


def _components_table(result) -> str:
    return (
        json.dumps(
            {
                "class": result.class_name,
                "record": result.record,
                "warnings": result.warnings,
                "components": component_rows(result),
            },
            indent=2,
        )
        + "\n"
    )


def _print_components(result, out: Path) -> None:
    print(
        f"{len(result.heatmaps)} component(s) of M explained one by one ({result.class_name}, layer "
        f"{result.layer}): heatmap_<component>.nrrd and components.json written to {out}"
    )
    rows = []
    for row in component_rows(result):
        evidence, measured = row["evidence"], row["metrics"] or {}
        failed = ", ".join(check["name"] for check in measured.get("checks", []) if not check["passed"])
        heat = f"{100 * measured['mass_in_target']:.1f} %" if measured else ""
        rows.append(
            (
                row["component"],
                f"{row['volume_ml']:.2f}",
                " ".join(f"{v:g}" for v in row["centre_lps_mm"]),
                f"{row['target_score']:.4g}",
                f"{evidence['mean_probability_in_target']:.3f}",
                f"{evidence['prediction_overlap']:.3f}",
                heat,
                failed or ("-" if measured else ""),
            )
        )
    print_table(
        [
            "component",
            "volume (ml)",
            "centre (LPS mm)",
            "T",
            "mean probability",
            "Dice with prediction",
            "heat in M",
            "failed checks",
        ],
        rows,
    )


def _measuring(arguments) -> bool:
    """An atlas measures every layer unless told --measure none; a single map when asked."""
    if arguments.measure == ["none"]:
        return False
    return arguments.metrics is not None or bool(arguments.layers) or bool(arguments.measure)


def _print_warnings(arguments, warnings: list[str]) -> None:
    if isinstance(arguments.reporter, TerminalProgress):
        arguments.reporter.end_line()
    for warning in warnings:
        print(f"seghiresgradcam: warning: {warning}", file=sys.stderr)


def _format(value) -> str:
    return "" if value is None else f"{value:.3f}"


def print_table(header: list[str], rows: list[tuple]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _card_and_layers(arguments):
    from .cam.ensemble import ensemble_members
    from .cam.model_inspection import list_layers

    card = model_source(arguments).read().resolved()
    # The members of a fold ensemble share their architecture, and each is explained at the same layer.
    network = ensemble_members(card.network())[0]  # built once per process: the warm worker keeps it
    return card, list_layers(network, (card.in_channels, *card.window))


def _stages(layers) -> dict[str, int]:
    """Layer name -> its decoder stage (1 = coarsest), for the layers a layer atlas explains."""
    from .cam.model_inspection import decoder_stages

    return {layer.name: number for number, layer in enumerate(decoder_stages(layers), 1)}


def _layer_rows(layers) -> list[dict]:
    stages = _stages(layers)
    return [
        {
            "name": layer.name,
            "type": layer.type,
            "shape": list(layer.shape),
            "recommended": layer.recommended,
            "rules": list(layer.rules),
            "stage": stages.get(layer.name),
        }
        for layer in layers
    ]


def _method_rows() -> list[dict]:
    from .cam.methods import METHODS

    return [
        {"name": method.name, "title": method.title, "cost": method.cost, "sliding_windows": method.windowed}
        for method in METHODS.values()
    ]


def _layers(arguments) -> int:
    _, layers = _card_and_layers(arguments)
    if arguments.json:
        print(json.dumps(_layer_rows(layers)))
        return 0
    stages = _stages(layers)
    for layer in layers:
        stage = f"decoder stage {stages[layer.name]} of {len(stages)}" if layer.name in stages else ""
        marker = "  (recommended)" if layer.recommended else ""
        marker += "".join(f"  (--layer {rule})" for rule in layer.rules if not layer.recommended)
        print(f"{layer.name:40s} {layer.type:20s} {'x'.join(map(str, layer.shape)):16s} {stage:22s}{marker}".rstrip())
    from .cam.model_inspection import DEFAULT_LAYER_RULE, LAYER_RULES

    print(f"recommended (rule {DEFAULT_LAYER_RULE}): {LAYER_RULES[DEFAULT_LAYER_RULE].because}")
    for name, rule in LAYER_RULES.items():
        if name != DEFAULT_LAYER_RULE:
            print(f"--layer {name}: {rule.because}")
    print("`explain --layers atlas` explains every decoder stage")
    return 0


def _demo(arguments) -> int:
    from .demo.run_demo import run_demo

    summary = run_demo(Path(arguments.out), seed=arguments.seed, device=arguments.device, progress=_progress(arguments))
    seconds = summary["seconds"]
    print(
        f"\nWritten to {arguments.out}/: the CT and ground truth (NIfTI), prediction.nrrd, one heatmap NRRD per "
        "method, figure.png"
    )
    print(
        f"device {summary['device']}, layer {summary['layer']}; inference {seconds['inference']:.1f} s, "
        f"total {seconds['total']:.1f} s; tumour Dice {summary['tumour_dice']:.3f}, kidney Dice "
        f"{summary['kidney_dice']:.3f}"
    )
    print("\nShare of each map's heat (on the CT's grid, against the ground truth):")
    print(f"{'method':22s} {'T':>10s} {'time':>7s} {'in tumour':>10s} {'in kidney':>10s} {'outside body':>13s}")
    for method, shares in summary["heat_shares"].items():
        tumour, kidney, outside = (100 * shares[key] for key in ("tumour", "kidney", "outside_body"))
        score = summary["target_score"][method]
        print(f"{method:22s} {score:10.4g} {seconds[method]:6.1f}s {tumour:9.1f}% {kidney:9.1f}% {outside:12.1f}%")
    print("\nThe same beside its baselines, and the checks (on the model's grid, M = the predicted tumour):")
    rows = []
    for method, measured in summary["metrics"].items():
        checks = {check["name"]: check for check in measured["checks"]}
        randomisation, dependence = checks["randomisation (inside M)"], checks["dependence on M"]
        rows.append(
            (
                method,
                f"{100 * measured['mass_in_target']:.1f} %",
                f"{100 * measured['mass_in_target_randomised']:.1f} %",
                f"{100 * measured['mass_in_target_uniform']:.1f} %",
                f"{randomisation['value']:.2f} {'pass' if randomisation['passed'] else 'FAIL'}",
                f"{dependence['value']:.3f} {'pass' if dependence['passed'] else 'FAIL'}",
            )
        )
    print_table(
        [
            "method",
            "heat in M",
            "randomised network",
            "flat map",
            "randomisation in M (< 0.5)",
            "same map for M moved aside (< 0.9)",
        ],
        rows,
    )
    for line in demo_reading(summary["metrics"]):
        print(line)
    return 0


def demo_reading(metrics: dict) -> list[str]:
    """What the demo's comparison shows and does not show, from its own numbers."""
    from .cam.metrics import DEPENDENCE_LIMIT, RANDOMISATION_LIMIT

    hires, grad = metrics["seg-hires-grad-cam"], metrics["seg-grad-cam"]
    lines = [
        f"What this shows: Seg-HiRes-Grad CAM puts {100 * hires['mass_in_target']:.0f} % of its heat in M (the "
        f"predicted tumour), Seg-Grad CAM {100 * grad['mass_in_target']:.0f} %."
    ]
    if hires["mass_in_target_randomised"] > 0.5:
        lines.append(
            f"What it does not show: that the network learned to look there. At this layer, next to the "
            f"output, the map of a network with random weights also puts "
            f"{100 * hires['mass_in_target_randomised']:.0f} % of its heat in M: heat in M mostly says "
            "where M is."
        )
    changed = hires["randomisation_similarity_in_target"] < RANDOMISATION_LIMIT
    moves = hires["dependence_on_target"] < DEPENDENCE_LIMIT
    lines.append(
        f"Inside M its pattern {'does' if changed else 'does not'} change with random weights (rank "
        f"similarity {hires['randomisation_similarity_in_target']:.2f}), and it "
        f"{'moves' if moves else 'does not move'} with M (similarity {hires['dependence_on_target']:.2f} "
        "with the map of M moved aside)."
    )
    if grad["dependence_on_target"] >= DEPENDENCE_LIMIT:
        lines.append(
            f"Seg-Grad CAM's map does not depend on M here (similarity {grad['dependence_on_target']:.3f}): "
            "it shows the layer's features, not why M is tumour."
        )
    return lines


def _inspect(arguments) -> int:
    """Everything a front end shows about a model, from one process: the classes a user can
    explain, the methods and the layers (building the network needs torch)."""
    card, layers = _card_and_layers(arguments)
    from .cam.model_inspection import device_description

    description = {
        "name": card.name,
        "head": card.head,
        "classes": list(card.classes),
        "target_classes": list(card.target_classes),
        "methods": _method_rows(),
        "layers": _layer_rows(layers),
        "device": device_description("auto"),
    }
    print(json.dumps(description))
    return 0


def _add_fractions_option(parser) -> None:
    parser.add_argument(
        "--fractions",
        nargs="+",
        type=float,
        metavar="F",
        help="the deletion, insertion and ROAD curves' fractions of the image, increasing, between 0 and 1 (default "
        "0 to 0.05 in steps of 0.005); fewer fractions cost fewer passes",
    )


def _check_explain_arguments(arguments) -> None:
    """What argparse lets through but no run can use: a threshold that is not a number, a file
    output given as a folder (a trailing slash, which the path would silently drop)."""
    if arguments.fractions:
        check_fractions(arguments.fractions)
    threshold = arguments.mask_threshold
    if threshold is not None and not math.isfinite(threshold):
        raise ExplainInputError(
            f"--mask-threshold must be a finite number between the mask's values; got "
            f"{'NaN' if math.isnan(threshold) else threshold}."
        )
    folder_out = bool(arguments.layers or arguments.per_component)
    files = {
        "--out": None if folder_out else arguments.out,
        "--prediction": arguments.prediction,
        "--summary": arguments.summary,
        "--metrics": arguments.metrics,
        "--figure": arguments.figure,
    }
    for option, value in files.items():
        if value and str(value).endswith(("/", os.sep)):
            raise ExplainInputError(
                f"{option} {value} is a folder (it ends in '/'): give a file name, e.g. "
                f"{value}{'heat.nrrd' if option == '--out' else 'file'}."
            )


def _cohort(arguments) -> int:
    from .cohort.case import CohortSettings
    from .cohort.run import run_cohort

    if arguments.fractions:
        check_fractions(arguments.fractions)
    settings = CohortSettings(
        model=model_source(arguments),
        target_class=arguments.target_class,
        methods=tuple(arguments.methods),
        explain=arguments.explain,
        metrics=arguments.metrics,
        device=arguments.device,
        layer=arguments.layer,
        mask_label=arguments.mask_label,
        command=arguments.command_line,
        measure=tuple(arguments.measure or METRIC_GROUPS),
        fractions=tuple(arguments.fractions) if arguments.fractions else None,
        per_component=arguments.per_component,
    )
    address = None if arguments.ray is None else (arguments.ray or "local")
    try:
        summary = run_cohort(
            Path(arguments.cases),
            Path(arguments.out),
            settings,
            ray_address=address,
            workers=arguments.workers,
            gpus_per_case=arguments.gpus_per_case,
            retry_failed=arguments.retry_failed,
            progress=_progress(arguments),
        )
    except KeyboardInterrupt:
        code = 143 if arguments.terminated() else 130  # SIGTERM's and Ctrl-C's usual exit codes
        return _fail(arguments, _kept_cases(Path(arguments.out)), code, prefix="seghiresgradcam: ")
    line = (
        f"{summary.done} of {summary.cases} cases explained ({summary.computed} computed now, "
        f"{summary.failed} failed) in {summary.seconds:.0f} s; results in {arguments.out}/results.csv, "
        f"report.html"
    )
    if arguments.progress != "json":
        if summary.changed:
            print(
                f"{len(summary.changed)} case(s) computed again because their CT, truth, mask, model or settings "
                f"changed since their results: {', '.join(summary.changed[:10])}"
            )
        print(line)
    if summary.failed:
        failed = [row["case"] for row in summary.rows if row.get("status") == "failed"]
        print(
            f"seghiresgradcam: {summary.failed} case(s) failed: {', '.join(failed[:10])} (see results.csv; "
            "--retry-failed runs them again)",
            file=sys.stderr,
        )
        return 1
    return 0


def _kept_cases(results: Path) -> str:
    """What a cancelled cohort leaves: its finished cases, named, and how to go on."""
    from .cohort.case import finished_cases

    kept = finished_cases(results)
    named = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
    if not kept:
        return "cancelled; no case had finished, nothing was kept."
    return f"cancelled; the {len(kept)} finished case(s) were kept ({named}); the same command computes the rest."


def _methods(arguments) -> int:
    from .cam.methods import METHODS

    if arguments.json:
        print(json.dumps(_method_rows()))
        return 0
    for method in METHODS.values():
        print(f"{method.name:20s} {method.title}  ({method.reference})\n{'':20s} cost: {method.cost}")
    return 0


TRUST_HELP = "the model is a MONAI bundle whose author you trust (its configuration can run arbitrary code)"
FOLDS_HELP = "nnU-Net results folder: the folds to ensemble, e.g. --folds 0 1 2 (default: every fold with a final "
FOLDS_HELP += "checkpoint)"


def model_help() -> str:
    """--model's help, from the registered formats."""
    from .models.formats import listed_formats

    kinds = "; ".join(model_format.help for model_format in listed_formats())
    return f"the model: {kinds}. Default: the bundled demo model"


def model_source(arguments):
    """The model options as one ModelSource."""
    from .models.formats import ModelSource

    folds = tuple(arguments.folds) if arguments.folds else None
    return ModelSource(Path(arguments.model) if arguments.model else None, arguments.trust_bundle, folds)


DEVICES = ["auto", "cpu", "cuda", "mps"]
PROGRESS_STYLES = ["bar", "json", "none"]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help=model_help())
    parser.add_argument("--trust-bundle", action="store_true", help=TRUST_HELP)
    parser.add_argument("--folds", nargs="+", help=FOLDS_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seghiresgradcam", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    explain = commands.add_parser("explain", help="explain a segment of a CT and write the heatmap")
    explain.add_argument(
        "--image",
        required=True,
        help="the CT: a volume file (NIfTI, NRRD, MHA: anything SimpleITK "
        "reads) or a DICOM series (its folder, or one of its files)",
    )
    explain.add_argument("--series", metavar="UID", help="the DICOM series to explain when the folder holds several")
    _add_model_options(explain)
    classes = explain.add_mutually_exclusive_group(required=True)
    classes.add_argument(
        "--target-class",
        nargs="+",
        metavar="CLASS",
        help="output class, by name or index; several: one map each, inference done once (--out is "
        "then a folder for heatmap_<class>.nrrd and summary_<class>.json)",
    )
    classes.add_argument(
        "--all-classes",
        action="store_true",
        help="one map per class the model can explain (with --from-prediction: each class it "
        "predicts in this CT), inference done once; --out is a folder as for several classes",
    )
    which = explain.add_mutually_exclusive_group(required=True)
    which.add_argument("--mask", help="label map whose nonzero voxels are the segment M (any grid)")
    which.add_argument("--from-prediction", action="store_true", help="M = the network's own prediction")
    reading = explain.add_mutually_exclusive_group()
    reading.add_argument(
        "--segment",
        metavar="NAME",
        help="M = the segment of this name in a Slicer segmentation file (--mask case.seg.nrrd; "
        "overlapping segments included); without it, a .seg.nrrd gives its only segment or the one "
        "named like the target class",
    )
    reading.add_argument(
        "--mask-threshold", type=float, metavar="T", help="M = the mask's voxels at or above T (for a probability map)"
    )
    reading.add_argument(
        "--mask-label",
        type=int,
        nargs="+",
        metavar="N",
        help="M = the mask's voxels of label N (default: a mask of one label is M; of several, "
        "the target class's label where the mask says which: segment names in a .seg.nrrd, "
        "or a softmax model's class index; otherwise the run is refused); several: one map "
        "each (paired with as many --target-class values, or all for one class)",
    )
    explain.add_argument("--method", default="seg-hires-grad-cam", help="CAM method (see `methods`)")
    explain.add_argument(
        "--layer",
        help="target layer, or a layer rule: last-before-head (the default) or "
        "stage-below-finest (one resolution level deeper); see `layers`",
    )
    explain.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="a layer atlas: explain at each LAYER, or `atlas` for one layer per decoder stage; "
        "--out is then a folder for heatmap_<layer>.nrrd, atlas.json (the metrics of every layer) "
        "and atlas.png",
    )
    explain.add_argument(
        "--per-component",
        action="store_true",
        help="explain each connected component of M on its own (several tumours): --out is then a "
        "folder for heatmap_component_<n>.nrrd (largest first) and components.json (size, "
        "centre, T, evidence and metrics of each)",
    )
    explain.add_argument("--device", default="auto", choices=DEVICES)
    explain.add_argument("--out", required=True, help="heatmap file, written in the CT's geometry (0..1)")
    explain.add_argument("--prediction", help="also write the predicted label map here")
    explain.add_argument(
        "--signed",
        metavar="FILE",
        help="also write the signed map S here (positive and negative evidence, not normalised; "
        "values per model-grid voxel, so that on the model's grid they sum to T)",
    )
    explain.add_argument("--summary", help="also write a JSON summary (T, layer, method title, times) here")
    explain.add_argument(
        "--figure",
        metavar="PNG",
        help="also write the paper-style figure of this case here: input, ground truth (--truth), "
        "prediction, M and the map through M's largest axial, coronal and sagittal cross-sections, "
        "200 dpi",
    )
    explain.add_argument("--truth", metavar="LABELS", help="the case's ground-truth label map, shown in --figure")
    explain.add_argument(
        "--metrics",
        nargs="?",
        const="",
        metavar="JSON",
        help="also measure the map, each number beside its baseline (heat inside M, in other "
        "predicted classes and outside the body; deletion and insertion areas; similarity after "
        "randomising the network; dependence on M) with pass/fail checks: print a table, and write "
        "JSON to the file if given. Costs about 45 more passes over the windows that reach M and two "
        "explanations; --measure chooses less.",
    )
    explain.add_argument(
        "--measure",
        nargs="+",
        choices=[*METRIC_GROUPS, *EXTRA_GROUPS, "none"],
        metavar="GROUP",
        help="which metrics (implies --metrics): localisation (free), faithfulness (deletion and "
        "insertion, about 22 passes, and 22 more once for their random-order baseline), "
        "randomisation (one explanation of a randomised network), dependence (one explanation of M "
        "moved aside), and, only when named, cascade (cascading randomisation from the output down: 4 "
        "more explanations) and road (ROAD: the voxels removed by noisy linear imputation, most and "
        "least relevant first: 2 passes and one imputation per fraction); default all but cascade and "
        "road; `none` skips the metrics of a layer atlas",
    )
    _add_fractions_option(explain)
    explain.add_argument("--progress", default="bar", choices=PROGRESS_STYLES)
    explain.set_defaults(run=_explain)

    layers = commands.add_parser("layers", help="list the layers that can be explained")
    _add_model_options(layers)
    layers.add_argument("--json", action="store_true", help="print JSON (for programs)")
    layers.set_defaults(run=_layers)

    inspect = commands.add_parser("inspect", help="print a model's classes, methods and layers as JSON")
    _add_model_options(inspect)
    inspect.set_defaults(run=_inspect)

    demo = commands.add_parser("demo", help="explain the bundled model's tumour segmentation of a sample case")
    demo.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--seed", type=int, default=7, help="which synthetic case (default: 7)")
    demo.add_argument("--device", default="auto", choices=DEVICES)
    demo.add_argument("--progress", default="bar", choices=PROGRESS_STYLES)
    demo.set_defaults(run=_demo)

    cohort = commands.add_parser("cohort", help="explain every case of a test set and write a table and a report")
    cohort.add_argument(
        "--cases", required=True, help="a KiTS-layout or nnU-Net-raw folder, or a CSV file (case,image[,truth][,mask])"
    )
    cohort.add_argument("--out", required=True, help="results folder (cases/, results.csv, .parquet, report.html)")
    _add_model_options(cohort)
    cohort.add_argument("--target-class", default="tumour", help="output class, by name or index")
    cohort.add_argument("--methods", nargs="+", default=["seg-hires-grad-cam", "seg-grad-cam"])
    cohort.add_argument(
        "--explain",
        choices=["prediction", "truth"],
        default="prediction",
        help="M: the network's prediction (default) or the ground truth of the class",
    )
    cohort.add_argument(
        "--metrics",
        action="store_true",
        help="also deletion/insertion, the randomisation check and the dependence on M, each with its baseline",
    )
    cohort.add_argument(
        "--measure",
        nargs="+",
        choices=[*METRIC_GROUPS, *EXTRA_GROUPS],
        metavar="GROUP",
        help="with --metrics: which metrics (default all but cascade and road; see explain --measure)",
    )
    _add_fractions_option(cohort)
    cohort.add_argument("--layer", help="target layer or layer rule (default: the model's; see `layers`)")
    cohort.add_argument(
        "--per-component",
        action="store_true",
        help="a row per connected component of M (each tumour on its own) and method",
    )
    cohort.add_argument(
        "--mask-label", type=int, metavar="N", help="with a mask column: M = the mask's voxels of label N"
    )
    cohort.add_argument("--device", default="auto", choices=DEVICES)
    cohort.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run the cases as Ray tasks: on a local runtime, or on ADDRESS (ray://... or auto)",
    )
    cohort.add_argument("--workers", type=int, default=2, help="local Ray runtime: how many workers (default 2)")
    cohort.add_argument("--gpus-per-case", type=float, default=0.0, help="Ray: GPUs each case asks for")
    cohort.add_argument("--retry-failed", action="store_true", help="run the cases that failed before again")
    cohort.add_argument("--progress", default="bar", choices=PROGRESS_STYLES)
    cohort.set_defaults(run=_cohort)

    methods = commands.add_parser("methods", help="list the registered CAM methods")
    methods.add_argument("--json", action="store_true", help="print JSON (for programs)")
    methods.set_defaults(run=_methods)
    return parser


def main(argv=None, progress=None, cancel=None) -> int:
    """Runs a command; returns its exit code. ``progress(fraction, message)`` and ``cancel()``
    (true once the run should stop) let a host process (the warm worker) follow an explain
    run and stop it without signals."""
    argv = sys.argv[1:] if argv is None else [str(argument) for argument in argv]
    arguments = build_parser().parse_args(argv)
    arguments.reporter, arguments.progress_hook, arguments.cancel_hook = None, progress, cancel
    arguments.command_line = shlex.join(["seghiresgradcam", *argv])
    try:
        _check_encodable(argv)
        with _terminate_as_interrupt() as terminated:
            arguments.terminated = terminated
            try:
                return arguments.run(arguments)
            except KeyboardInterrupt:
                if terminated():
                    return _fail(
                        arguments, "terminated (SIGTERM); no output was written.", 143, prefix="seghiresgradcam: "
                    )
                raise
    except BrokenPipeError:
        # The reader of our output went away (``layers --json | head``): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ExplainNoEvidence as error:
        return _fail(arguments, str(error), 4)
    except ExplainInputError as error:
        return _fail(arguments, str(error), 2)
    except ExplainResourceError as error:
        return _fail(arguments, str(error), 3)
    except (ExplainCancelled, KeyboardInterrupt):
        return _fail(arguments, "cancelled; no output was written.", 130, prefix="seghiresgradcam: ")
    except MemoryError:
        return _fail(arguments, "out of memory: crop or downsample the CT, or use a machine with more memory.", 3)
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        return _fail(arguments, f"{error.strerror or error}{where}", 1)


def _check_encodable(argv: list[str]) -> None:
    """Under a locale that is not UTF-8 (LANG=C with Python's UTF-8 mode off) a non-ASCII
    argument arrives undecodable, and ITK would abort the process when given it as a path:
    refused at once, with the fix."""
    for argument in argv:
        try:
            argument.encode("utf-8")
        except UnicodeEncodeError:
            shown = argument.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise ExplainInputError(
                f"{shown!r} holds characters this process cannot pass on: its locale is not "
                "UTF-8. Run it with LC_ALL=C.UTF-8 (or PYTHONUTF8=1)."
            ) from None


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (kill, timeout, docker stop, SLURM) ends a run as Ctrl-C does: every partial
    output is removed and finished cohort cases are kept. Yields whether it arrived."""
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def interrupt(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fail(arguments, message: str, code: int, prefix: str = "seghiresgradcam: error: ") -> int:
    """One line on stderr, on a line of its own even when a progress bar was drawn."""
    if isinstance(arguments.reporter, TerminalProgress):
        arguments.reporter.end_line()
    print(f"{prefix}{' '.join(message.split())}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
