"""The engine leaves the model, the input and autograd exactly as it found them."""

import gc
import weakref

import pytest
import torch
from torch import nn

from conftest import BiasFreeUNet
from SegHiResGradCAMLib import ExplainInputError, explain


class NormalisedNet(nn.Module):
    """Batch norm (running statistics), dropout and an in-place ReLU after the target layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.block = nn.Conv2d(6, 6, 3, padding=1)
        self.after = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(0.5), nn.BatchNorm2d(6), nn.Conv2d(6, 3, 1))

    def forward(self, x):
        return self.after(self.block(self.stem(x)))


def snapshot(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def hooks_left(model):
    return [
        name
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
    ]


def test_model_parameters_modes_and_flags_are_unchanged():
    model = NormalisedNet().train()
    model.stem[0].weight.requires_grad_(False)
    model.after.eval()
    before = snapshot(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    image = torch.randn(1, 1, 20, 20, requires_grad=True)

    for method in ["seg-hires-grad-cam", "seg-grad-cam"]:
        explain(model, image, 1, mask=torch.rand(20, 20) > 0.5, layer="block", method=method)

    after = model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), f"{name} changed"
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())
    assert image.grad is None
    assert hooks_left(model) == []


def test_inplace_activation_after_the_layer_does_not_corrupt_the_activations():
    model = NormalisedNet()
    image = torch.randn(1, 1, 16, 16)
    result = explain(model, image, 0, layer="block")
    # The block's output has negative values that the in-place ReLU would have zeroed;
    # Seg-HiRes-Grad CAM on the pre-activation must see them and so be negative somewhere.
    assert (result.raw < 0).any()


def test_hooks_grad_mode_and_state_are_restored_after_an_error():
    model = NormalisedNet().train()
    before = snapshot(model)
    with torch.no_grad():
        with pytest.raises(ExplainInputError, match="Target class 7"):
            explain(model, torch.randn(1, 12, 12), target_class=7, layer="block")
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert hooks_left(model) == []
    assert model.training and model.stem[1].training
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in before.items())


def test_works_inside_no_grad_and_leaves_it_on():
    model = BiasFreeUNet(2)
    with torch.no_grad():
        result = explain(model, torch.randn(1, 8, 8), 1, layer="decoder")
        assert not torch.is_grad_enabled()
    assert result.raw.any()


def test_the_autograd_graph_is_freed_after_the_call():
    kept = []

    class Recorder(nn.Module):
        def forward(self, x):
            kept.append(weakref.ref(x))
            return x

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        Recorder(),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    )
    explain(model, torch.randn(1, 10, 10), 1, layer="1")
    gc.collect()
    # The convolution after the recorder saves its input for the backward pass: only a
    # graph that was kept alive would keep that tensor alive.
    assert len(kept) == 1 and kept[0]() is None


def test_layers_that_are_not_on_the_output_path_are_reported():
    class WithAuxiliaryHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(1, 4, 3, padding=1)
            self.auxiliary = nn.Conv2d(4, 4, 1)
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            features = self.body(x)
            self.auxiliary(features)  # computed, but the output does not use it
            return self.head(features)

    model = WithAuxiliaryHead()
    with pytest.raises(ExplainInputError, match="no gradient path"):
        explain(model, torch.randn(1, 8, 8), 1, layer="auxiliary")
    assert hooks_left(model) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_follows_the_model_on_cuda():
    model = BiasFreeUNet(3).cuda()
    result = explain(model, torch.randn(1, 8, 8, 8), 1, layer="decoder")
    assert result.raw.sum() == pytest.approx(result.target_score, rel=1e-3)
