"""Explanations during training: a few fixed validation cases explained every K epochs.

``ValidationExplanations`` is a plain callable for any loop (``explanations(network, epoch)``);
``ExplanationHandler`` attaches it to an Ignite engine (MONAI's trainers and evaluators are
Ignite engines). Each call writes, under the output folder, ``epoch_NNNN/<case>.nrrd`` (the map
on the case's grid), ``epoch_NNNN/montage.png`` (one panel per case, the slice where M is
largest) and one line per case in ``explanations.jsonl`` (heat in M, the rank similarity
inside M with a randomised network's map, seconds), and the same numbers and montage to
TensorBoard when a writer is given or TensorBoard is installed.

The cost of a call is bounded by what it is given: per case one explanation (one forward and
backward pass over the windows that reach M) and, with ``randomisation=True``, one more of a
randomised copy. The network is left as it was (device, training flags, gradients, random
number generator), so training goes on exactly as without the explanations.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..cam.explainer import Explainer, SegmentTarget
from ..cam.methods import get_method
from ..cam.metrics import mass_share, randomised_copy, rank_similarity
from ..cam.sliding_window import Tiling
from ..demo.figures import heat_panels, largest_cross_section
from ..errors import ExplainInputError

MONTAGE_COLUMNS = 4


@dataclass(frozen=True)
class ValidationCase:
    """One fixed case explained at every call.

    Attributes:
        name: used in file names and TensorBoard tags (letters, digits, ``-`` and ``_``).
        image: the network's input, (channels, *spatial), as the validation loader gives it.
        mask: M, boolean over the spatial shape (e.g. the case's ground truth of the class);
            None: the network's prediction of the class at each call.
        spacing: the voxel spacing in the image's array order, for the NRRD files (default 1).
    """

    name: str
    image: Any
    mask: Any = None
    spacing: tuple[float, ...] | None = None


class ValidationExplanations:
    """Explains ``cases`` every ``every`` epochs and writes the maps, a montage and metrics.

    Args:
        cases: the fixed validation cases.
        class_index: the output channel c.
        output_folder: where the epochs' folders, ``explanations.jsonl`` and ``tensorboard/`` go.
        every: explain when ``epoch % every == 0``.
        layer: the layer explained; None: the recommended one.
        method: a registered method name.
        tiling: the network's sliding window (``Tiling.monai``) or None for one pass.
        randomisation: also measure the similarity inside M with a randomised copy's map.
        tensorboard: a ``SummaryWriter``, True (one in ``output_folder/tensorboard``), False,
            or None (True when TensorBoard is installed).

    Raises:
        ExplainInputError: no cases, a repeated or unusable case name, or ``every`` below 1.

    Example:
        >>> import tempfile, torch
        >>> from SegHiResGradCAMLib.integrations.validation import ValidationCase, ValidationExplanations
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> tumour = torch.zeros(16, 16, dtype=torch.bool)
        >>> tumour[4:8, 4:8] = True
        >>> case = ValidationCase("case1", torch.randn(1, 16, 16), tumour)
        >>> explanations = ValidationExplanations([case], 2, tempfile.mkdtemp(), tensorboard=False)
        >>> [row["case"] for row in explanations(net, epoch=1)]
        ['case1']
    """

    def __init__(
        self,
        cases: list[ValidationCase],
        class_index: int,
        output_folder,
        every: int = 1,
        layer: str | None = None,
        method: str = "seg-hires-grad-cam",
        tiling: Tiling | None = None,
        randomisation: bool = True,
        tensorboard=None,
    ):
        names = [case.name for case in cases]
        if not cases or len(set(names)) != len(names):
            raise ExplainInputError("Give at least one validation case, each with its own name.")
        unusable = [name for name in names if not name or not all(c.isalnum() or c in "-_" for c in name)]
        if unusable:
            raise ExplainInputError(f"Case names become file names: use letters, digits, - and _ (not {unusable}).")
        if int(every) < 1:
            raise ExplainInputError(f"every must be a whole number of epochs, 1 or more; got {every}.")
        get_method(method)  # an unknown method is refused now, not at the first call
        self.cases, self.class_index, self.every = list(cases), int(class_index), int(every)
        self.layer, self.method, self.tiling, self.randomisation = layer, method, tiling, randomisation
        self.folder = Path(output_folder)
        self._writer, self._tensorboard = None, tensorboard

    def __call__(self, network: torch.nn.Module, epoch: int) -> list[dict]:
        """Explains the cases when ``epoch`` is due; returns the rows written (none otherwise)."""
        if epoch % self.every:
            return []
        folder = self.folder / f"epoch_{epoch:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        rows, panels = [], []
        for case in self.cases:
            started = time.perf_counter()
            heatmap, mask = self._explain(network, case)
            row = {"epoch": epoch, "case": case.name, "class_index": self.class_index, "method": self.method}
            row["heat_in_m"] = mass_share(heatmap, mask) if mask.any() else None
            if self.randomisation and mask.any():
                randomised, _ = self._explain(randomised_copy(network), case, mask)
                row["randomisation_similarity_in_m"] = rank_similarity(heatmap[mask], randomised[mask])
            row["seconds"] = round(time.perf_counter() - started, 3)
            _write_map(folder / f"{case.name}.nrrd", heatmap, case.spacing)
            panels.append(_panel(case, heatmap, mask))
            rows.append(row)
        title = f"epoch {epoch}: class {self.class_index}, {self.method}"
        heat_panels(folder / "montage.png", panels, title, columns=min(len(panels), MONTAGE_COLUMNS))
        with open(self.folder / "explanations.jsonl", "a", encoding="utf-8") as log:
            log.writelines(json.dumps(row) + "\n" for row in rows)
        self._to_tensorboard(rows, folder / "montage.png", epoch)
        return rows

    def close(self) -> None:
        """Closes the TensorBoard writer this object opened (a later call opens a new one)."""
        if self._writer is not None and self._tensorboard in (None, True):
            self._writer.close()
        self._writer = None

    def _explain(self, network, case: ValidationCase, mask=None) -> tuple[np.ndarray, np.ndarray]:
        image = torch.as_tensor(np.asarray(case.image), dtype=torch.float32)
        if mask is None:
            mask = case.mask if case.mask is not None else self._predicted(network, image)
        mask = np.asarray(mask, dtype=bool)
        if not mask.any():  # the class is not predicted (yet): nothing to explain
            return np.zeros(image.shape[1:], dtype=np.float32), mask
        with Explainer(network, self.layer, self.method, self.tiling, device=None) as explainer:
            return explainer(image, SegmentTarget(self.class_index, mask)).heatmap, mask

    def _predicted(self, network, image: torch.Tensor) -> np.ndarray:
        from ..cam.model_inspection import evaluation_mode, model_device
        from ..cam.passes import run_network
        from ..cam.sliding_window import sliding_window_logits

        with evaluation_mode(network), torch.no_grad():
            if self.tiling is None:
                logits = run_network(network, image[None].to(model_device(network)))[0]
            else:
                logits = sliding_window_logits(network, image, self.tiling, self.tiling.overlap)
        return (logits.argmax(0) == self.class_index).cpu().numpy()

    def _to_tensorboard(self, rows: list[dict], montage: Path, epoch: int) -> None:
        writer = self._tensorboard_writer()
        if writer is None:
            return
        for row in rows:
            for key in ("heat_in_m", "randomisation_similarity_in_m", "seconds"):
                if row.get(key) is not None:
                    writer.add_scalar(f"explanations/{row['case']}/{key}", row[key], epoch)
        import matplotlib.image

        writer.add_image("explanations/montage", matplotlib.image.imread(montage)[..., :3], epoch, dataformats="HWC")
        writer.flush()

    def _tensorboard_writer(self):
        if self._writer is None and self._tensorboard is not False:
            if self._tensorboard not in (None, True):
                self._writer = self._tensorboard
            else:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    if self._tensorboard is True:
                        raise ExplainInputError(
                            'TensorBoard is not installed: pip install "seghiresgradcam[training]", '
                            "or pass tensorboard=False."
                        ) from None
                    self._tensorboard = False
                    return None
                self._writer = SummaryWriter(os.fspath(self.folder / "tensorboard"))
        return self._writer


def _write_map(path: Path, heatmap: np.ndarray, spacing) -> None:
    image = sitk.GetImageFromArray(np.ascontiguousarray(heatmap, dtype=np.float32))
    if spacing is not None:
        image.SetSpacing([float(value) for value in reversed(spacing)])  # SimpleITK takes (x, y, z)
    sitk.WriteImage(image, os.fspath(path), True)


def _panel(case: ValidationCase, heatmap: np.ndarray, mask: np.ndarray):
    """(name, image slice, M's slice, normalised heat slice): for a volume, the first axis's
    slice where M is largest."""
    image = np.asarray(case.image, dtype=np.float32)[0]
    peak = heatmap.max()
    normalised = heatmap / peak if peak > 0 else heatmap
    if image.ndim == 3:
        index = largest_cross_section(mask, 0) if mask.any() else image.shape[0] // 2
        image, mask, normalised = image[index], mask[index], normalised[index]
    return case.name, image, mask, normalised


class ExplanationHandler:
    """An Ignite handler: runs ``ValidationExplanations`` when an epoch of the engine ends.

    Args:
        explanations: what to explain and where to write it.
        network: the network; None: the engine's ``network`` (MONAI's trainers and evaluators).
        epoch_of: maps the engine to the epoch number (default its ``state.epoch``); for an
            evaluator run inside a trainer, e.g. ``lambda engine: trainer.state.epoch``.

    Example:
        >>> # trainer = monai.engines.SupervisedTrainer(...)
        >>> # ExplanationHandler(ValidationExplanations(cases, 2, "runs/explanations", every=5)).attach(trainer)
    """

    def __init__(self, explanations: ValidationExplanations, network=None, epoch_of=None):
        self.explanations, self.network = explanations, network
        self.epoch_of = epoch_of or (lambda engine: engine.state.epoch)
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, lambda _: self.explanations.close())

    def __call__(self, engine) -> None:
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is None:
            raise ExplainInputError("The engine has no network attribute: give ExplanationHandler(network=...).")
        self.rows += self.explanations(network, int(self.epoch_of(engine)))
