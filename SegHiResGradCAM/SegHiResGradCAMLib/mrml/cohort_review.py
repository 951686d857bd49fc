"""Reviewing a cohort's results case by case in Slicer, without Qt or torch.

A RESULTS folder made by ``seghiresgradcam cohort`` is opened: its table (results.csv), one
entry per case; loading a case brings its CT, ground truth, prediction and heatmaps into the
scene (replacing the previous case's nodes, never the user's own) and centres the slice
views on M. A verdict and a note per case go to ``RESULTS/review.csv`` at once, written to a
temporary name and renamed, so a crash never loses or half-writes a verdict.

review.csv, what a study reports: one row per reviewed case, columns
``case`` (the case's name), ``verdict`` (one of VERDICTS), ``note`` (free text) and
``reviewed_at`` (ISO 8601, UTC).
"""

from __future__ import annotations

import csv
import datetime
import os
from pathlib import Path

import numpy as np
import slicer
import vtk

from ..errors import ExplainInputError
from ..volumes.outputs import write_atomically
from . import mrml_adapter

VERDICTS = ("explanation plausible", "explanation implausible", "segmentation wrong", "unsure")
REVIEW_COLUMNS = ("case", "verdict", "note", "reviewed_at")
REVIEW_FILE = "review.csv"
REVIEW_ATTRIBUTE = "SegHiResGradCAM.ReviewCase"
HIRES = "seg-hires-grad-cam"
LABEL_STYLES = {1: ("kidney", (0.85, 0.55, 0.25)), 2: ("tumour", (0.85, 0.15, 0.2)), 3: ("cyst", (0.3, 0.6, 0.95))}


def is_results_folder(path: Path) -> bool:
    """Whether ``path`` is a folder that ``seghiresgradcam cohort`` wrote (it holds results.csv)."""
    return (Path(path) / "results.csv").is_file()


class CohortReview:
    def __init__(self, results: Path):
        self.results = Path(results)
        table = self.results / "results.csv"
        if not table.is_file():
            raise ExplainInputError(
                f"{self.results} has no results.csv: open a folder made by 'seghiresgradcam cohort'."
            )
        try:
            with table.open(newline="", encoding="utf-8") as file:
                self.rows = list(csv.DictReader(file))
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise ExplainInputError(
                f"{table} cannot be read ({' '.join(str(error).split())[:200]}): it must be the "
                "UTF-8 table 'seghiresgradcam cohort' wrote; run the cohort again into this "
                "folder to rewrite it."
            ) from None
        if not self.rows or "case" not in self.rows[0]:
            raise ExplainInputError(f"{table} has no case column: open a folder made by 'seghiresgradcam cohort'.")
        self.cases = list(dict.fromkeys(row["case"] for row in self.rows))
        self.verdicts = self._read_review()

    def _read_review(self) -> dict[str, dict]:
        path = self.results / REVIEW_FILE
        if not path.is_file():
            return {}
        try:
            with path.open(newline="", encoding="utf-8") as file:
                reader = csv.DictReader(file)
                rows = list(reader)
                columns = tuple(reader.fieldnames or ())
        except (OSError, UnicodeDecodeError, csv.Error) as error:
            raise self._damaged(f"it cannot be read ({error})") from None
        if columns != REVIEW_COLUMNS:
            raise self._damaged(f"its columns are {', '.join(columns) or 'none'}, not {', '.join(REVIEW_COLUMNS)}")
        unknown = [row["verdict"] for row in rows if row["verdict"] not in VERDICTS]
        if unknown:
            raise self._damaged(f"it holds an unknown verdict {unknown[0]!r}")
        return {row["case"]: row for row in rows}

    def _damaged(self, why: str) -> ExplainInputError:
        return ExplainInputError(
            f"{self.results / REVIEW_FILE} is damaged: {why}. It was left as it is; repair or move it, then open the "
            "results again."
        )

    # The table -------------------------------------------------------------------------------

    def summary(self, case: str) -> dict:
        """What the case table shows: status, Dice, and the default method's heat in M and
        outside the body, with the verdict."""
        rows = [row for row in self.rows if row["case"] == case]
        shown = next((row for row in rows if row.get("method") == HIRES), rows[0])
        return {
            "case": case,
            "status": shown.get("status", ""),
            "dice": shown.get("dice", ""),
            "heat in M": shown.get("heat_in_m", ""),
            "outside body": shown.get("heat_outside_body", ""),
            "verdict": self.verdicts.get(case, {}).get("verdict", ""),
        }

    def failure(self, case: str) -> str:
        """Why a case has nothing to review ("" when it has): its error in the cohort run."""
        rows = [row for row in self.rows if row["case"] == case]
        if not rows:
            return "not a case of these results"
        if rows[0].get("status") != "done":
            return rows[0].get("error") or f"status {rows[0].get('status') or 'unknown'}"
        return ""

    @property
    def progress(self) -> str:
        return f"{sum(case in self.verdicts for case in self.cases)} of {len(self.cases)} reviewed"

    def set_verdict(self, case: str, verdict: str, note: str = "") -> None:
        if case not in self.cases:
            raise ExplainInputError(f"{case} is not a case of these results.")
        if verdict not in VERDICTS:
            raise ExplainInputError(f"Unknown verdict {verdict!r}: choose one of {', '.join(VERDICTS)}.")
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.verdicts[case] = {"case": case, "verdict": verdict, "note": note, "reviewed_at": stamp}
        self._write_review()

    def clear_verdict(self, case: str) -> None:
        """The case is not reviewed any more: its row leaves review.csv."""
        if self.verdicts.pop(case, None) is not None:
            self._write_review()

    def _write_review(self) -> None:
        # Verdicts of cases that are not in this results.csv (a cohort run again on fewer cases)
        # are kept, after the table's cases.
        order = [case for case in self.cases if case in self.verdicts]
        order += sorted(case for case in self.verdicts if case not in self.cases)

        def write(partial: Path) -> None:
            with partial.open("w", newline="", encoding="utf-8") as file:
                writer = csv.DictWriter(file, fieldnames=REVIEW_COLUMNS)
                writer.writeheader()
                writer.writerows(self.verdicts[case] for case in order)
                file.flush()
                os.fsync(file.fileno())

        write_atomically(self.results / REVIEW_FILE, write)

    # The scene --------------------------------------------------------------------------------

    def load_case(self, scene, case: str) -> dict:
        """The case's CT, ground truth, prediction and heatmaps as nodes (replacing the previous
        case's, never the user's own); the slice views centred on M. Returns the nodes by role."""
        failure = self.failure(case)
        if failure:
            raise ExplainInputError(f"Case {case} has no results to review ({failure}).")
        rows = [row for row in self.rows if row["case"] == case]
        folder = self.results / "cases" / case
        self.unload(scene)
        nodes = {}
        try:
            nodes["ct"] = _read_volume(scene, Path(rows[0]["image"]), f"{case} CT")
            segments = {
                "truth": Path(rows[0]["truth"]) if rows[0].get("truth") else None,
                "prediction": folder / "prediction.nrrd",
            }
            for role, path in segments.items():
                if path is not None:
                    nodes[role] = mrml_adapter.segmentation_from_labelmap_file(
                        path, nodes["ct"], LABEL_STYLES, f"{case} {role}"
                    )
            for row in rows:
                heatmap = folder / f"heatmap_{row['method']}.nrrd"
                nodes[row["method"]] = mrml_adapter.import_heatmap(heatmap, nodes["ct"], f"{case} {row['title']}")
            for node in nodes.values():
                node.SetAttribute(REVIEW_ATTRIBUTE, case)
            centre_slices_on(scene, folder / "segment.nrrd")
        except Exception:
            for node in nodes.values():
                mrml_adapter.remove_output(node)
            raise
        shown = nodes.get(HIRES) or next(
            node for role, node in nodes.items() if role not in ("ct", "truth", "prediction")
        )
        mrml_adapter.show_heatmap(shown, nodes["ct"])
        return nodes

    @staticmethod
    def unload(scene) -> None:
        """Removes the nodes a previous case brought, and nothing else."""
        loaded = [scene.GetNthNode(index) for index in range(scene.GetNumberOfNodes())]
        for node in loaded:
            if node is not None and node.GetAttribute(REVIEW_ATTRIBUTE) and scene.IsNodePresent(node):
                mrml_adapter.remove_output(node)


def _read_volume(scene, path: Path, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        raise ExplainInputError(f"Cannot read the case's CT {path}: was the results folder moved from its data?")
    node.CreateDefaultDisplayNodes()
    return node


def centre_slices_on(scene, segment_file: Path) -> None:
    """Every slice view jumps to the centre of M (read from the case's segment.nrrd)."""
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(segment_file))
        if not storage.ReadData(labels):
            return
        voxels = np.argwhere(slicer.util.arrayFromVolume(labels) > 0)
        if not len(voxels):
            return
        matrix = vtk.vtkMatrix4x4()
        labels.GetIJKToRASMatrix(matrix)
        centre = slicer.util.arrayFromVTKMatrix(matrix) @ np.append(voxels.mean(axis=0)[::-1], 1.0)
        slices = scene.GetNodesByClass("vtkMRMLSliceNode")
        for index in range(slices.GetNumberOfItems()):
            slices.GetItemAsObject(index).JumpSliceByCentering(*centre[:3])
    finally:
        scene.RemoveNode(labels)
