"""``seghiresgradcam demo``: a synthetic KiTS-like case, the bundled network's tumour
segmentation, and its explanation by Seg-Grad CAM and Seg-HiRes-Grad CAM, laid out like
the paper's figures."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..cam.evidence import dice
from ..cam.metrics import body_mask, mass_share
from ..pipeline import ExplainJob, run
from ..volumes.volume_io import array_in_orientation, reorient, write_volume
from .phantom import case_images, make_case

DEMO_METHODS = ("seg-grad-cam", "seg-hires-grad-cam")
DEMO_MEASURES = ("localisation", "randomisation", "dependence")


def sample_case(folder: Path, seed: int, say=print) -> tuple[Path, Path]:
    """The KiTS-like sample CT and its ground truth (NIfTI, IPL), made once and reused."""
    ct_path, truth_path = folder / f"case_{seed:05d}_ct.nii.gz", folder / f"case_{seed:05d}_ground_truth.nii.gz"
    if ct_path.is_file() and truth_path.is_file():
        say(f"Reusing the sample case in {folder}/")
        return ct_path, truth_path
    say(f"Making the synthetic KiTS-like case {seed} (512 x 512 x 60, 0.78 x 0.78 x 3 mm) ...")
    ct, truth = case_images(make_case(seed))
    write_volume(reorient(truth, "IPL"), truth_path)
    write_volume(reorient(ct, "IPL"), ct_path)
    return ct_path, truth_path


def heat_shares(heat: np.ndarray, truth: np.ndarray, body: np.ndarray) -> dict[str, float]:
    return {
        "tumour": mass_share(heat, truth == 2),
        "kidney": mass_share(heat, truth == 1),
        "outside_body": mass_share(heat, ~body),
    }


def run_demo(out: Path, seed: int = 7, device: str = "auto", progress=None, say=print) -> dict:
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ct_path, truth_path = sample_case(out, seed, say)
    heatmap_paths = [out / f"heatmap_{method}.nrrd" for method in DEMO_METHODS]
    # The two cheap checks (two more explanations per method) say what heat in M can and cannot mean.
    job = ExplainJob(
        image=ct_path,
        target_class="tumour",
        methods=list(DEMO_METHODS),
        heatmaps=heatmap_paths,
        device=device,
        prediction=out / "prediction.nrrd",
        progress=progress,
        metrics=True,
        measure=DEMO_MEASURES,
        command="seghiresgradcam demo",
    )
    result = run(job)

    truth_image = sitk.ReadImage(str(truth_path))
    hu, truth = _lps(result.ct), _lps(truth_image)
    prediction = _lps(result.prediction)
    heatmaps = {method: _lps(result.heatmaps[method]) for method in DEMO_METHODS}
    body = body_mask(hu)
    case_figure(
        out / "figure.png",
        result.ct,
        truth_image,
        result,
        f"Synthetic KiTS-like case {seed}: why did the network segment this tumour?",
    )
    summary = {
        "device": result.device,
        "layer": result.layer,
        "seconds": {**result.seconds, "total": time.perf_counter() - started},
        "target_score": result.scores,
        "heat_shares": {method: heat_shares(heat, truth, body) for method, heat in heatmaps.items()},
        "metrics": {method: result.metrics[method].as_dict() for method in DEMO_METHODS},
        "warnings": result.warnings,
        "tumour_dice": dice(prediction == 2, truth == 2),
        "kidney_dice": dice(prediction == 1, truth == 1),
    }
    return summary


def _lps(image: sitk.Image) -> np.ndarray:
    return array_in_orientation(image, "LPS")


def _slice_view(ct: sitk.Image, truth: sitk.Image | None, result):
    """The axial slice through the middle of M's largest part and a view zoomed on the labels
    with a 50 mm margin: (hu, truth, prediction, segment) arrays, slice index, view."""
    hu, prediction, segment = _lps(ct), _lps(result.prediction), _lps(result.segment)
    truth = _lps(truth) if truth is not None else np.zeros_like(prediction)
    components, count = ndimage.label(segment)
    largest = components == (1 + int(np.argmax(ndimage.sum(segment, components, range(1, count + 1)))))
    centre = round(ndimage.center_of_mass(largest)[0])
    rows, columns = np.nonzero((truth[centre] > 0) | (segment[centre] > 0))
    margin = round(50 / reorient(result.prediction, "LPS").GetSpacing()[0])
    view = (
        slice(max(rows.min() - margin, 0), rows.max() + margin),
        slice(max(columns.min() - margin, 0), columns.max() + margin),
    )
    return (hu, truth, prediction, segment), centre, view


def atlas_figure(ct: sitk.Image, result, title: str) -> bytes:
    """A layer atlas as a PNG: one panel per layer, coarsest first, each titled with its heat
    in M and its similarity after randomising the network, over the image and inside M."""
    import io

    from .figures import method_panels, short_name

    (hu, _, _, segment), centre, view = _slice_view(ct, None, result)
    panels = {}
    for key in result.heatmaps:
        measured = result.metrics[key].as_dict() if key in result.metrics else {}
        similarity = measured.get("randomisation_similarity")
        inside = measured.get("randomisation_similarity_in_target")
        label = key
        if similarity is not None:
            label = (
                f"{short_name(key)}\nheat in M {100 * measured.get('mass_in_target', 0):.0f} %\n"
                f"random {similarity:.2f}, in M {inside:.2f}"
            )
        panels[label if label not in panels else key] = _lps(result.heatmaps[key])[centre][view]  # names kept apart
    buffer = io.BytesIO()
    method_panels(
        buffer,
        np.clip(hu[centre][view], -160, 240),
        segment[centre][view].astype(bool),
        panels,
        title=f"{title} (axial slice {centre})",
        columns=len(panels),
    )
    return buffer.getvalue()


def case_figure(target, ct: sitk.Image, truth: sitk.Image | None, result, title: str) -> None:
    """The paper-style figure of a pipeline result (``target``: a path or a file object): the
    input, the ground truth when given, the prediction, M and each method, through M's largest
    cross-section in the axial, coronal and sagittal views, zoomed with a 50 mm margin."""
    from ..cam.methods import METHODS
    from .figures import case_views_figure

    lps_ct = reorient(ct, "LPS")
    labels = {"Ground truth": _lps(truth)} if truth is not None else {}
    labels["Prediction"] = _lps(result.prediction)
    axes_sign = {0: (2, 1.0), 1: (1, -1.0), 2: (0, -1.0)}  # array axis -> (LPS coordinate, sign to S, A or R)

    def position(axis: int, index: int) -> float:
        point = [0, 0, 0]
        point[2 - axis] = index
        coordinate, sign = axes_sign[axis]
        return sign * lps_ct.TransformIndexToPhysicalPoint(point)[coordinate]

    heatmaps = {
        METHODS[result.explained[key][0]].title if key == result.explained[key][0] else key: _lps(heat)
        for key, heat in result.heatmaps.items()
    }
    case_views_figure(
        target,
        sitk.GetArrayFromImage(lps_ct),
        lps_ct.GetSpacing(),
        position,
        labels,
        _lps(result.segment) > 0,
        heatmaps,
        result.styles,
        title,
    )
