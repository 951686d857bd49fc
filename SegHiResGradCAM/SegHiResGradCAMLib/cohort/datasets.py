"""Which cases a cohort holds: the KiTS layout, the nnU-Net raw layout, or a CSV list.

- KiTS: ``case_XXXXX/imaging.nii.gz`` with an optional ``segmentation.nii.gz``;
- nnU-Net raw: ``imagesTr|imagesTs/<case>_0000<file_ending>`` with optional
  ``labelsTr|labelsTs/<case><file_ending>``, the file ending as ``dataset.json`` declares
  (``.nii.gz`` when it has none);
- CSV: columns ``case,image[,truth][,mask][,series][,segment]``, paths relative to the CSV's
  folder; an image may be a DICOM series (a folder, or a file of it; ``series`` picks one of
  several); ``segment`` names the segment of a .seg.nrrd mask.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExplainInputError

LAYOUTS = (
    "the KiTS layout (case_XXXXX/imaging.nii.gz, optional segmentation.nii.gz), the nnU-Net raw layout "
    "(imagesTr or imagesTs/<case>_0000.nii.gz, optional labelsTr or labelsTs/<case>.nii.gz; another file ending "
    "as dataset.json's file_ending says), or a CSV file with "
    "the columns case,image[,truth][,mask]"
)
CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # also a safe folder name


@dataclass(frozen=True)
class CohortCase:
    name: str
    image: Path
    truth: Path | None = None  # ground-truth label map (values: the model's class indices)
    mask: Path | None = None  # a segment to explain instead of the prediction or the truth
    series: str | None = None  # the DICOM series, when the image is a folder of several
    segment: str | None = None  # the segment of a .seg.nrrd mask, by name


def find_cases(dataset: Path) -> tuple[str, list[CohortCase]]:
    """(layout name, the cases in name order); refuses anything else, listing the layouts."""
    dataset = Path(dataset)
    if dataset.is_file() and dataset.suffix.lower() == ".csv":
        return "csv", _check(_from_csv(dataset), dataset)
    if dataset.is_dir():
        kits = sorted(folder for folder in dataset.glob("case_*") if (folder / "imaging.nii.gz").is_file())
        if kits:
            return "kits", _check([_kits_case(folder) for folder in kits], dataset)
        images = [folder for folder in (dataset / "imagesTr", dataset / "imagesTs") if folder.is_dir()]
        if images:
            return "nnunet", _check([case for folder in images for case in _nnunet_cases(folder)], dataset)
    raise ExplainInputError(f"{dataset} is not a cohort this program knows: give {LAYOUTS}.")


def _kits_case(folder: Path) -> CohortCase:
    truth = folder / "segmentation.nii.gz"
    return CohortCase(folder.name, folder / "imaging.nii.gz", truth if truth.is_file() else None)


def file_ending(dataset: Path) -> str:
    """The image file ending an nnU-Net raw dataset declares in its dataset.json."""
    description = dataset / "dataset.json"
    if not description.is_file():
        return ".nii.gz"
    try:
        ending = json.loads(description.read_text(encoding="utf-8")).get("file_ending", ".nii.gz")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ExplainInputError(f"Cannot read {description} ({error}): it must be nnU-Net's dataset.json.") from None
    if not isinstance(ending, str) or not ending.startswith(".") or "/" in ending:
        raise ExplainInputError(f"{description}: file_ending must be a file ending such as \".nii.gz\"; got "
                                f"{ending!r}.")  # fmt: skip
    return ending


def _nnunet_cases(images: Path) -> list[CohortCase]:
    labels = images.parent / images.name.replace("images", "labels")
    ending = file_ending(images.parent)
    cases = []
    for image in sorted(images.glob(f"*_0000{ending}")):
        name = image.name[: -len(f"_0000{ending}")]
        if any(images.glob(f"{name}_0001.*")):
            raise ExplainInputError(f"Case {name} has several input channels; only single-CT cases are supported.")
        truth = labels / f"{name}{ending}"
        cases.append(CohortCase(name, image, truth if truth.is_file() else None))
    return cases


def _from_csv(path: Path) -> list[CohortCase]:
    try:
        with path.open(newline="") as file:
            rows = list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ExplainInputError(f"Cannot read {path.name} as a CSV file ({error}).") from None
    if not rows or not {"case", "image"} <= set(rows[0]):
        raise ExplainInputError(f"{path.name} needs the columns case,image[,truth][,mask].")

    def optional(row, column):
        return path.parent / row[column] if row.get(column) else None

    return [CohortCase(row["case"], path.parent / row["image"], optional(row, "truth"), optional(row, "mask"),
                       row.get("series") or None, row.get("segment") or None) for row in rows]  # fmt: skip


def _check(cases: list[CohortCase], dataset: Path) -> list[CohortCase]:
    if not cases:
        raise ExplainInputError(f"{dataset} holds no case: give {LAYOUTS}.")
    names = [case.name for case in cases]
    bad = [name for name in names if not CASE_NAME.match(name)]
    if bad:
        raise ExplainInputError(f"Case names must be letters, digits, '.', '_' or '-': {', '.join(bad[:5])}.")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ExplainInputError(f"{dataset} names the same case twice: {', '.join(duplicates[:5])}.")
    return sorted(cases, key=lambda case: case.name)
