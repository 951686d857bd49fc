"""Trains the two further networks of the layer study (bench/bench_layers.py) with the demo
model's recipe (same synthetic KiTS-like cases, grid, intensity window, losses and
schedule), so that the default-layer rule is chosen on three architectures, not one:

- ``basicunet``: MONAI ``BasicUNet`` (two convolutions per level at full resolution, instance
  normalisation, concatenating skips), narrowed to features (8, 8, 16, 32, 64, 8);
- ``plainconvunet``: nnU-Net's ``PlainConvUNet`` exactly as nnU-Net's planner describes it
  in a results folder made by the tests' planner and trainer (Testing/models/nnunet_results.py,
  run here if the folder is missing), built by nnU-Net's ``get_network_from_plans`` with the
  demo's four classes instead of KiTS23's three regions and without deep supervision. The
  trainer's two iterations are no training; the weights come from this recipe.

The third network is the bundled demo U-Net. On the 2-core CPU machine each network gets
--minutes (default 22) with one thread, on (32, 64, 64) patches in batches of 2 (the full
resolution convolutions of these two make the demo's batches ten times slower). Writes,
into --out (default bench/results/layer_study/models, not committed):
``basicunet.json`` (a model card) + ``basicunet.pt``, ``plainconvunet.pt`` + ``plainconvunet.json``
(the plans' architecture and the training record), and the nnU-Net folder.

    .venv/bin/python Utilities/train_layer_study_models.py [--arch basicunet plainconvunet] [--minutes 22]
        [--resume | --retrain]

The networks of the layer study (docs/layer-study.md): 22 minutes each (both at once on the 2 cores), then
``--resume --minutes 16`` (a second learning-rate cycle): 3800 and 3400 steps, tumour Dice
0.37 (BasicUNet) and 0.31 (PlainConvUNet) on the validation cases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from demo_model_recipe import KWARGS, NAME, OUTPUT, VALIDATION_SEEDS, load_cases, validate
from train_demo_model import TRAINING_SEEDS, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bench" / "results" / "layer_study" / "models"
TRAINING_PATCH = (32, 64, 64)  # (z, y, x); divisible by both networks' total strides
BASIC_UNET_FEATURES = (8, 8, 16, 32, 64, 8)
NNUNET_CONFIGURATION = "Dataset901_KiTSLike/nnUNetTrainer__nnUNetPlans__3d_fullres"
ARCHITECTURES = ("basicunet", "plainconvunet")


def nnunet_architecture(out: Path) -> dict:
    """The 3d_fullres architecture from the tests' nnU-Net results folder (made if missing)."""
    folder = out / "nnunet"
    plans_file = folder / "results" / NNUNET_CONFIGURATION / "plans.json"
    if not plans_file.exists():
        subprocess.run(
            [sys.executable, str(ROOT / "Testing" / "models" / "nnunet_results.py"), str(folder)],
            check=True,
            capture_output=True,
        )
    return json.loads(plans_file.read_text(encoding="utf-8"))["configurations"]["3d_fullres"]["architecture"]


def build_plain_conv_unet(architecture: dict, classes: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        architecture["network_class_name"],
        architecture["arch_kwargs"],
        architecture["_kw_requires_import"],
        1,
        classes,
        allow_init=True,
        deep_supervision=False,
    )


def load_plain_conv_unet(out: Path = DEFAULT_OUT):
    """The trained PlainConvUNet and its record (weights loaded with weights_only=True)."""
    record = json.loads((out / "plainconvunet.json").read_text(encoding="utf-8"))
    network = build_plain_conv_unet(record["architecture"], record["classes"])
    network.load_state_dict(torch.load(out / "plainconvunet.pt", weights_only=True))
    return network.eval(), record


def demo_card() -> dict:
    return json.loads((OUTPUT / f"{NAME}.json").read_text(encoding="utf-8"))


def build(arch: str, out: Path):
    if arch == "basicunet":
        from monai.networks.nets import BasicUNet

        kwargs = dict(spatial_dims=3, in_channels=1, out_channels=KWARGS["out_channels"], features=BASIC_UNET_FEATURES)
        return BasicUNet(**kwargs), {
            "architecture": "BasicUNet",
            "kwargs": {**kwargs, "features": list(kwargs["features"])},
        }
    architecture = nnunet_architecture(out)
    return build_plain_conv_unet(architecture, KWARGS["out_channels"]), {
        "architecture": architecture,
        "classes": KWARGS["out_channels"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--minutes", type=float, default=22.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--retrain", action="store_true", help="train again when the network is already there")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="train the network already there --minutes more (a new learning-rate cycle)",
    )
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    arguments.out.mkdir(parents=True, exist_ok=True)
    for arch in arguments.arch:
        record_file = arguments.out / f"{arch}.json"
        rounds = (
            json.loads(record_file.read_text(encoding="utf-8"))["training"]["rounds"] if record_file.exists() else []
        )
        if rounds and not (arguments.retrain or arguments.resume):
            print(f"{arch}: already trained ({record_file}); --resume trains it more, --retrain again")
            continue
        if arguments.retrain:
            rounds = []
        started = time.time()
        torch.manual_seed(arguments.seed)
        network, description = build(arch, arguments.out)
        if rounds:
            network.load_state_dict(torch.load(arguments.out / f"{arch}.pt", weights_only=True))
        training = load_cases(TRAINING_SEEDS)
        seed = arguments.seed + len(rounds)  # a new patch sequence for each round
        steps = train(
            network,
            training,
            arguments.minutes * 60,
            seed,
            batch=2,
            patch=TRAINING_PATCH,
            log=lambda line, arch=arch: print(f"{arch}: {line}", flush=True),
        )
        rounds.append({"seed": seed, "steps": steps, "minutes": arguments.minutes})
        network.eval()
        torch.save(
            {key: value.detach().clone() for key, value in network.state_dict().items()}, arguments.out / f"{arch}.pt"
        )
        dice = validate(network, load_cases(VALIDATION_SEEDS))
        print(f"{arch}: validation Dice {dice} after {steps} steps", flush=True)
        training_record = {
            "recipe": "Utilities/train_demo_model.py train()",
            "rounds": rounds,
            "batch": 2,
            "steps": sum(r["steps"] for r in rounds),
            "patch": list(TRAINING_PATCH),
            "threads": 1,
            "training_seeds": f"{TRAINING_SEEDS.start}-{TRAINING_SEEDS.stop - 1} and fresh ones",
        }
        validation = {"seeds": list(VALIDATION_SEEDS), "dice": dice}
        if arch == "basicunet":
            card = {
                **demo_card(),
                **description,
                "name": "Layer-study BasicUNet",
                "weights": f"{arch}.pt",
                "description": "MONAI BasicUNet trained by Utilities/train_layer_study_models.py with the "
                "demo recipe. For the layer study only.",
                "training": training_record,
                "validation": validation,
            }
        else:
            card = {
                "name": "Layer-study PlainConvUNet",
                **description,
                "training": training_record,
                "validation": validation,
            }
        (arguments.out / f"{arch}.json").write_text(json.dumps(card, indent=2) + "\n")
        print(f"{arch}: wrote {arguments.out / arch}.pt and .json after {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
