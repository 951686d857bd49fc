"""What the engine needs to know about a network: its device, the input it expects, and
which layers can be explained (``list_layers``).

The recommended layer follows ``DEFAULT_LAYER_RULE``, one of ``LAYER_RULES`` (see their
``because`` texts); a rule's name can be given wherever a layer name is expected. The rules
work on the decoder stages (``decoder_stages``: one layer per resolution level of the output
path, found from output shapes) and on the layer before the segmentation head (the last
module, in execution order, that runs once, returns an image-shaped tensor that is not the
output itself and has more channels than the output; a map on the logits themselves
explains nothing). The study behind the default is bench/bench_layers.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ExplainInputError

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class LayerInfo:
    """A layer that can be explained.

    Attributes:
        name: its dotted module name (what ``layer=`` takes).
        type: its module's class name.
        shape: its output, (channels, *spatial) on the layer's grid.
        rules: the layer rules that select it (``recommended`` is the default rule's).
    """

    name: str
    type: str
    shape: tuple[int, ...]  # (channels, *spatial) on the layer's grid
    rules: tuple[str, ...] = ()  # the LAYER_RULES that select this layer

    @property
    def recommended(self) -> bool:
        return DEFAULT_LAYER_RULE in self.rules


def model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def expected_input(model: nn.Module) -> tuple[int, int] | None:
    """(input channels, spatial dimensions) read from the first convolution, if any."""
    for module in model.modules():
        if isinstance(module, _CONVOLUTIONS):
            return module.in_channels, module.weight.dim() - 2
    return None


def resolve_device(device) -> torch.device | None:
    """None (follow the model), "auto" (CUDA, then MPS, then CPU), or an explicit device."""
    if device is None:
        return None
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ExplainInputError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda'.") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ExplainInputError("CUDA was requested but no CUDA GPU is available: use device='cpu' or 'auto'.")
    if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ExplainInputError("MPS (Apple GPU) was requested but this PyTorch has none: use device='cpu' or 'auto'.")
    return chosen


def device_description(device="auto") -> dict:
    """What ``device`` resolves to on this machine, for a front end to show before a run:
    its kind ("cuda", "mps", "cpu"), a readable name, and a CUDA GPU's total memory in GB."""
    chosen = resolve_device(device) or torch.device("cpu")  # no model to follow: the CPU
    if chosen.type == "cuda":
        properties = torch.cuda.get_device_properties(chosen)
        return {"kind": "cuda", "name": properties.name, "memory_gb": round(properties.total_memory / 2**30, 1)}
    if chosen.type == "mps":
        return {"kind": "mps", "name": "Apple GPU (MPS)", "memory_gb": None}
    return {"kind": "cpu", "name": "the CPU (no CUDA GPU found)", "memory_gb": None}


@contextlib.contextmanager
def placed_on(model: nn.Module, device: torch.device | None):
    """Moves the model to ``device`` for the duration and back afterwards (bitwise the same)."""
    original = model_device(model)
    if device is None or device == original:
        yield original
        return
    model.to(device)
    try:
        yield device
    finally:
        model.to(original)


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Runs the model in eval mode (as inference does) and restores every module's flag."""
    training_flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, was_training in training_flags:
            module.training = was_training


def as_image_batch(image, model: nn.Module, device: torch.device | None = None) -> torch.Tensor:
    """The image as a float (1, C, *spatial) tensor, checked, on ``device`` (default: the
    model's)."""
    tensor = image.detach() if isinstance(image, torch.Tensor) else torch.as_tensor(image)
    expected = expected_input(model)
    spatial_dims = expected[1] if expected else (tensor.dim() - 1 if tensor.dim() in (3, 4) else tensor.dim() - 2)
    if tensor.dim() == spatial_dims + 1:
        tensor = tensor.unsqueeze(0)
    elif tensor.dim() != spatial_dims + 2 or tensor.shape[0] != 1:
        raise ExplainInputError(
            f"Image shape {tuple(tensor.shape)} does not fit a {spatial_dims}D network: pass one image "
            f"shaped (channels, {', '.join('spatial' for _ in range(spatial_dims))}) or with a leading batch of 1."
        )
    if expected and tensor.shape[1] != expected[0]:
        raise ExplainInputError(
            f"The network expects {expected[0]} input channel(s) but the image has {tensor.shape[1]}: "
            "pass the channels the model was trained on (e.g. one CT channel) as the first axis."
        )
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise ExplainInputError(
            "The image contains NaN or infinite values: replace them (e.g. with the background "
            "intensity) before explaining."
        )
    parameter_dtype = next((p.dtype for p in model.parameters()), torch.float32)
    return tensor.to(device=device or model_device(model), dtype=parameter_dtype)


def find_layer(model: nn.Module, name: str, image_batch: torch.Tensor) -> nn.Module:
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    candidates = [layer.name for layer in _layers_for_batch_shape(model, image_batch)]
    shown = ", ".join(candidates[-30:])
    raise ExplainInputError(
        f"The network has no layer named {name!r}. Choose one of its explainable layers "
        f"(dotted module names; list_layers() gives all with their shapes), for example: {shown}."
    )


_layer_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def list_layers(model: nn.Module, image_shape) -> list[LayerInfo]:
    """The layers that can be explained, in execution order; one is marked ``recommended``.

    A layer can be explained when it runs once, returns an image-shaped tensor and the output
    depends on it.

    Args:
        model: the segmentation network.
        image_shape: (C, *spatial), or with a leading batch of 1.

    Returns:
        A list of ``LayerInfo``.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import list_layers
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> [(layer.name, layer.recommended) for layer in list_layers(net, (1, 16, 16))]
        [('0', False), ('1', True)]
    """
    probe = as_image_batch(torch.zeros(tuple(image_shape)), model)
    return _layers_for_batch_shape(model, probe)


def decoder_stages(layers: list[LayerInfo]) -> list[LayerInfo]:
    """One layer per resolution level of the output path, coarsest first: from the last layer
    on the coarsest grid (the bottleneck) on, in execution order, the last layer of each grid
    the output path passes through. Found from the layers' shapes, not their names."""
    if not layers:
        return []
    sizes = [int(np.prod(layer.shape[1:])) for layer in layers]
    bottleneck = max(index for index, size in enumerate(sizes) if size == min(sizes))
    stages: list[LayerInfo] = []
    for layer in layers[bottleneck:]:
        if stages and stages[-1].shape[1:] == layer.shape[1:]:
            stages[-1] = layer  # the same grid: the later layer closes the stage
        else:
            stages.append(layer)
    return stages


def _last_before_head(layers: list[LayerInfo], classes: int) -> str:
    wide = [layer for layer in layers if layer.shape[0] > classes]
    return (wide or layers)[-1].name


def _stage_below_finest(layers: list[LayerInfo], classes: int) -> str:
    # The finest stage is the one the last layer before the head closes; stages after it (a
    # full-resolution convolution straight to the classes) belong to the head.
    finest = _last_before_head(layers, classes)
    order = {layer.name: index for index, layer in enumerate(layers)}
    finest_size = int(np.prod(layers[order[finest]].shape[1:]))
    coarser = [
        stage.name
        for stage in decoder_stages(layers)
        if order[stage.name] < order[finest] and int(np.prod(stage.shape[1:])) < finest_size
    ]
    return coarser[-1] if coarser else finest


@dataclass(frozen=True)
class LayerRule:
    choose: Callable[[list[LayerInfo], int], str]  # (layers, number of output channels) -> layer name
    because: str


LAYER_RULES = {
    "last-before-head": LayerRule(
        _last_before_head,
        "the last layer before the output with more channels than the output: in the layer study (20 cases x 3 "
        "architectures) its map changed inside M when the weights were randomised on 60 of 60 cases, kept the "
        "heat off the air outside the body and was the most faithful on nnU-Net's network; over the whole image "
        "it stays near M whatever the weights",
    ),
    "stage-below-finest": LayerRule(
        _stage_below_finest,
        "the decoder stage one resolution level coarser than the last layer before the head (that layer itself "
        "when nothing coarser precedes it): passes the whole-image randomisation check (60 of 60 cases) and shows "
        "context beyond M, but put 29-48 % of its heat outside the body in the layer study",
    ),
}
# Chosen by the layer study (bench/bench_layers.py, docs/layer-study.md).
DEFAULT_LAYER_RULE = "last-before-head"


def layer_by_rule(model: nn.Module, image_shape, rule: str) -> str:
    """The layer ``rule`` (a key of LAYER_RULES) selects for images of ``image_shape``."""
    if rule not in LAYER_RULES:
        raise ExplainInputError(f"Unknown layer rule {rule!r}: choose one of {', '.join(LAYER_RULES)}.")
    return _layer_by_rule(model, as_image_batch(torch.zeros(tuple(image_shape)), model), rule)


def resolve_layer(model: nn.Module, image_batch: torch.Tensor, layer: str | None) -> str:
    """A layer name from ``layer``: None gives the recommended layer, a rule name (that is
    not also a module name) the rule's layer, anything else is taken as a module name."""
    if layer is None:
        return _layer_by_rule(model, image_batch, DEFAULT_LAYER_RULE)
    if layer in LAYER_RULES and layer not in dict(model.named_modules()):
        return _layer_by_rule(model, image_batch, layer)
    return layer


def _layer_by_rule(model: nn.Module, image_batch: torch.Tensor, rule: str) -> str:
    return next(layer.name for layer in _layers_for_batch_shape(model, image_batch) if rule in layer.rules)


def _layers_for_batch_shape(model: nn.Module, image_batch: torch.Tensor) -> list[LayerInfo]:
    layers, classes = _traced(model, image_batch)
    chosen = {name: rule.choose(layers, classes) for name, rule in LAYER_RULES.items()}
    return [
        dataclasses.replace(layer, rules=tuple(name for name, pick in chosen.items() if pick == layer.name))
        for layer in layers
    ]


def _traced(model: nn.Module, image_batch: torch.Tensor) -> tuple[list[LayerInfo], int]:
    # Keyed by the module objects too, so that editing the network invalidates the entry.
    key = (tuple(image_batch.shape), str(image_batch.device), tuple(id(m) for m in model.modules()))
    per_model = _layer_cache.setdefault(model, {})
    if key not in per_model:
        per_model.clear()
        per_model[key] = _trace_layers(model, torch.zeros_like(image_batch))
    return per_model[key]


def _trace_layers(model: nn.Module, probe: torch.Tensor) -> tuple[list[LayerInfo], int]:
    calls: dict[str, list[torch.Tensor]] = {}
    order: list[tuple[str, nn.Module]] = []

    def recorder(name: str):
        def hook(module, inputs, output):
            if name not in calls:
                order.append((name, module))
                calls[name] = []
            calls[name].append(output)

        return hook

    handles = [module.register_forward_hook(recorder(name)) for name, module in model.named_modules() if name]
    # The graph tells which layers the output depends on (a deep-supervision head runs but
    # does not feed the output); its saved tensors are dropped at once, since no backward
    # pass follows, so this costs no more memory than a plain forward pass.
    drop_saved = torch.autograd.graph.saved_tensors_hooks(lambda tensor: None, lambda nothing: nothing)
    try:
        with evaluation_mode(model), torch.enable_grad(), drop_saved:
            network_output = model(probe.clone().requires_grad_(True))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(network_output, torch.Tensor):
        raise ExplainInputError(
            f"The network returns {type(network_output).__name__}, not a tensor of logits: wrap it so "
            "that forward() returns the (1, classes, *spatial) logits."
        )

    feeding = _graph_nodes(network_output)

    def explainable(outputs: list) -> bool:
        output = outputs[0]
        return (
            len(outputs) == 1
            and isinstance(output, torch.Tensor)
            and output.dim() == probe.dim()
            and output.shape[0] == 1
            and output.data_ptr() != network_output.data_ptr()
            and (feeding is None or output.grad_fn in feeding)
        )

    layers = [(name, module, calls[name][0]) for name, module in order if explainable(calls[name])]
    if not layers:
        raise ExplainInputError("The network has no layer with an image-shaped output that runs once per forward pass.")
    infos = [LayerInfo(name, type(module).__name__, tuple(output.shape[1:])) for name, module, output in layers]
    return infos, network_output.shape[1]


def _graph_nodes(output: torch.Tensor) -> set | None:
    """Every autograd node the output was computed through (None when the network computes
    without a graph, so that nothing can be told)."""
    if output.grad_fn is None:
        return None
    seen, todo = set(), [output.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        todo.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    return seen


def reaches_output(model: nn.Module, module: nn.Module, image_batch: torch.Tensor) -> bool:
    """Whether the model's output has a gradient path back to ``module``'s output, for
    ``image_batch`` (a layer beside the output path, e.g. a deep-supervision head in eval
    mode, has none)."""
    captured = []
    handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            output = model(image_batch)
            output = output[0] if isinstance(output, list | tuple) else output
            activations = [value for value in captured if isinstance(value, torch.Tensor) and value.requires_grad]
            if not activations:
                return False
            return torch.autograd.grad(output.sum(), activations[0], allow_unused=True)[0] is not None
    finally:
        handle.remove()
