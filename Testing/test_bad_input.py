"""Bad input raises an ExplainInputError that names the problem and the fix, and leaves
the model untouched."""

import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet

from conftest import bias_free_cnn
from SegHiResGradCAMLib import ExplainInputError, explain


@pytest.fixture
def model():
    return BasicUNet(2, 1, 3, features=(4, 4, 8, 8, 16, 4))


@pytest.fixture
def image():
    return torch.randn(1, 32, 32)


def nan_image():
    bad = torch.randn(1, 32, 32)
    bad[0, 3, 4] = float("nan")
    return bad


def inf_image():
    bad = torch.randn(1, 32, 32)
    bad[0, 5, 5] = float("inf")
    return bad


BAD_CALLS = {
    "empty mask": (dict(mask=np.zeros((32, 32), bool)), "mask is empty.*mask=None"),
    "mask shape": (dict(mask=np.ones((16, 32), bool)), r"mask has shape \(16, 32\).*output grid is \(32, 32\)"),
    "class too large": (dict(target_class=3), "Target class 3 does not exist.*0..2"),
    "negative class": (dict(target_class=-1), "Target class -1 does not exist"),
    "unknown layer": (dict(layer="decoder.99"), "no layer named 'decoder.99'.*upcat_1"),
    "too many channels": (dict(image=torch.randn(2, 32, 32)), "expects 1 input channel.*has 2"),
    "3D image for a 2D network": (dict(image=torch.randn(1, 1, 8, 32, 32)), r"does not fit a 2D network"),
    "batch of two": (dict(image=torch.randn(2, 1, 32, 32)), r"does not fit a 2D network.*batch of 1"),
    "too few dimensions": (dict(image=torch.randn(32, 32)), "does not fit a 2D network"),
    "NaN": (dict(image=nan_image()), "NaN or infinite"),
    "Inf": (dict(image=inf_image()), "NaN or infinite"),
    "unknown method": (dict(method="grad-cam-deluxe"), "Unknown CAM method.*seg-hires-grad-cam"),
    "unknown score": (dict(output="softmax"), "Unknown output 'softmax'.*logits, probability"),
    "unknown head": (dict(head="tanh"), "Unknown head 'tanh'.*softmax, sigmoid"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_is_refused_clearly_and_changes_nothing(case, model, image):
    changes, message = BAD_CALLS[case]
    arguments = dict(image=image, target_class=1, layer="upcat_1") | changes
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(ExplainInputError, match=message):
        explain(model, **arguments)
    assert all(torch.equal(tensor, model.state_dict()[name]) for name, tensor in before.items())
    assert not any(module._forward_hooks for module in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_a_layer_that_runs_twice_is_refused():
    shared = torch.nn.Conv2d(4, 4, 3, padding=1)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), shared, shared, torch.nn.Conv2d(4, 2, 1))
    with pytest.raises(ExplainInputError, match="runs more than once"):
        explain(model, torch.randn(1, 8, 8), 0, layer="1")
    assert not shared._forward_hooks


def test_a_layer_without_an_image_shaped_output_is_refused():
    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = bias_free_cnn(2)

        def forward(self, x):
            return (self.body(x), "extra")

    with pytest.raises(ExplainInputError, match="returns tuple, not a tensor"):
        explain(Pooled(), torch.randn(1, 8, 8), 0, layer="body.1")
