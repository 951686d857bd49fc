"""list_layers: the explainable layers, their shapes, and the recommended default."""

import pytest
import torch
from monai.networks.nets import BasicUNet, UNet

from conftest import BiasFreeUNet, bias_free_cnn
from SegHiResGradCAMLib import METHODS, explain, list_layers, register_method
from SegHiResGradCAMLib.cam.model_inspection import LAYER_RULES, layer_by_rule
from SegHiResGradCAMLib.errors import ExplainInputError


def by_name(layers):
    return {layer.name: layer for layer in layers}


def recommended(layers) -> list[str]:
    return [layer.name for layer in layers if layer.recommended]


def test_basic_unet_layers_have_the_architecture_s_shapes_and_the_last_decoder_block_is_recommended():
    model = BasicUNet(2, 1, 3)  # features (32, 32, 64, 128, 256, 32)
    layers = list_layers(model, (1, 64, 48))
    named = by_name(layers)
    assert named["conv_0"].shape == (32, 64, 48)
    assert named["down_4"].shape == (256, 4, 3)
    assert named["upcat_4"].shape == (128, 8, 6)
    assert named["upcat_2"].shape == (32, 32, 24)
    assert named["upcat_1"].shape == (32, 64, 48)
    assert recommended(layers) == ["upcat_1"]
    assert layer_by_rule(model, (1, 64, 48), "stage-below-finest") == "upcat_2"  # half upcat_1's grid
    assert named["upcat_1"].rules == ("last-before-head",) and named["upcat_2"].rules == ("stage-below-finest",)
    assert "final_conv" not in named  # the network's output itself is not offered


def test_monai_unet_recommends_the_outermost_skip_connection():
    model = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=2)
    layers = list_layers(model, (1, 1, 32, 32, 32))
    named = by_name(layers)
    assert named["model.1"].shape == (16, 16, 16, 16) and named["model.1.submodule.1"].shape == (48, 8, 8, 8)
    assert recommended(layers) == ["model.1"]
    # the full-resolution residual unit after the last up-convolution has only the classes'
    # channels: it belongs to the head, so the stage below model.1 (not below that unit) is taken
    assert named["model.2.1.conv"].shape == (3, 32, 32, 32)
    assert layer_by_rule(model, (1, 32, 32, 32), "stage-below-finest") == "model.1.submodule.1"


def test_sequential_cnn_recommends_the_activation_before_the_head():
    layers = list_layers(bias_free_cnn(3, width=5), (1, 8, 8, 8))
    assert [layer.name for layer in layers] == [str(i) for i in range(10)]
    assert recommended(layers) == ["9"]
    assert by_name(layers)["5"].shape == (10, 4, 4, 4)
    assert layer_by_rule(bias_free_cnn(3, width=5), (1, 8, 8, 8), "stage-below-finest") == "5"


def test_a_network_without_a_coarser_stage_gives_the_layer_before_the_head_for_every_rule():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 3, 1))
    layers = list_layers(model, (1, 16, 16))
    assert recommended(layers) == ["1"] and by_name(layers)["1"].rules == tuple(LAYER_RULES)


def test_explain_uses_the_recommended_layer_by_default_and_a_rule_by_its_name():
    model = BiasFreeUNet(2)
    image = torch.randn(1, 16, 16)
    default = explain(model, image, 1)
    assert default.layer == "decoder"  # every path from input to output passes through it, so S sums to T
    assert default.raw.sum() == pytest.approx(default.target_score, rel=1e-4)
    assert explain(model, image, 1, layer="last-before-head").layer == "decoder"
    assert explain(model, image, 1, layer="stage-below-finest").layer == "down"


def test_a_module_named_like_a_rule_is_that_module():
    model = torch.nn.Sequential()
    model.add_module("last-before-head", torch.nn.Conv2d(1, 6, 3, padding=1))
    model.add_module("relu", torch.nn.ReLU())
    model.add_module("head", torch.nn.Conv2d(6, 3, 1))
    assert explain(model, torch.randn(1, 8, 8), 1, layer="last-before-head").layer == "last-before-head"
    assert layer_by_rule(model, (1, 8, 8), "last-before-head") == "relu"


def test_an_unknown_rule_names_the_rules():
    with pytest.raises(ExplainInputError, match=r"Unknown layer rule 'finest'.*last-before-head, stage-below-finest"):
        layer_by_rule(BiasFreeUNet(2), (1, 16, 16), "finest")


def test_a_registered_method_is_usable_without_touching_the_engine():
    @register_method("test-gradient-only", "Gradient only", additive=True, reference="test")
    def gradient_only(activations, gradients):
        return gradients.sum(dim=0)

    try:
        model = BiasFreeUNet(2)
        image = torch.randn(1, 16, 16)
        result = explain(model, image, 1, layer="decoder", method="test-gradient-only")
        # With a whole-image target and a linear 1x1 head after the layer, dT/dA_k is the
        # head's weight for channel k everywhere.
        expected = model.head.weight[1].detach().sum().item()
        assert result.raw == pytest.approx(expected, rel=1e-5)
    finally:
        METHODS.pop("test-gradient-only")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_method("seg-grad-cam", "again", additive=False, reference="")(lambda a, g: a)


def test_only_layers_that_feed_the_output_are_listed_and_each_can_be_explained():
    """DynUNet's deep-supervision heads run in eval mode but do not feed the output: explain()
    refuses them, so list_layers must not offer them."""
    from monai.networks.nets import DynUNet

    model = DynUNet(
        3,
        1,
        3,
        kernel_size=[3, 3, 3],
        strides=[1, 2, 2],
        upsample_kernel_size=[2, 2],
        deep_supervision=True,
        deep_supr_num=1,
    )
    heads = [name for name, _ in model.named_modules() if name.startswith("deep_supervision_heads")]
    assert heads  # the heads exist and run ...
    layers = list_layers(model, (1, 16, 16, 16))
    assert not {layer.name for layer in layers} & set(heads)  # ... but are not offered
    image = torch.randn(1, 16, 16, 16)
    for layer in layers:
        assert explain(model, image, 1, layer=layer.name).raw.size > 0
