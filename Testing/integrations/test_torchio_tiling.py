"""TorchIO's GridSampler + GridAggregator as a tiling: the blended logits equal TorchIO's own
aggregation, and the explanation is exact for them."""

import numpy as np
import pytest
import torch
import torchio as tio

from conftest import bias_free_cnn
from SegHiResGradCAMLib import Explainer, SegmentTarget, sliding_window_logits
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.integrations.torchio_tiling import TorchIOTiling

TUMOUR = 2
SETTINGS = [
    # (patch size, overlap, aggregation, padding): TorchIO's default (crop, no padding), crop on a
    # padded volume, equal-weight and Hann blending, and a last patch moved back at the border.
    ((16, 16, 12), (4, 4, 2), "crop", None),
    ((16, 16, 12), (6, 4, 4), "crop", "edge"),
    ((16, 12, 12), (4, 4, 4), "average", None),
    ((16, 16, 12), (8, 6, 4), "hann", 0.5),
    ((20, 14, 10), (2, 0, 2), "crop", "reflect"),
]


def torchio_logits(network, image: torch.Tensor, patch, overlap, mode, padding) -> torch.Tensor:
    """The network run patch by patch and aggregated as TorchIO does it."""
    subject = tio.Subject(image=tio.ScalarImage(tensor=image))
    sampler = tio.GridSampler(subject, patch, overlap, padding_mode=padding)
    aggregator = tio.GridAggregator(sampler, overlap_mode=mode)
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(sampler, batch_size=3):
            aggregator.add_batch(network(batch["image"][tio.DATA]), batch[tio.LOCATION])
    return aggregator.get_output_tensor()


@pytest.mark.parametrize(("patch", "overlap", "mode", "padding"), SETTINGS)
def test_the_logits_equal_torchio_s_aggregation_and_the_attribution_sums_to_t(patch, overlap, mode, padding):
    torch.manual_seed(0)
    network = bias_free_cnn(3).eval()  # ReLU and no bias: gradient x activation sums exactly to T
    image = torch.randn(1, 38, 30, 23)
    tiling = TorchIOTiling.torchio(patch, overlap, mode, padding)
    theirs = torchio_logits(network, image, patch, overlap, mode, padding)
    ours = sliding_window_logits(network, image, tiling)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-5)

    tumour = torch.zeros(38, 30, 23, dtype=torch.bool)
    tumour[14:30, 3:14, 8:20] = True  # across patch borders
    with Explainer(network, layer="3", tiling=tiling) as explainer:
        result = explainer(image, SegmentTarget(TUMOUR, tumour))
    t_of_torchio = float(theirs[TUMOUR][tumour].sum())
    assert result.target_score == pytest.approx(t_of_torchio, rel=1e-4)
    # Euler: from the layer on the network is positively homogeneous, so the signed map (each
    # window's gradient x activation, weighted by its share of TorchIO's blend) sums to T.
    assert float(result.raw.sum()) == pytest.approx(t_of_torchio, rel=1e-4)


def test_settings_torchio_refuses_are_refused_before_any_network_runs():
    with pytest.raises(ExplainInputError, match="even"):
        TorchIOTiling.torchio(16, 3)
    with pytest.raises(ExplainInputError, match="smaller than patch_size"):
        TorchIOTiling.torchio(8, 8)
    with pytest.raises(ExplainInputError, match="overlap_mode"):
        TorchIOTiling.torchio(16, 4, "gaussian")
    with pytest.raises(ExplainInputError, match="cannot be reproduced"):
        TorchIOTiling.torchio(16, 4, padding_mode="symmetric")
    with pytest.raises(ExplainInputError, match="smaller than the patch"):
        TorchIOTiling.torchio(16, 4).grid((20, 12, 30))
    with pytest.raises(ExplainInputError, match="3D"):
        TorchIOTiling.torchio(16, 4).grid((20, 30))
    np.testing.assert_array_equal(TorchIOTiling.torchio(16, 4, "average").weight().numpy(), np.ones((16, 16, 16)))


def test_the_docstring_examples_run():
    import doctest

    from SegHiResGradCAMLib.integrations import torchio_tiling

    results = doctest.testmod(torchio_tiling)
    assert results.attempted >= 2 and results.failed == 0
