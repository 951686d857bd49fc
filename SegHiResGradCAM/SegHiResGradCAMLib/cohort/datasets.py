"""Which cases a cohort holds: the KiTS layout, the nnU-Net raw layout, or a CSV list.

- KiTS: ``case_XXXXX/imaging.nii.gz`` with an optional ``segmentation.nii.gz``;
- nnU-Net raw: ``imagesTr|imagesTs/<case>_0000<file_ending>`` with optional
  ``labelsTr|labelsTs/<case><file_ending>``, the file ending as ``dataset.json`` declares
  (``.nii.gz`` when it has none);
- CSV: columns ``case,image[,truth][,mask][,series][,segment]``, separated by commas (or
  semicolons, as Excel writes them in some locales), UTF-8 with or without a byte-order mark;
  relative paths are relative to the CSV's folder, and a path may point anywhere (an absolute
  path, ``../``); an image may be a DICOM series (a folder, or a file of it; ``series`` picks
  one of several); ``segment`` names the segment of a .seg.nrrd mask.

Every case folder of the KiTS layout is a case: one whose CT is missing, a folder, or a broken
link carries its ``problem`` and becomes an error row instead of vanishing from the table.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExplainInputError
from ..volumes.paths import unreadable_reason

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
    problem: str = ""  # why the case cannot be run (its row says so), "" when it can


def find_cases(dataset: Path) -> tuple[str, list[CohortCase]]:
    """(layout name, the cases in name order); refuses anything else, listing the layouts."""
    dataset = Path(dataset)
    if dataset.is_file() and dataset.suffix.lower() == ".csv":
        return "csv", _check(_from_csv(dataset), dataset)
    if dataset.is_dir():
        kits = sorted(folder for folder in dataset.glob("case_*") if folder.is_dir())
        if kits:
            return "kits", _check([_kits_case(folder) for folder in kits], dataset)
        images = [folder for folder in (dataset / "imagesTr", dataset / "imagesTs") if folder.is_dir()]
        if images:
            return "nnunet", _check([case for folder in images for case in _nnunet_cases(folder)], dataset)
    raise ExplainInputError(f"{dataset} is not a cohort this program knows: give {LAYOUTS}.")


def _kits_case(folder: Path) -> CohortCase:
    image, truth = folder / "imaging.nii.gz", folder / "segmentation.nii.gz"
    problem = _not_a_file(image, "CT") or _not_a_file(truth, "ground truth", optional=True)
    if not os.path.lexists(image):
        held = sorted(path.name for path in folder.iterdir())[:6]
        problem = (
            f"{folder.name} has no imaging.nii.gz (it holds {', '.join(held) or 'nothing'}): the KiTS layout "
            "names a case's CT imaging.nii.gz"
        )
    return CohortCase(folder.name, image, truth if truth.is_file() else None, problem=problem)


def _not_a_file(path: Path, role: str, optional: bool = False) -> str:
    """Why ``path`` cannot be read as the case's file ("" when it can, or when an optional
    file is simply absent)."""
    if path.is_file() or (optional and not os.path.lexists(path)):
        return ""
    where = f"{path.parent.name}/{path.name}"
    if path.is_dir():
        return f"{where} is a folder, not the case's {role} file"
    reason = unreadable_reason(path)
    advice = f"point it at the case's {role} file" if reason.startswith("is a link") else f"give the {role} as a file"
    return f"{where} {reason}: {advice}"


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
        raise ExplainInputError(f'{description}: file_ending must be a file ending such as ".nii.gz"; got {ending!r}.')
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


CSV_COLUMNS = "case,image[,truth][,mask][,series][,segment]"


def _from_csv(path: Path) -> list[CohortCase]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte-order mark
    except UnicodeDecodeError:
        raise ExplainInputError(f'{path.name} is not UTF-8 text: save it as "CSV UTF-8".') from None
    except OSError as error:
        raise ExplainInputError(f"Cannot read {path.name} ({error.strerror or error}).") from None
    header = text.partition("\n")[0]
    delimiter = ";" if ";" in header and "," not in header else ","
    try:
        rows = list(csv.DictReader(text.splitlines(), delimiter=delimiter))
    except csv.Error as error:
        raise ExplainInputError(f"Cannot read {path.name} as a CSV file ({error}).") from None
    columns = [column.strip() for column in header.split(delimiter)]
    if not {"case", "image"} <= set(columns):
        raise ExplainInputError(
            f"{path.name} needs the columns {CSV_COLUMNS}, separated by commas, in its first "
            f"line; its first line is {header[:80]!r}."
        )
    rows = [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in rows]
    for number, row in enumerate(rows, start=2):
        for column in ("case", "image"):
            if not row.get(column):
                raise ExplainInputError(
                    f"{path.name}, line {number}: the {column} column is empty; every row needs a "
                    "case name and an image."
                )

    def optional(row, column):
        return path.parent / row[column] if row.get(column) else None

    return [
        CohortCase(
            row["case"],
            path.parent / row["image"],
            optional(row, "truth"),
            optional(row, "mask"),
            row.get("series") or None,
            row.get("segment") or None,
        )
        for row in rows
    ]


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
