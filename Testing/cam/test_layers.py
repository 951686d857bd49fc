"""list_layers: the explainable layers, their shapes, and the recommended default."""

import pytest
import torch
from monai.networks.nets import BasicUNet, UNet

from conftest import BiasFreeUNet, bias_free_cnn
from SegHiResGradCAMLib import METHODS, explain, list_layers, register_method


def by_name(layers):
    return {layer.name: layer for layer in layers}


def test_basic_unet_layers_have_the_architecture_s_shapes_and_the_last_decoder_block_is_recommended():
    model = BasicUNet(2, 1, 3)  # features (32, 32, 64, 128, 256, 32)
    layers = by_name(list_layers(model, (1, 64, 48)))
    assert layers["conv_0"].shape == (32, 64, 48)
    assert layers["down_4"].shape == (256, 4, 3)
    assert layers["upcat_4"].shape == (128, 8, 6)
    assert layers["upcat_1"].shape == (32, 64, 48)
    assert [name for name, layer in layers.items() if layer.recommended] == ["upcat_1"]
    assert "final_conv" not in layers  # the network's output itself is not offered


def test_monai_unet_recommends_the_outermost_skip_connection():
    model = UNet(3, 1, 3, channels=(8, 16, 32), strides=(2, 2), num_res_units=2)
    layers = list_layers(model, (1, 1, 32, 32, 32))
    recommended = [layer for layer in layers if layer.recommended]
    assert [(layer.name, layer.type, layer.shape) for layer in recommended] == [
        ("model.1", "SkipConnection", (16, 16, 16, 16))
    ]


def test_sequential_cnn_recommends_the_activation_before_the_head():
    layers = list_layers(bias_free_cnn(3, width=5), (1, 8, 8, 8))
    assert [layer.name for layer in layers] == [str(i) for i in range(10)]
    assert [layer.name for layer in layers if layer.recommended] == ["9"]
    assert by_name(layers)["3"].shape == (10, 4, 4, 4)


def test_explain_uses_the_recommended_layer_by_default():
    model = BiasFreeUNet(2)
    result = explain(model, torch.randn(1, 16, 16), 1)
    assert result.layer == "decoder"
    assert result.raw.sum() == pytest.approx(result.score, rel=1e-4)


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

    model = DynUNet(3, 1, 3, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                    deep_supervision=True, deep_supr_num=1)  # fmt: skip
    heads = [name for name, _ in model.named_modules() if name.startswith("deep_supervision_heads")]
    assert heads  # the heads exist and run ...
    layers = list_layers(model, (1, 16, 16, 16))
    assert not {layer.name for layer in layers} & set(heads)  # ... but are not offered
    image = torch.randn(1, 16, 16, 16)
    for layer in layers:
        assert explain(model, image, 1, layer=layer.name).raw.size > 0
