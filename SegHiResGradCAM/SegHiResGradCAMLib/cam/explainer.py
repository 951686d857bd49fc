"""The Python API in the field's shape: an explainer made once and asked many times.

    with Explainer(model, layer="upcat_1", tiling=Tiling.monai((96, 96, 96))) as explainer:
        tumour_map = explainer(ct, SegmentTarget(2, tumour))
        kidney_map = explainer(ct, SegmentTarget(1, kidney))

Entering places the model on its device once (``explain()`` moves it there and back on every
call); leaving puts it back on the device it came from. Each question runs the same engine
as ``explain()``, so the maps are identical, and the engine's hygiene holds for every call:
eval mode during the call, every training flag, ``requires_grad`` flag and parameter as it
was afterwards, no hook or gradient left behind.

What T is, is the target: ``SegmentTarget`` (T = sum over M of the class's logits or
probabilities) or ``CallableTarget`` (any scalar a researcher computes from the logits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ExplainInputError
from .engine import CamResult, explain_target
from .methods import get_method
from .model_inspection import model_device, resolve_device
from .passes import FunctionTarget, Target
from .sliding_window import Tiling


@dataclass(frozen=True)
class SegmentTarget:
    """T as the paper defines it: the sum over M of one class's output.

    Attributes:
        class_index: the output channel c.
        mask: M, a boolean array over the output's spatial shape; None: the whole image.
        output: "logits", or "probability" (softmax over the classes for ``head="softmax"``,
            the sigmoid of the channel for ``head="sigmoid"`` region or multi-label networks).
        head: "softmax" or "sigmoid".

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import SegmentTarget
        >>> SegmentTarget(2, torch.ones(8, 8, dtype=torch.bool), output="probability").output
        'probability'
    """

    class_index: int
    mask: Any = None
    output: str = "logits"
    head: str = "softmax"


@dataclass(frozen=True)
class CallableTarget:
    """T = ``function(logits)``, any differentiable scalar of the network's logits.

    The logits are shaped (1, classes, *spatial), blended under a tiling. Explained by the
    gradient methods (Score CAM's weights are defined for a class over M only).

    Attributes:
        function: maps the logits to a one-element tensor.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import CallableTarget, Explainer
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> tumour = torch.zeros(16, 16, dtype=torch.bool)
        >>> tumour[4:8, 4:8] = True
        >>> with Explainer(net, layer="1") as explainer:
        ...     result = explainer(torch.randn(1, 16, 16), CallableTarget(lambda y: y.softmax(1)[0, 2][tumour].mean()))
        >>> result.target_class is None
        True
    """

    function: Callable[[torch.Tensor], torch.Tensor]


class Explainer:
    """Explains segmentation targets of one network at one layer with one method.

    Entering the ``with`` block places the model on the device once; leaving puts it back, with
    its training flags, and removes every hook. Each answer equals ``explain()``'s.

    Args:
        model: the segmentation network (any ``torch.nn.Module`` returning logits shaped
            (1, classes, *spatial) for an image (1, channels, *spatial)).
        layer: a dotted module name or a layer rule; None: the recommended layer.
        method: a registered method name (``METHODS``).
        tiling: a ``Tiling`` to run the network window by window (``Tiling.monai``, or a
            model format's own, such as nnU-Net's); None runs one pass over the image.
        device: "auto" (CUDA, then MPS, then the CPU), a device, or None (where the model is).
        batch_size: windows (or Score CAM's masked inputs) run together.
        mixed_precision: autocast on CUDA.
        score_cam_channels: Seg-Score CAM only, the number of channels explained.

    Raises:
        ExplainInputError: an unknown method, or a tiling that is not a ``Tiling``.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import Explainer, SegmentTarget
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> tumour = torch.zeros(16, 16, dtype=torch.bool)
        >>> tumour[4:8, 4:8] = True
        >>> ct = torch.randn(1, 16, 16)
        >>> with Explainer(net, method="seg-hires-grad-cam") as explainer:
        ...     tumour_map = explainer(ct, SegmentTarget(2, tumour))
        ...     everywhere = explainer(ct, SegmentTarget(1))
        >>> tumour_map.heatmap.shape
        (16, 16)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        method: str = "seg-hires-grad-cam",
        tiling: Tiling | None = None,
        device="auto",
        batch_size: int = 1,
        mixed_precision: bool = False,
        score_cam_channels: int | None = None,
    ):
        if tiling is not None and not isinstance(tiling, Tiling):
            raise ExplainInputError(
                f"tiling must be a Tiling (e.g. Tiling.monai((96, 96, 96))); got {type(tiling).__name__}."
            )
        get_method(method)  # an unknown method is refused now, not at the first question
        self.model, self.layer, self.method, self.tiling = model, layer, method, tiling
        self.device, self.batch_size, self.mixed_precision = device, batch_size, mixed_precision
        self.score_cam_channels = score_cam_channels
        self._placed_from: torch.device | None = None

    def __enter__(self) -> Explainer:
        self._placed_from = model_device(self.model)
        chosen = resolve_device(self.device)
        if chosen is not None and chosen != self._placed_from:
            self.model.to(chosen)
        return self

    def __exit__(self, *exception) -> None:
        if self._placed_from is not None and model_device(self.model) != self._placed_from:
            self.model.to(self._placed_from)
        self._placed_from = None

    def __call__(self, image, target: SegmentTarget | CallableTarget, progress=None, cancel=None) -> CamResult:
        """The map of ``target`` for ``image`` ((channels, *spatial) or with a batch of 1).

        Args:
            image: array or tensor; 2D or 3D as the network takes it.
            target: what T is (``SegmentTarget`` or ``CallableTarget``).
            progress: ``progress(fraction, message)`` as windows finish.
            cancel: anything with ``is_set()``; stops the run with ExplainCancelled.

        Returns:
            CamResult: the signed map (``raw``), the heatmap on the image grid, T, the layer.

        Raises:
            ExplainInputError: a target, image or mask the network cannot be explained for.
        """
        engine_target, mask = self._engine_target(target)
        device = model_device(self.model) if self._placed_from is not None else self.device
        return explain_target(
            self.model,
            image,
            engine_target,
            mask=mask,
            layer=self.layer,
            method=self.method,
            tiling=self.tiling,
            batch_size=self.batch_size,
            device=device,
            mixed_precision=self.mixed_precision,
            progress=progress,
            cancel=cancel,
            score_cam_channels=self.score_cam_channels,
        )

    def _engine_target(self, target):
        if isinstance(target, SegmentTarget):
            return Target(int(target.class_index), target.output, target.head), target.mask
        if isinstance(target, CallableTarget):
            if get_method(self.method).network_map is not None:
                raise ExplainInputError(
                    f"Method {self.method!r} defines its weights for a class over M: give a "
                    "SegmentTarget, or a gradient method for a CallableTarget."
                )
            return FunctionTarget(target.function), None
        raise ExplainInputError(
            f"target must be a SegmentTarget(class_index, mask) or a CallableTarget(function); "
            f"got {type(target).__name__}."
        )
