"""Builds a small nnU-Net v2 results folder the way nnU-Net users get one, for the tests:

    python Testing/nnunet_results.py ROOT

- two synthetic KiTS-like cases as an nnU-Net raw dataset with KiTS23's region-based
  labels (kidney + masses, masses, tumour; sigmoid heads);
- nnU-Net's own fingerprint extraction, experiment planning and preprocessing; the 3D
  configuration's patch is made smaller than the images (so that a case needs several
  windows) and its network narrower (so that the tests stay fast), and the 2D
  configuration's network likewise;
- nnU-Net's own trainer, two iterations per fold, folds 0 and 1 of 3d_fullres and fold 0
  of 2d, which writes checkpoint_final.pth exactly as in real training.

Runs in its own process because nnU-Net reads its nnUNet_* folders from the environment
and patches its own pools (``in_this_process``).
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SegHiResGradCAM"))

DATASET_ID = 901
DATASET = "Dataset901_KiTSLike"
LABELS = {"background": 0, "kidney": [1, 2, 3], "masses": [2, 3], "tumor": 2}
REGIONS_CLASS_ORDER = [1, 3, 2]
CASE_SEEDS = (5, 6)
CASE_GRID = ((64, 64, 20), (6.0, 6.0, 9.0))  # voxels (x, y, z), mm
PATCH_3D = [16, 48, 48]
FEATURES = {"3d_fullres": [8, 16, 32, 48, 48], "2d": [8, 16, 32, 48, 48]}
TRAINED = (("3d_fullres", 0), ("3d_fullres", 1), ("2d", 0))


def write_raw_dataset(raw: Path) -> None:
    from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case

    folder = raw / DATASET
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for index, seed in enumerate(CASE_SEEDS):
        ct, labels = case_images(make_case(seed, Grid.centred(*CASE_GRID)))
        sitk.WriteImage(ct, str(folder / "imagesTr" / f"case_{index:03d}_0000.nii.gz"))
        sitk.WriteImage(labels, str(folder / "labelsTr" / f"case_{index:03d}.nii.gz"))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "regions_class_order": REGIONS_CLASS_ORDER,
        "numTraining": len(CASE_SEEDS),
        "file_ending": ".nii.gz",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))


def adjust_plans(plans_file: Path) -> None:
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    plans["configurations"]["3d_fullres"]["patch_size"] = PATCH_3D
    for name, features in FEATURES.items():
        arch = plans["configurations"][name]["architecture"]["arch_kwargs"]
        arch["features_per_stage"] = features[: arch["n_stages"]]
    plans_file.write_text(json.dumps(plans, indent=2))


class _ThreadContext:
    """What nnU-Net asks ``multiprocessing.get_context("spawn")`` for (a Pool), as threads."""

    def __init__(self, method):
        from multiprocessing.pool import ThreadPool

        self.Pool = ThreadPool


def in_this_process() -> None:
    """nnU-Net's fingerprinting and preprocessing run their cases in a pool of spawned
    processes, each importing nnU-Net and PyTorch anew (seconds each, for two small cases):
    here the pool's workers are threads of this process, running nnU-Net's same functions."""
    import types

    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.preprocessing.preprocessors import default_preprocessor

    for module in (fingerprint_extractor, default_preprocessor):
        module.multiprocessing = types.SimpleNamespace(get_context=_ThreadContext)


def main(root: Path) -> None:
    for name in ("raw", "preprocessed", "results"):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.environ.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
    )
    write_raw_dataset(root / "raw")

    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    in_this_process()
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=False)
    plan_experiments([DATASET_ID])
    preprocessed = root / "preprocessed" / DATASET
    adjust_plans(preprocessed / "nnUNetPlans.json")
    preprocess([DATASET_ID], configurations=("3d_fullres", "2d"), num_processes=[1, 1])
    splits = [{"train": ["case_000"], "val": ["case_001"]}, {"train": ["case_001"], "val": ["case_000"]}]
    (preprocessed / "splits_final.json").write_text(json.dumps(splits))

    # nnU-Net's own (mixed-case) variable: data augmentation in this process; set after planning, which needs > 0
    os.environ["nnUNet_n_proc_DA"] = "0"  # noqa: SIM112
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    dataset_json = json.loads((root / "raw" / DATASET / "dataset.json").read_text(encoding="utf-8"))
    torch.manual_seed(0)  # the same weights on every run (augmentation draws from numpy and random)
    np.random.seed(0)
    random.seed(0)
    for configuration, fold in TRAINED:
        plans = json.loads((preprocessed / "nnUNetPlans.json").read_text(encoding="utf-8"))
        plans["continue_training"] = False
        trainer = nnUNetTrainer(plans, configuration, fold, dataset_json, device=torch.device("cpu"))
        trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch = 1, 2, 1
        trainer.run_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
