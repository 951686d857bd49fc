"""The Explainer: made once, asked many times, giving exactly explain()'s maps; targets as
segments or as any scalar function of the logits; the model left as it was."""

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from test_engine_hygiene import NormalisedNet, hooks_left, snapshot

from conftest import bias_free_cnn
from SegHiResGradCAMLib import CallableTarget, Explainer, ExplainInputError, SegmentTarget, Tiling, explain
from SegHiResGradCAMLib.cam.sliding_window import sliding_window_logits

SHAPE = (20, 24, 28)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(3)
    return bias_free_cnn(3).eval()


@pytest.fixture(scope="module")
def case():
    generator = torch.Generator().manual_seed(4)
    image = torch.randn((1, *SHAPE), generator=generator)
    tumour = torch.zeros(SHAPE, dtype=torch.bool)
    tumour[6:12, 8:16, 10:18] = True
    kidney = torch.zeros(SHAPE, dtype=torch.bool)
    kidney[4:16, 4:20, 4:12] = True
    return image, tumour, kidney


@pytest.mark.parametrize("method", ["seg-hires-grad-cam", "seg-grad-cam"])
@pytest.mark.parametrize("tiled", [False, True])
def test_every_question_gives_exactly_explain_s_map(network, case, method, tiled):
    image, tumour, kidney = case
    tiling = Tiling.monai((12, 16, 16), overlap=0.5) if tiled else None
    window = dict(window=tiling) if tiled else {}
    with Explainer(network, layer="4", method=method, tiling=tiling, device="cpu") as explainer:
        answers = [
            explainer(image, SegmentTarget(2, tumour)),
            explainer(image, SegmentTarget(1, kidney)),
            explainer(image, SegmentTarget(2, tumour, output="probability")),
        ]
    options = dict(layer="4", method=method, **window)
    expected = [
        explain(network, image, 2, tumour, **options),
        explain(network, image, 1, kidney, **options),
        explain(network, image, 2, tumour, output="probability", **options),
    ]
    for answer, reference in zip(answers, expected, strict=True):
        np.testing.assert_array_equal(answer.raw, reference.raw)
        np.testing.assert_array_equal(answer.heatmap, reference.heatmap)
        assert answer.target_score == reference.target_score and answer.layer == reference.layer == "4"
    assert not np.array_equal(answers[0].heatmap, answers[1].heatmap)  # each question its own answer


def test_tiling_monai_is_monai_s_sliding_window(network, case):
    image, _, _ = case
    # Not the defaults, so that each argument must reach the tiling for the logits to agree.
    tiling = Tiling.monai((12, 16, 16), overlap=0.4, mode="gaussian", sigma_scale=0.3)
    ours = sliding_window_logits(network, image, tiling)
    with torch.no_grad():
        theirs = sliding_window_inference(
            image[None], (12, 16, 16), 1, network, overlap=0.4, mode="gaussian", sigma_scale=0.3
        )[0]
        default = sliding_window_inference(image[None], (12, 16, 16), 1, network)[0]
    assert not torch.allclose(default, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    with pytest.raises(ExplainInputError, match="blend"):
        Tiling.monai((12, 16, 16), mode="bicubic")


@pytest.mark.parametrize("tiled", [False, True])
def test_a_callable_target_of_the_summed_logits_is_the_segment_target(network, case, tiled):
    """T written as a function (summed class-2 logits over M) gives the segment's map; the
    mean over M gives the same map divided by |M|, since the map is linear in dT/dA."""
    image, tumour, _ = case
    tiling = Tiling.monai((12, 16, 16), overlap=0.5) if tiled else None
    with Explainer(network, layer="4", tiling=tiling, device="cpu") as explainer:
        segment = explainer(image, SegmentTarget(2, tumour))
        summed = explainer(image, CallableTarget(lambda logits: logits[0, 2][tumour].sum()))
        mean = explainer(image, CallableTarget(lambda logits: logits[0, 2][tumour].mean()))
    assert summed.target_class is None and summed.target_score == pytest.approx(segment.target_score, rel=1e-5)
    np.testing.assert_allclose(summed.raw, segment.raw, rtol=1e-4, atol=1e-6 * np.abs(segment.raw).max())
    count = int(tumour.sum())
    assert mean.target_score == pytest.approx(segment.target_score / count, rel=1e-5)
    np.testing.assert_allclose(mean.raw * count, segment.raw, rtol=1e-4, atol=1e-6 * np.abs(segment.raw).max())


def test_the_model_is_left_as_it_was_after_many_questions_and_an_error():
    model = NormalisedNet().train()
    model.block.weight.requires_grad_(False)
    before = snapshot(model)
    image, mask = torch.randn(1, 16, 16), torch.zeros(16, 16, dtype=torch.bool)
    mask[4:9, 5:11] = True
    with Explainer(model, layer="block", device="cpu") as explainer:
        explainer(image, SegmentTarget(1, mask))
        explainer(image, SegmentTarget(2, mask, output="probability"))
        with pytest.raises(ExplainInputError, match="Target class 7 does not exist"):
            explainer(image, SegmentTarget(7, mask))
    assert model.training and all(module.training for module in model.modules())
    assert not model.block.weight.requires_grad and model.stem[0].weight.requires_grad
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(parameter.grad is None for parameter in model.parameters()) and hooks_left(model) == []


# name -> (how the explainer is made or asked, what the error says)
BAD_USES = {
    "a tiling given as sizes": (lambda net, image: Explainer(net, tiling=(12, 16, 16)), "tiling must be a Tiling"),
    "an unknown method": (lambda net, image: Explainer(net, method="grad-cam-deluxe"), "Unknown CAM method"),
    "a class index as the target": (lambda net, image: Explainer(net)(image, 2), "target must be a SegmentTarget"),
    "a function that returns a map": (
        lambda net, image: Explainer(net)(image, CallableTarget(lambda logits: logits[0, 2])),
        r"must return one number \(a scalar tensor T\).*Tensor\(20, 24, 28\)",
    ),
    "a function that ignores the logits": (
        lambda net, image: Explainer(net)(image, CallableTarget(lambda logits: torch.tensor(1.0))),
        "does not depend on the logits",
    ),
    "a function target for Score CAM": (
        lambda net, image: Explainer(net, method="seg-score-cam")(image, CallableTarget(torch.sum)),
        "defines its weights for a class over M",
    ),
}


@pytest.mark.parametrize("use", list(BAD_USES))
def test_bad_uses_say_what_to_do(use, network, case):
    image, _, _ = case
    make, message = BAD_USES[use]
    with pytest.raises(ExplainInputError, match=message):
        make(network, image)


def test_the_names_before_0_2_still_work_for_one_release_and_say_so(network, case):
    image, tumour, _ = case
    current = explain(network, image, 2, tumour, layer="4", output="probability")
    with pytest.warns(DeprecationWarning, match=r"explain\(output=\.\.\.\)"):
        earlier = explain(network, image, 2, tumour, layer="4", score="probability")
    np.testing.assert_array_equal(earlier.raw, current.raw)
    with pytest.warns(DeprecationWarning, match="target_score"):
        assert earlier.score == current.target_score
    tiled = explain(network, image, 2, tumour, layer="4", window=Tiling.monai((12, 16, 16), 0.5, "constant"))
    with pytest.warns(DeprecationWarning, match=r"Tiling\.monai"):
        sized = explain(network, image, 2, tumour, layer="4", window=(12, 16, 16), overlap=0.5, blend="constant")
    np.testing.assert_array_equal(sized.raw, tiled.raw)
