"""The layer study: Seg-HiRes-Grad CAM at every decoder stage of three trained architectures
on held-out synthetic KiTS-like cases, the evidence for the default-layer rule.

Architectures: the bundled demo MONAI ``UNet``, MONAI ``BasicUNet`` and nnU-Net's
``PlainConvUNet`` (both trained by Utilities/train_layer_study_models.py with the demo's
recipe; run it first). Per architecture, cases from seed 300 on (never trained or validated
on) where the network predicts a tumour; M is that prediction; every stage explains the same
crop around M (as bench_methods.py). Per stage: heat in M, in the kidney and outside the
body, the peak in M, deletion and insertion areas, randomisation similarity (whole map and
inside M) and the CPU time of the explanation. The report gives mean ± sd per stage, the
shares of cases whose randomisation similarity (whole crop, inside M) is below 0.5, the
stage each criterion "finest stage with similarity below 0.5 on most cases" (whole crop,
inside M) selects, the layer each rule of ``LAYER_RULES`` selects, the two rules' paired
differences, and a figure per architecture with one panel per stage. docs/layer-study.md
is this report.

    .venv/bin/python bench/bench_layers.py [--arch unet basicunet plainconvunet] [--cases 20] [--fractions 6]
    .venv/bin/python bench/bench_layers.py --report-only

Architectures can run in separate processes (one --arch each); --report-only joins them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_methods import measure, paired, prepared_cases

from SegHiResGradCAMLib.cam.model_inspection import (
    LAYER_RULES,
    decoder_stages,
    layer_by_rule,
    list_layers,
)
from SegHiResGradCAMLib.demo.figures import method_panels, short_name
from SegHiResGradCAMLib.models.formats import read_model_card

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Utilities"))
from train_layer_study_models import DEFAULT_OUT as MODELS
from train_layer_study_models import load_plain_conv_unet

ARCHITECTURES = {
    "unet": "MONAI UNet (bundled demo)",
    "basicunet": "MONAI BasicUNet",
    "plainconvunet": "nnU-Net PlainConvUNet",
}
METHOD = "seg-hires-grad-cam"
SIMILARITY_LIMIT = 0.5
METRICS_BETTER_LOW = ("mass outside body", "deletion area", "randomisation similarity", "randomisation similarity in M")


def study_network(arch: str):
    """(card for the grid, intensity and window; network, evaluated)."""
    demo = read_model_card()
    if arch == "unet":
        return demo, demo.build_network().eval()
    if not (MODELS / f"{arch}.json").exists():
        raise SystemExit(f"{MODELS / arch}.json is missing: run Utilities/train_layer_study_models.py first.")
    if arch == "basicunet":
        card = read_model_card(MODELS / "basicunet.json")
        return card, card.build_network().eval()
    return demo, load_plain_conv_unet(MODELS)[0]


def run_architecture(arch: str, cases: int, fractions: np.ndarray, out: Path) -> None:
    torch.manual_seed(0)
    card, network = study_network(arch)
    rows, stages = [], None
    started = time.time()
    for number, (seed, image, mask, kidney, outside, hu) in enumerate(prepared_cases(card, network, cases)):
        layers = list_layers(network, image.shape)
        stages = decoder_stages(layers)
        picks = {rule: layer_by_rule(network, image.shape, rule) for rule in LAYER_RULES}
        case = {"seed": seed, "crop": list(image.shape[1:]), "stages": [], "rules": picks}
        maps = {}
        for index, stage in enumerate(stages):
            row, maps[stage.name] = measure(network, image, mask, kidney, outside, METHOD, stage.name, fractions)
            case["stages"].append({"stage": index + 1, "layer": stage.name, "shape": list(stage.shape), **row})
        rows.append(case)
        print(
            f"{arch} case {seed} ({number + 1}/{cases}, {time.time() - started:.0f} s): "
            + ", ".join(
                f"{s['stage']}: {s['mass in M']:.2f}/{s['randomisation similarity']:.2f}" for s in case["stages"]
            ),
            flush=True,
        )
        if number == 0:
            centre = int(np.argmax(mask.sum((1, 2))))
            titles = {
                f"stage {s['stage']}/{len(stages)}\n{short_name(s['layer'])}\nin M {s['mass in M']:.0%}, "
                f"rand. {s['randomisation similarity']:.2f}": maps[s["layer"]][centre]
                for s in case["stages"]
            }
            method_panels(
                out / f"atlas_{arch}.png",
                np.clip(hu[centre], -160, 240),
                mask[centre],
                titles,
                title=f"{ARCHITECTURES[arch]}, case {seed}: {METHOD} per decoder stage (coarsest first)",
                columns=len(titles),
            )
    (out / f"per_case_{arch}.json").write_text(json.dumps(rows, indent=1))


def summarise(arch: str, cases: list[dict]) -> tuple[str, dict]:
    """The markdown table of one architecture, and what the criterion and each rule select."""
    stages = cases[0]["stages"]
    metrics = [key for key in stages[0] if key not in ("stage", "layer", "shape")]
    header = ["stage", "layer", "grid", *metrics, f"cases with similarity < {SIMILARITY_LIMIT}", "the same in M"]
    lines = [
        f"### {ARCHITECTURES[arch]} ({len(cases)} cases)",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    passing, passing_in_m = [], []
    for index, stage in enumerate(stages):
        cells = [f"{stage['stage']}/{len(stages)}", f"`{stage['layer']}`", "x".join(map(str, stage["shape"][1:]))]
        for metric in metrics:
            column = np.array([case["stages"][index][metric] for case in cases], dtype=float)
            cells.append(f"{column.mean():.3f} ± {column.std(ddof=1):.3f}")
        below, below_in_m = (
            sum(case["stages"][index][metric] < SIMILARITY_LIMIT for case in cases)
            for metric in ("randomisation similarity", "randomisation similarity in M")
        )
        passing.append(below > len(cases) / 2)
        passing_in_m.append(below_in_m > len(cases) / 2)
        cells += [f"{below}/{len(cases)}", f"{below_in_m}/{len(cases)}"]
        lines.append("| " + " | ".join(cells) + " |")

    def finest(passed):
        chosen = [stage["layer"] for stage, ok in zip(stages, passed, strict=True) if ok]
        return chosen[-1] if chosen else None

    selection = {"criterion": finest(passing), "criterion in M": finest(passing_in_m), **cases[0]["rules"]}
    lines += [
        "",
        f"- finest stage with randomisation similarity < {SIMILARITY_LIMIT} on most cases: "
        f"`{selection['criterion']}`; inside M: `{selection['criterion in M']}`",
    ]
    lines += [f"- rule `{rule}` selects `{layer}`" for rule, layer in cases[0]["rules"].items()]
    rows = {
        stage["layer"]: [
            {"seed": case["seed"], **{metric: case["stages"][index][metric] for metric in metrics}} for case in cases
        ]
        for index, stage in enumerate(stages)
    }
    deeper, last = selection["stage-below-finest"], selection["last-before-head"]
    if deeper != last and deeper in rows and last in rows:
        lines += ["", paired(rows, deeper, last)]
    return "\n".join(lines) + "\n", selection


def report(out: Path) -> None:
    sections, selections = [], {}
    for arch in ARCHITECTURES:
        path = out / f"per_case_{arch}.json"
        if path.exists():
            text, selections[arch] = summarise(arch, json.loads(path.read_text(encoding="utf-8")))
            sections.append(text)
    agreement = [
        "| architecture | criterion | criterion in M | " + " | ".join(LAYER_RULES) + " |",
        "|---" * (len(LAYER_RULES) + 3) + "|",
    ]
    for arch, selection in selections.items():
        agreement.append(
            f"| {ARCHITECTURES[arch]} | `{selection['criterion']}` | `{selection['criterion in M']}` | "
            + " | ".join(f"`{selection[rule]}`" for rule in LAYER_RULES)
            + " |"
        )
    text = "\n".join(sections) + "\nWhat the criterion and each rule select:\n\n" + "\n".join(agreement) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    print(f"written to {out}/: summary.md, per_case_<arch>.json, atlas_<arch>.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument(
        "--fractions", type=int, default=6, help="points of the deletion and insertion curves over 0-5 %% of the voxels"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "layers")
    parser.add_argument("--report-only", action="store_true", help="rebuild summary.md from per_case_<arch>.json")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    if not arguments.report_only:
        for arch in arguments.arch:
            run_architecture(arch, arguments.cases, np.linspace(0.0, 0.05, arguments.fractions), arguments.out)
    report(arguments.out)


if __name__ == "__main__":
    main()
