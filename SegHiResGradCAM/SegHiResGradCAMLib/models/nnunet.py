"""nnU-Net v2 results folders as models, explained in nnU-Net's own computation.

A results folder ``DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/`` holds
dataset.json, plans.json and ``fold_N/checkpoint_final.pth``. What is taken from it:

- the network: built from the plans by nnU-Net's ``get_network_from_plans`` (no deep
  supervision), after checking that the plans name a class from
  dynamic_network_architectures and only torch.nn building blocks, so a plans file cannot
  make us import anything else;
- the weights: each fold's ``network_weights``, loaded with ``weights_only=True``; the
  only other types allowed are the numpy scalars nnU-Net writes into its training log;
- the preprocessing: the configuration's own preprocessor class (``run_case_npy``:
  transposition, crop to the nonzero region, normalisation, resampling) on the CT as
  nnU-Net's SimpleITK reader gives it;
- the sliding window (``NnUNetTiling``): nnU-Net's padding, tile steps
  (``compute_steps_for_sliding_window``, step 0.5) and Gaussian (``compute_gaussian``);
  no mirroring, since test-time mirroring would make the explained computation another;
- the way back: logits and heatmaps through the configuration's probability resampling,
  un-cropping and inverse transposition; the label map exactly as nnU-Net exports it;
- classes: the labels (softmax) or, for region-based datasets such as KiTS23, the
  regions (sigmoid heads), named as in dataset.json.

Several folds form an ensemble whose logits are the mean of the folds' (``FoldEnsemble``);
T is then the mean of the folds' T, and the explanation is the mean of the per-fold maps
(exact for Seg-HiRes-Grad CAM, whose maps add up to T).

nnU-Net is an optional extra: see ``INSTALL_ADVICE``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ..cam.ensemble import FoldEnsemble
from ..cam.sliding_window import Tiling, WindowGrid, symmetric_padding
from ..errors import ExplainInputError, first_line
from ..volumes.preparation import nonempty_segment, segment_on_grid
from .card import check_window_fits, load_untrusted
from .nnunet_plans import INSTALL_ADVICE, TILE_STEP, NnUNetModel


def managers(model: NnUNetModel):
    """nnU-Net's PlansManager and the model's ConfigurationManager. nnU-Net may print
    notices on import, which must not reach our JSON progress stream."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as error:
        raise ExplainInputError(f"{INSTALL_ADVICE} ({error}).") from None
    plans_manager = PlansManager(model.plans)
    return plans_manager, plans_manager.get_configuration(model.configuration)


def build_network(model: NnUNetModel) -> nn.Module:
    """One network per fold from the plans, with its checkpoint's weights; several folds
    as a FoldEnsemble."""
    plans_manager, configuration = managers(model)
    _check_architecture(configuration, model.folder)
    with contextlib.redirect_stdout(io.StringIO()):
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    channels = determine_num_input_channels(plans_manager, configuration, model.dataset_json)
    heads = plans_manager.get_label_manager(model.dataset_json).num_segmentation_heads
    with torch.device("meta"):  # no memory: the patch check falls back on it (check_window_fits)
        probe = get_network_from_plans(
            configuration.network_arch_class_name,
            configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import,
            channels,
            heads,
            allow_init=False,
            deep_supervision=False,
        )
    members = []
    for fold, checkpoint in zip(model.folds, model.checkpoints, strict=True):
        network = get_network_from_plans(
            configuration.network_arch_class_name,
            configuration.network_arch_init_kwargs,
            configuration.network_arch_init_kwargs_req_import,
            channels,
            heads,
            allow_init=False,
            deep_supervision=False,
        )
        try:
            network.load_state_dict(load_checkpoint_weights(checkpoint))
        except RuntimeError as error:
            raise ExplainInputError(
                f"The weights of fold {fold} do not fit the network that {model.folder.name}/plans.json "
                f"describes ({first_line(error)}): was it trained with a trainer that changes the "
                "architecture? Only the architecture the plans describe is supported."
            ) from None
        members.append(network.eval())
    patch_name = f"{model.folder.name}/plans.json's patch"
    check_window_fits(probe, tuple(configuration.patch_size), channels, patch_name, members[0])
    return members[0] if len(members) == 1 else FoldEnsemble(members).eval()


@dataclass(frozen=True)
class NnUNetTiling(Tiling):
    """nnU-Net's sliding window: an image smaller than the patch is padded (the odd voxel
    after, as pad_nd_image), tiles start at compute_steps_for_sliding_window(step), and
    outputs are blended with compute_gaussian (sigma = patch / 8, peak 10, zeros raised to
    the smallest nonzero weight)."""

    step: float = TILE_STEP

    def grid(self, image_shape: tuple[int, ...]) -> WindowGrid:
        from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window

        padded = WindowGrid(tuple(image_shape), tuple(self.window), symmetric_padding(image_shape, self.window), ())
        steps = compute_steps_for_sliding_window(padded.padded_shape, self.window, self.step)
        starts = tuple(tuple(int(s) for s in start) for start in itertools.product(*steps))
        return dataclasses.replace(padded, starts=starts)

    def weight(self) -> torch.Tensor:
        """nnUNetPredictor's Gaussian is computed in float16 (its default), which flushes the
        far corners' weights to zero and then raises them to the smallest nonzero value;
        those corner weights decide how overlapping windows blend near their edges, so the
        float16 map is used as it is, only widened to float32."""
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian

        return compute_gaussian(self.window, 1.0 / 8, 10, device=torch.device("cpu")).float()


def _check_architecture(configuration, folder: Path) -> None:
    """The plans name classes that get_network_from_plans imports by name (pydoc.locate):
    allow only network classes of dynamic_network_architectures and torch.nn modules, and
    nothing reached through a module's attributes (such as ``...unet.os.system``)."""
    name = configuration.network_arch_class_name
    if not _is_module_class(name, "dynamic_network_architectures.architectures."):
        raise ExplainInputError(
            f"{folder.name}/plans.json names the network class {name!r}; only nnU-Net's own architectures "
            "(dynamic_network_architectures.architectures.*) are loaded, so that a plans file cannot run code."
        )
    kwargs = configuration.network_arch_init_kwargs
    for key in configuration.network_arch_init_kwargs_req_import:
        value = kwargs.get(key)
        if value is not None and not _is_module_class(str(value), "torch.nn."):
            raise ExplainInputError(
                f"{folder.name}/plans.json names {value!r} for {key}; only torch.nn building blocks are allowed."
            )


def _is_module_class(dotted: str, package: str) -> bool:
    """``dotted`` names an nn.Module class defined in ``package`` (located only after the
    prefix check, so nothing outside the package is imported)."""
    import pydoc

    if not dotted.startswith(package):
        return False
    located = pydoc.locate(dotted)
    return isinstance(located, type) and issubclass(located, nn.Module) and located.__module__.startswith(package)


def load_checkpoint_weights(path: Path) -> dict:
    """``network_weights`` of an nnU-Net checkpoint, loaded with weights_only=True; besides
    tensors and containers only numpy scalars (nnU-Net's training log) may be unpickled."""
    numpy_scalars = (
        np.dtype,
        np.dtypes.Float32DType,
        np.dtypes.Float64DType,
        np.dtypes.Int64DType,
        np._core.multiarray.scalar,  # type: ignore[attr-defined]  # numpy's stubs leave out _core
    )
    checkpoint = load_untrusted(path, numpy_scalars)
    weights = checkpoint.get("network_weights") if isinstance(checkpoint, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ExplainInputError(f"{path} is not an nnU-Net checkpoint: it has no network_weights.")
    return weights


@dataclass
class NnUNetInput:
    """A CT prepared by nnU-Net's own preprocessing, and the way back to the CT's grid."""

    array: np.ndarray  # (channels, *preprocessed) float32: transposed, cropped, normalised, resampled
    original: sitk.Image  # the CT as given
    properties: dict  # nnU-Net's: spacing, crop box, shapes before and after cropping
    model: NnUNetModel
    plans_manager: Any  # nnU-Net's PlansManager and ConfigurationManager of the model
    configuration: Any

    def _to_stored(self, array: np.ndarray) -> sitk.Image:
        """An array in the reader's order as an image with the CT's own geometry."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.CopyInformation(_as_read(self.original, self.model))
        if _reorients(self.model):
            orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(self.original.GetDirection())
            image = sitk.DICOMOrient(image, orientation)
        return image

    def _spacings(self):
        """(preprocessed, original) spacing in the transposed order, as nnU-Net's export path
        computes them (a 2D configuration keeps the slice axis' own spacing)."""
        original = [self.properties["spacing"][axis] for axis in self.plans_manager.transpose_forward]
        shape = self.properties["shape_after_cropping_and_before_resampling"]
        target = list(self.configuration.spacing)
        return (target if len(target) == len(shape) else [original[0], *target]), original

    def to_original(self, array: np.ndarray, labels: bool = False) -> sitk.Image:
        """A map on the preprocessed grid, back on the CT's grid by nnU-Net's export path:
        the configuration's probability (or segmentation) resampling, un-cropping (zero
        outside the crop), inverse transposition."""
        from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image

        current, original = self._spacings()
        configuration = self.configuration
        resample = configuration.resampling_fn_seg if labels else configuration.resampling_fn_probabilities
        shape = self.properties["shape_after_cropping_and_before_resampling"]
        resampled = np.asarray(resample(np.asarray(array, dtype=np.float32)[None], shape, current, original))[0]
        full = np.zeros(self.properties["shape_before_cropping"], dtype=np.uint8 if labels else np.float32)
        full = insert_crop_into_image(full, resampled.astype(full.dtype), self.properties["bbox_used_for_cropping"])
        return self._to_stored(full.transpose(self.plans_manager.transpose_backward))

    def mask_to_model(self, mask: sitk.Image) -> np.ndarray:
        """A segment on any grid, on the preprocessed grid: resampled onto the CT (at least
        half inside), then transposed, cropped and resampled as nnU-Net does segmentations."""
        from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice

        on_ct = segment_on_grid(mask, _as_read(self.original, self.model))
        array = on_ct.astype(np.int8).transpose(self.plans_manager.transpose_forward)
        cropped = array[bounding_box_to_slice(self.properties["bbox_used_for_cropping"])]
        current, original = self._spacings()
        resample = self.configuration.resampling_fn_seg
        inside = np.asarray(resample(cropped[None], self.array.shape[1:], original, current))[0] > 0.5
        where = "the region nnU-Net keeps of this CT (its nonzero crop) at the model's resolution"
        return nonempty_segment(inside, where)

    def labels_on_original(self, logits: np.ndarray, head: str) -> sitk.Image:
        """The label map exactly as nnU-Net exports it (region-based: regions_class_order)."""
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

        label_manager = self.plans_manager.get_label_manager(self.model.dataset_json)
        segmentation = convert_predicted_logits_to_segmentation_with_correct_shape(
            torch.as_tensor(logits),
            self.plans_manager,
            self.configuration,
            label_manager,
            dict(self.properties),
            num_threads_torch=torch.get_num_threads(),
        )
        return self._to_stored(np.asarray(segmentation).astype(np.uint8))


def prepare_nnunet_input(ct: sitk.Image, model: NnUNetModel) -> NnUNetInput:
    """nnU-Net's reader and the configuration's preprocessor on a CT."""
    plans_manager, configuration = managers(model)
    read = _as_read(ct, model)
    data = sitk.GetArrayFromImage(read).astype(np.float32)[None]
    properties = {
        "sitk_stuff": {"spacing": read.GetSpacing(), "origin": read.GetOrigin(), "direction": read.GetDirection()},
        "spacing": [abs(value) for value in read.GetSpacing()[::-1]],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        preprocessor = configuration.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(
            data, None, properties, plans_manager, configuration, model.dataset_json
        )
    data = np.ascontiguousarray(data, dtype=np.float32)
    return NnUNetInput(data, ct, properties, model, plans_manager, configuration)


def _reorients(model: NnUNetModel) -> bool:
    return model.plans.get("image_reader_writer") == "SimpleITKIOWithReorient"


def _as_read(image: sitk.Image, model: NnUNetModel) -> sitk.Image:
    """The image as nnU-Net's reader sees it (reoriented to RAS by the reorienting reader)."""
    return sitk.DICOMOrient(image, "RAS") if _reorients(model) else image
