"""Explanations during training: a tiny MONAI training run with the Ignite handler, and the
plain callable."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from SegHiResGradCAMLib import Explainer, SegmentTarget, Tiling
from SegHiResGradCAMLib.cam.metrics import mass_share
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.integrations.validation import ExplanationHandler, ValidationCase, ValidationExplanations

TUMOUR = 2


def synthetic_case(seed: int) -> dict:
    """A 2D 'CT': a square organ (label 1) with a round lesion (label 2), noise around."""
    generator = np.random.default_rng(seed)
    label = np.zeros((32, 32), dtype=np.float32)
    top, left = generator.integers(4, 14, 2)
    label[top : top + 14, left : left + 14] = 1
    rows, columns = np.mgrid[:32, :32]
    label[(rows - top - 7) ** 2 + (columns - left - 7) ** 2 <= generator.integers(9, 20)] = TUMOUR
    image = label * 0.8 + generator.normal(0, 0.3, label.shape)
    return {"image": torch.from_numpy(image[None].astype(np.float32)), "label": torch.from_numpy(label[None])}


def training_run(folder, explanations_every=None, tiling=None, epochs=3):
    """A few iterations of MONAI training of a small 2D U-Net; with explanations every K epochs
    when asked. Returns the network, its weights after each epoch, and the handler."""
    torch.manual_seed(0)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
    loader = torch.utils.data.DataLoader([synthetic_case(seed) for seed in range(8)], batch_size=4, shuffle=False)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), 1e-2),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
    )
    handler = None
    if explanations_every:
        validation = [synthetic_case(100), synthetic_case(101)]
        cases = [
            ValidationCase("truth_m", validation[0]["image"], validation[0]["label"][0] == TUMOUR, spacing=(0.8, 0.7)),
            ValidationCase("predicted_m", validation[1]["image"]),  # M: the network's prediction at each epoch
        ]
        explanations = ValidationExplanations(
            cases, TUMOUR, folder, every=explanations_every, layer="model.1", tiling=tiling, tensorboard=True
        )
        handler = ExplanationHandler(explanations)
        handler.attach(trainer)
    snapshots = {}
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda engine: snapshots.update({engine.state.epoch: {k: v.clone() for k, v in network.state_dict().items()}}),
    )
    trainer.run()
    snapshots["random state after"] = torch.random.get_rng_state()
    return network, snapshots, handler


def test_explanations_during_training_change_nothing_in_the_training_and_explain_each_epoch_s_weights(tmp_path):
    plain, plain_snapshots, _ = training_run(tmp_path / "plain")
    network, snapshots, handler = training_run(tmp_path / "explained", explanations_every=1)
    # The training is exactly what it is without explanations (weights, mode, random numbers).
    assert all(torch.equal(value, plain.state_dict()[key]) for key, value in network.state_dict().items())
    assert network.training == plain.training
    assert torch.equal(snapshots["random state after"], plain_snapshots["random state after"])

    folder = tmp_path / "explained"
    rows = [json.loads(line) for line in (folder / "explanations.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(row["epoch"], row["case"]) for row in rows] == [
        (epoch, case) for epoch in (1, 2, 3) for case in ("truth_m", "predicted_m")
    ]
    assert rows == handler.rows
    truth = synthetic_case(100)
    tumour = truth["label"][0] == TUMOUR
    for epoch in (1, 2, 3):
        assert (folder / f"epoch_{epoch:04d}" / "montage.png").stat().st_size > 0
        written = sitk.ReadImage(str(folder / f"epoch_{epoch:04d}" / "truth_m.nrrd"))
        assert written.GetSpacing() == (0.7, 0.8)
        # The written map is the map of the network as it was at the end of that epoch.
        at_epoch = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
        at_epoch.load_state_dict(snapshots[epoch])
        with Explainer(at_epoch, layer="model.1") as explainer:
            expected = explainer(truth["image"], SegmentTarget(TUMOUR, tumour)).heatmap
        assert np.array_equal(sitk.GetArrayFromImage(written), expected)
        (row,) = [row for row in rows if row["epoch"] == epoch and row["case"] == "truth_m"]
        assert row["heat_in_m"] == pytest.approx(mass_share(expected, tumour.numpy()))
        assert -1 <= row["randomisation_similarity_in_m"] <= 1 and row["seconds"] > 0

    events = EventAccumulator(str(folder / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    steps = [event.step for event in events.Scalars("explanations/truth_m/heat_in_m")]
    assert steps == [1, 2, 3]
    assert [event.step for event in events.Images("explanations/montage")] == [1, 2, 3]


def test_every_k_epochs_with_a_sliding_window_and_the_refusals(tmp_path):
    _, snapshots, _ = training_run(tmp_path, explanations_every=2, tiling=Tiling.monai((16, 16), overlap=0.5))
    assert sorted(path.name for path in tmp_path.glob("epoch_*")) == ["epoch_0002"]
    case = synthetic_case(101)
    network = UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=0)
    network.load_state_dict(snapshots[2])
    with torch.no_grad():  # the prediction under the same windows, as MONAI computes it
        logits = sliding_window_inference(case["image"][None], (16, 16), 1, network.eval(), 0.5, "gaussian")
    predicted = logits[0].argmax(0) == TUMOUR
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "epoch_0002" / "predicted_m.nrrd")))
    assert predicted.any()  # by the second epoch the network predicts the lesion
    with Explainer(network, layer="model.1", tiling=Tiling.monai((16, 16), overlap=0.5)) as explainer:
        assert np.allclose(written, explainer(case["image"], SegmentTarget(TUMOUR, predicted)).heatmap, atol=1e-6)

    image = torch.zeros(1, 8, 8)
    with pytest.raises(ExplainInputError, match="own name"):
        ValidationExplanations([ValidationCase("a", image), ValidationCase("a", image)], 1, tmp_path)
    with pytest.raises(ExplainInputError, match="file names"):
        ValidationExplanations([ValidationCase("../a", image)], 1, tmp_path)
    with pytest.raises(ExplainInputError, match="nope"):
        ValidationExplanations([ValidationCase("a", image)], 1, tmp_path, method="nope")
    with pytest.raises(ExplainInputError, match="every"):
        ValidationExplanations([ValidationCase("a", image)], 1, tmp_path, every=0)


def test_the_docstring_examples_run():
    import doctest

    from SegHiResGradCAMLib.integrations import validation

    results = doctest.testmod(validation)
    assert results.attempted >= 5 and results.failed == 0
