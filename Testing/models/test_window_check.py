"""The check that a model's window fits (before any window-sized tensor is made) measures
the same activations on an empty batch of the built network as on a meta-device copy, and
falls back on the meta copy for a network whose batch axis stops counting samples."""

import json

import pytest
import torch
from monai.networks.nets import SegResNet, UNet

from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.models import card as card_module
from SegHiResGradCAMLib.models.card import check_window_fits
from SegHiResGradCAMLib.models.formats import BUNDLED_MODEL

NETWORKS = {
    "bundled UNet": lambda: UNet(**json.loads(BUNDLED_MODEL.read_text(encoding="utf-8"))["kwargs"]),
    "2D UNet": lambda: UNet(2, 1, 3, channels=(4, 8, 16), strides=(2, 2)),
    "SegResNet": lambda: SegResNet(spatial_dims=3, init_filters=8, blocks_down=(1, 1), blocks_up=(1,)),
}
WINDOWS = {"bundled UNet": (32, 96, 96), "2D UNet": (64, 48), "SegResNet": (16, 32, 32)}


def built_and_probe(make):
    with torch.device("meta"):
        probe = make()
    return make().eval(), probe


class CheckedBytes:
    """What the check compares with the machine's memory (twice the activations' bytes)."""

    def __init__(self, monkeypatch):
        self.needed = []
        monkeypatch.setattr(
            "SegHiResGradCAMLib.volumes.volume_io.check_memory", lambda what, needed, advice: self.needed.append(needed)
        )


class MeasuredBatches:
    """The devices of the batches the check runs networks on."""

    def __init__(self, monkeypatch):
        self.devices, measure = [], card_module._leaf_outputs
        monkeypatch.setattr(card_module, "_leaf_outputs", lambda net, batch: self.record(batch) or measure(net, batch))

    def record(self, batch):
        self.devices.append(batch.device.type)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_an_empty_batch_measures_what_one_meta_sample_measures_and_leaves_the_network_as_it_was(name, monkeypatch):
    network, probe = built_and_probe(NETWORKS[name])
    before = {key: value.clone() for key, value in network.state_dict().items()}
    checked = CheckedBytes(monkeypatch)
    check_window_fits(probe, WINDOWS[name], 1, name)  # the meta copy only
    measured = MeasuredBatches(monkeypatch)
    check_window_fits(probe, WINDOWS[name], 1, name, network)
    assert measured.devices == ["cpu"]  # the meta kernels (and the modules they import) are not needed
    assert len(checked.needed) == 2 and checked.needed[0] == checked.needed[1] > 0
    assert not network.training and not network._forward_hooks
    assert all(not module._forward_hooks for module in network.modules())
    assert all(torch.equal(before[key], value) for key, value in network.state_dict().items())


class Tokens(torch.nn.Module):
    """A convolution, then its voxels as a sequence of tokens (another rank) and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.tokens, self.linear = (
            torch.nn.Conv3d(1, 4, 3, padding=1),
            torch.nn.Flatten(2),
            torch.nn.Linear(4, 2),
        )

    def forward(self, x):
        return self.linear(self.tokens(self.conv(x)).transpose(1, 2))


def test_a_network_that_turns_voxels_into_tokens_is_measured_on_the_meta_copy(monkeypatch):
    network, probe = built_and_probe(Tokens)
    checked, measured = CheckedBytes(monkeypatch), MeasuredBatches(monkeypatch)
    check_window_fits(probe, (8, 8, 8), 1, "tokens", network)
    assert measured.devices == ["cpu", "meta"]
    # conv, tokens and linear outputs of one sample: 4 + 4 + 2 float32 values per voxel
    assert checked.needed == [2 * (4 + 4 + 2) * 8**3 * 4]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bundled UNet", ""),  # refuses an empty batch too
        # Group normalisation of one voxel: one sample has one value per channel, which it
        # refuses; an empty batch has none, which it lets through.
        ("SegResNet", "more than 1 value per channel"),
    ],
)
def test_a_window_the_network_cannot_take_is_refused_with_the_meta_copy_s_reason(name, reason):
    network, probe = built_and_probe(NETWORKS[name])
    with pytest.raises(ExplainInputError, match=r"cannot run on a window of 1 x 1 x 1 voxels .*larger sliding window"):
        check_window_fits(probe, (1, 1, 1), 1, name, network)
    with pytest.raises(ValueError, match=reason):
        network(torch.zeros(1, 1, 1, 1, 1))  # the reason is the network's own
