"""Explanations inside MONAI workflows: an inferer that predicts exactly as the one it wraps
(a bundle's ``SlidingWindowInferer`` or ``SimpleInferer``) and explains each prediction as
it goes, under the same windows and blending.

MONAI's evaluators store what the inferer returns as the prediction and nothing else, so the
maps travel beside it: ``ExplainingInferer`` keeps the last batch's maps (as MetaTensors on
the network's input grid, with the input's metadata and transform history) and the
postprocessing transform ``HeatmapFromInferer`` puts each into its case's dictionary, where
MONAI's own ``Invertd`` maps it back onto the CT and ``SaveImaged`` writes it. M is the
prediction of the class, or a label the evaluator passes to the inferer (MONAI's
``PrepareBatchExtraInput(extra_keys={"explain_mask": "label"})``).
"""

from __future__ import annotations

import logging

import torch
from monai.data import MetaTensor, decollate_batch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer

from ..cam.engine import CamResult
from ..cam.explainer import Explainer, SegmentTarget
from ..cam.methods import get_method
from ..cam.sliding_window import Tiling
from ..errors import ExplainInputError

MASK_SOURCES = ("prediction", "label")
LOG = logging.getLogger(__name__)


def tiling_of(inferer) -> Tiling | None:
    """The explanation's tiling for a MONAI inferer: its windows, or one pass over the image."""
    if isinstance(inferer, SlidingWindowInferer):
        return Tiling.of_monai_inferer(inferer)
    if isinstance(inferer, SimpleInferer):
        return None
    raise ExplainInputError(
        f"ExplainingInferer wraps a SlidingWindowInferer or a SimpleInferer, whose windows the explanation "
        f"follows; got {type(inferer).__name__}."
    )


class ExplainingInferer(Inferer):
    """A MONAI inferer that returns the wrapped inferer's prediction and explains it.

    Stands in a bundle's ``inferer`` entry (give the ``SlidingWindowInferer``'s own arguments) or
    wraps one (``inferer="@inferer"``). After each call, ``heatmaps`` holds one map per case of
    the batch, on the network's input grid, for ``HeatmapFromInferer``; ``results`` the
    ``CamResult``s (with T). A case with no voxel in M gets a zero map, no result and a
    warning in the log, so that one such case does not stop a whole evaluation.

    Args:
        class_index: the output channel c explained.
        inferer: the inferer to wrap; None builds a ``SlidingWindowInferer`` from
            ``sliding_window`` (or a ``SimpleInferer`` when none is given).
        layer: the layer explained (a dotted module name or a layer rule); None: the recommended.
        method: a registered method name.
        mask_from: "prediction" (M = the voxels predicted as the class: argmax for a softmax
            head, logit above 0 for a sigmoid head) or "label" (M = the voxels of the label
            passed as the keyword ``explain_mask`` that equal ``class_index``).
        head: "softmax" or "sigmoid".
        output: "logits" or "probability" (what T sums).
        **sliding_window: ``SlidingWindowInferer``'s arguments (roi_size, sw_batch_size, overlap, mode, ...).

    Raises:
        ExplainInputError: an inferer whose windows cannot be followed, an unknown mask source,
            or extra network inputs.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib.integrations.monai_inferer import ExplainingInferer
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> inferer = ExplainingInferer(2, roi_size=(16, 16), overlap=0.5)
        >>> prediction = inferer(torch.randn(2, 1, 24, 20), net)
        >>> [tuple(heatmap.shape) for heatmap in inferer.heatmaps]
        [(1, 24, 20), (1, 24, 20)]
    """

    MASK_KEYWORD = "explain_mask"

    def __init__(
        self,
        class_index: int,
        inferer: Inferer | None = None,
        layer: str | None = None,
        method: str = "seg-hires-grad-cam",
        mask_from: str = "prediction",
        head: str = "softmax",
        output: str = "logits",
        **sliding_window,
    ):
        super().__init__()
        if inferer is not None and sliding_window:
            raise ExplainInputError("Give ExplainingInferer either inferer= or the sliding-window arguments, not both.")
        if mask_from not in MASK_SOURCES:
            raise ExplainInputError(f"mask_from must be one of {', '.join(MASK_SOURCES)}; got {mask_from!r}.")
        if inferer is None:
            inferer = SlidingWindowInferer(**sliding_window) if sliding_window else SimpleInferer()
        self.inferer, self.tiling = inferer, tiling_of(inferer)
        self.class_index, self.layer, self.method = int(class_index), layer, method
        self.mask_from, self.head, self.output = mask_from, head, output
        self.batch_size = int(getattr(inferer, "sw_batch_size", 1))
        get_method(method)  # an unknown method is refused now, not at the first call
        self.heatmaps: list[MetaTensor] = []
        self.results: list[CamResult | None] = []

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        label = kwargs.pop(self.MASK_KEYWORD, None)
        if args or kwargs:
            raise ExplainInputError(
                "ExplainingInferer explains networks that take the image alone; this evaluator passes "
                f"{len(args)} more inputs and {sorted(kwargs)}."
            )
        if self.mask_from == "label" and label is None:
            raise ExplainInputError(
                "mask_from='label' needs the label passed to the inferer: give the evaluator "
                'prepare_batch=PrepareBatchExtraInput(extra_keys={"explain_mask": "label"}).'
            )
        with torch.no_grad():
            prediction = self.inferer(inputs, network)
        masks = self._masks(prediction, label)
        plain = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        with torch.enable_grad(), Explainer(network, self.layer, self.method, self.tiling, None, self.batch_size) as e:
            self.results = [
                e(image, SegmentTarget(self.class_index, mask, self.output, self.head)) if mask.any() else None
                for image, mask in zip(plain, masks, strict=True)
            ]
        case_maps = []
        for case, (image, result) in enumerate(zip(plain, self.results, strict=True)):
            if result is None:
                LOG.warning(
                    "Case %d of the batch has no voxel of class %d in M: its map is zero.", case, self.class_index
                )
                case_maps.append(torch.zeros(image.shape[1:]))
            else:
                case_maps.append(torch.as_tensor(result.heatmap))
        maps = torch.stack(case_maps)[:, None].to(device=plain.device, dtype=torch.float32)
        if isinstance(inputs, MetaTensor):
            maps = MetaTensor(maps, meta=inputs.meta, applied_operations=inputs.applied_operations)
            maps.is_batch = True
            self.heatmaps = list(decollate_batch(maps))
        else:
            self.heatmaps = list(maps)
        return prediction

    def _masks(self, prediction, label) -> list[torch.Tensor]:
        if self.mask_from == "label":
            chosen = torch.as_tensor(label)
            chosen = chosen[:, 0] if chosen.dim() == prediction.dim() else chosen
            return list(chosen.round().long() == self.class_index)
        logits = torch.as_tensor(prediction).float()
        if self.head == "sigmoid":
            return list(logits[:, self.class_index] > 0)
        return list(logits.argmax(1) == self.class_index)


class HeatmapFromInferer:
    """A postprocessing transform: puts the ``ExplainingInferer``'s map of this case under
    ``key`` (cases come in batch order after MONAI's decollation).

    Args:
        inferer: the ``ExplainingInferer`` that the evaluator runs.
        key: the dictionary key of the map.
    """

    def __init__(self, inferer: ExplainingInferer, key: str = "heatmap"):
        if not isinstance(inferer, ExplainingInferer):
            raise ExplainInputError(f"HeatmapFromInferer takes the ExplainingInferer; got {type(inferer).__name__}.")
        self.inferer, self.key = inferer, key

    def __call__(self, data: dict) -> dict:
        if not self.inferer.heatmaps:
            raise ExplainInputError(
                "No map is waiting: HeatmapFromInferer belongs in the postprocessing of the evaluator whose "
                "inferer is this ExplainingInferer, once per case."
            )
        return {**data, self.key: self.inferer.heatmaps.pop(0)}
