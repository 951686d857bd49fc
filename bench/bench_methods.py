"""Every CAM method on synthetic KiTS-like cases with the bundled demo network: explanation
metrics per method (mean and spread), paired Seg-HiRes-Grad CAM vs Seg-Grad CAM
differences, and a figure with one panel per method on the same slice.

Each case is made on the model's grid; M is the network's tumour prediction (cases where it
predicts none are skipped and the next seed is drawn). Every method explains the same crop
around M (cam.volume_runner.region_of_interest), so that all of them, including those that cannot
run window by window, see the same network input; the metrics are measured on that crop.

    .venv/bin/python bench/bench_methods.py [--cases 20] [--layer last-before-head] [--out bench/results/methods]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from SegHiResGradCAMLib import METHODS, explain
from SegHiResGradCAMLib.cam.metrics import body_mask, explanation_metrics
from SegHiResGradCAMLib.cam.sliding_window import sliding_window_logits
from SegHiResGradCAMLib.cam.volume_runner import region_of_interest
from SegHiResGradCAMLib.demo.figures import method_panels
from SegHiResGradCAMLib.demo.phantom import Grid, make_case
from SegHiResGradCAMLib.models.formats import read_model_card

FIRST_SEED = 300  # not a training (1000-1047, 2000-) or validation (100-109) seed
TUMOUR, KIDNEY = 2, 1
FRACTIONS = np.linspace(0.0, 0.05, 11)
FIELD_OF_VIEW_MM = (400.0, 400.0, 180.0)  # (x, y, z), as the demo CTs


def prepared_cases(card, network, count: int):
    """(seed, image crop, tumour prediction crop, kidney crop, outside-body crop, HU crop)."""
    grid = Grid.centred(
        tuple(round(size / step) for size, step in zip(FIELD_OF_VIEW_MM, card.spacing, strict=True)), card.spacing
    )
    seed = FIRST_SEED
    while count:
        case = make_case(seed, grid)
        image = card.intensity.apply(case.hu)[None]
        logits = sliding_window_logits(network, image, card.window, card.overlap)
        predicted = (logits.argmax(0) == TUMOUR).numpy()
        if predicted.any():
            box = region_of_interest(predicted, card.window)
            outside = ~body_mask(case.hu)
            kidney = case.labels[box] == KIDNEY
            yield seed, image[(slice(None), *box)], predicted[box], kidney, outside[box], case.hu[box]
            count -= 1
        else:
            print(f"case {seed}: no tumour predicted, skipped", flush=True)
        seed += 1


def measure(network, image, mask, kidney, outside, method, layer=None, fractions=FRACTIONS):
    """The metrics of one explanation (at ``layer``, default the recommended one) and its
    normalised heatmap."""
    started = time.process_time()
    result = explain(network, image, TUMOUR, mask, method=method, layer=layer, batch_size=8)
    seconds = time.process_time() - started

    def again(randomised):
        return explain(randomised, image, TUMOUR, mask, method=method, layer=result.layer, batch_size=8).heatmap

    metrics = explanation_metrics(
        network,
        image,
        TUMOUR,
        mask,
        result.heatmap,
        {"in kidney": kidney, "outside body": outside},
        fractions=fractions,
        explain_again=again,
    )
    row = {
        "mass in M": metrics.mass_in_target,
        "mass in kidney": metrics.mass_in_regions["in kidney"],
        "mass outside body": metrics.mass_in_regions["outside body"],
        "peak in M": float(metrics.peak_in_target),
        "deletion area": metrics.deletion.area,
        "insertion area": metrics.insertion.area,
        "randomisation similarity": metrics.randomisation_similarity,
        "randomisation similarity in M": metrics.randomisation_similarity_in_target,
        "CPU s": seconds,
    }
    return row, result.normalized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument(
        "--layer",
        default="last-before-head",
        help="layer or layer rule (default: the layer before the head, as in docs/methods.md)",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "methods"))
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md from per_case.json")
    arguments = parser.parse_args()
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    if arguments.report_only:
        report(json.loads((out / "per_case.json").read_text(encoding="utf-8")), out)
        return
    torch.manual_seed(0)
    card = read_model_card()
    network = card.build_network().eval()
    methods = list(METHODS)
    rows = {method: [] for method in methods}
    for number, (seed, image, mask, kidney, outside, hu) in enumerate(prepared_cases(card, network, arguments.cases)):
        maps = {}
        for method in methods:
            row, maps[method] = measure(network, image, mask, kidney, outside, method, arguments.layer)
            rows[method].append({"seed": seed, **row})
        print(
            f"case {seed} ({number + 1}/{arguments.cases}): "
            + ", ".join(
                f"{method} {rows[method][-1]['mass in M']:.2f}/{rows[method][-1]['deletion area']:.3f}"
                for method in methods
            ),
            flush=True,
        )
        if number == 0:
            centre = int(np.argmax(mask.sum((1, 2))))
            method_panels(
                out / "methods.png",
                np.clip(hu[centre], -160, 240),
                mask[centre],
                {METHODS[method].title: heat[centre] for method, heat in maps.items()},
                title=f"Synthetic case {seed}: tumour prediction (cyan), axial slice {centre}",
            )
    (out / "per_case.json").write_text(json.dumps(rows, indent=1))
    report(rows, out)


def report(rows, out: Path) -> None:
    text = table(rows) + "\n" + paired(rows, "seg-hires-grad-cam", "seg-grad-cam")
    (out / "summary.md").write_text(text)
    print(text)
    print(f"written to {out}/: summary.md, per_case.json, methods.png")


def table(rows) -> str:
    metrics = [key for key in next(iter(rows.values()))[0] if key != "seed"]
    lines = ["| method | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for method, values in rows.items():
        cells = []
        for metric in metrics:
            column = np.array([row[metric] for row in values], dtype=float)
            cells.append(f"{column.mean():.3f} ± {column.std(ddof=1):.3f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(mean ± standard deviation over {len(values)} cases)\n"


def paired(rows, candidate: str, baseline: str) -> str:
    better_when_lower = {
        "mass in kidney",
        "mass outside body",
        "deletion area",
        "randomisation similarity",
        "randomisation similarity in M",
        "CPU s",
    }
    lines = [
        f"Paired {candidate} minus {baseline} (per case):",
        "| metric | mean difference ± sd | better / worse / tied |",
        "|---|---|---|",
    ]
    for metric in rows[candidate][0]:
        if metric == "seed":
            continue
        difference = np.array([a[metric] - b[metric] for a, b in zip(rows[candidate], rows[baseline], strict=True)])
        sign = -1 if metric in better_when_lower else 1
        better, worse = int((sign * difference > 0).sum()), int((sign * difference < 0).sum())
        lines.append(
            f"| {metric} | {difference.mean():+.3f} ± {difference.std(ddof=1):.3f} | "
            f"{better} / {worse} / {len(difference) - better - worse} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
