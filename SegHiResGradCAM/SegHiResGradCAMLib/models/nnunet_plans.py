"""What an nnU-Net v2 results folder's plans.json and dataset.json say, as plain data (no
torch, no nnU-Net): shared by the torch-free reader (``nnunet_folder``) and nnU-Net's
computation (``nnunet``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINT = "checkpoint_final.pth"
TILE_STEP = 0.5  # nnUNetPredictor's default tile_step_size
INSTALL_ADVICE = (
    "nnU-Net v2 is not installed. Install it with its plain dependencies but without its own (they would "
    "replace PyTorch): pip install '.[nnunet]' && pip install --no-deps -r requirements-nnunet.txt"
)


@dataclass(frozen=True)
class NnUNetModel:
    """What an nnU-Net results folder's card carries besides the common fields."""

    folder: Path
    plans: dict
    dataset_json: dict
    configuration: str
    folds: tuple[str, ...]
    checkpoints: tuple[Path, ...]

    @property
    def regions(self) -> list[tuple[int, ...]] | None:
        """The foreground regions of a region-based dataset (sigmoid heads), else None;
        as nnU-Net's LabelManager: label entries that list several values, in order."""
        values = [value for name, value in self.dataset_json["labels"].items() if name not in ("background", "ignore")]
        regions = [tuple(value) if isinstance(value, list | tuple) else (int(value),) for value in values]
        return regions if any(len(region) > 1 for region in regions) else None

    @property
    def region_labels(self) -> dict[int, int]:
        """Label value in nnU-Net's exported label map -> region index: region i is written
        as regions_class_order[i]."""
        return {int(value): index for index, value in enumerate(self.dataset_json["regions_class_order"])}
