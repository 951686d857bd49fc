"""Shared builders of small real networks for the test suite, and an import probe."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest_plugins = ["slicer_app.fixtures"]  # the widget-flow tests' application stand-in

# Markers given by where a test lives or what it uses (`slow` is written on each test):
# `make test-quick` leaves all four out, `make test` runs everything.
SLICER_FOLDERS = {"mrml", "slicer_widget"}  # real MRML through slicer-core, the widget driven from its .ui
NNUNET_FILES = {"test_nnunet.py"}  # nnU-Net's own planner, trainer and predictor


def pytest_configure(config):
    # `make test` runs the suite in two processes (pytest-xdist), one per core: each computes
    # with one thread, as do the programs it starts, so that the two never fight over the cores
    # (two-thread PyTorch in each of two processes doubles the CPU time on a 2-core machine).
    if os.environ.get("PYTEST_XDIST_WORKER"):
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[variable] = "1"
        torch.set_num_threads(1)


def _starts_ray(item) -> bool:
    return "ray_runtime" in getattr(item, "fixturenames", ()) or bool(
        re.search(r"(?<![a-z])ray(?![a-z])", item.name, flags=re.I)  # "ray", not "array"
    )


def pytest_collection_modifyitems(items):
    for item in items:
        path = Path(str(item.fspath))
        if SLICER_FOLDERS & set(path.parts):
            item.add_marker(pytest.mark.slicer)
        if path.name in NNUNET_FILES:
            item.add_marker(pytest.mark.nnunet)
        if _starts_ray(item):
            item.add_marker(pytest.mark.ray)
    # Longest files first (`make test` hands out whole files, in this order): the last files
    # to start are short ones, so the two processes finish together.
    seconds = json.loads(FILE_SECONDS.read_text(encoding="utf-8"))
    items.sort(key=lambda item: -seconds.get(_file_of(item.nodeid), 0.0))  # stable: new files last, as collected


FILE_SECONDS = Path(__file__).with_name("file_seconds.json")  # `make test-seconds` measures it again


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_addoption(parser):
    parser.addoption("--record-file-seconds", action="store_true", help=f"write each file's seconds to {FILE_SECONDS}")


_file_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report):
    file = _file_of(report.nodeid)
    _file_seconds[file] = _file_seconds.get(file, 0.0) + report.duration


def pytest_sessionfinish(session):
    if session.config.getoption("--record-file-seconds") and not hasattr(session.config, "workerinput"):
        # The files this run measured replace their entries; the others keep theirs while they exist.
        known = json.loads(FILE_SECONDS.read_text(encoding="utf-8"))
        root = Path(str(session.config.rootpath))
        kept = {file: seconds for file, seconds in known.items() if (root / file).is_file()}
        measured = {**kept, **{file: round(value, 1) for file, value in _file_seconds.items()}}
        FILE_SECONDS.write_text(json.dumps(dict(sorted(measured.items())), indent=1) + "\n", encoding="utf-8")


def bias_free_cnn(spatial_dims: int, in_channels: int = 1, classes: int = 3, width: int = 6) -> nn.Sequential:
    """Convolutions and ReLUs without biases: positively homogeneous from any layer on."""
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
    return nn.Sequential(
        conv(in_channels, width, 3, padding=1, bias=False),
        nn.ReLU(),
        conv(width, 2 * width, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        conv(2 * width, 2 * width, 3, padding=1, bias=False),
        nn.ReLU(),
        up(2 * width, width, 2, stride=2, bias=False),
        nn.ReLU(),
        conv(width, width, 3, padding=1, bias=False),
        nn.ReLU(),
        conv(width, classes, 1, bias=False),
    )


class BiasFreeUNet(nn.Module):
    """A two-level U-Net of bias-free convolutions and ReLUs with one skip connection.

    ``decoder`` runs after the skip connection has merged, so every input-to-output path
    passes through it; ``encoder`` is bypassed by the skip connection.
    """

    def __init__(self, spatial_dims: int, in_channels: int = 1, classes: int = 2, width: int = 4):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        up = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
        self.encoder = nn.Sequential(conv(in_channels, width, 3, padding=1, bias=False), nn.ReLU())
        self.down = nn.Sequential(conv(width, 2 * width, 3, stride=2, padding=1, bias=False), nn.ReLU())
        self.up = nn.Sequential(up(2 * width, width, 2, stride=2, bias=False), nn.ReLU())
        self.decoder = nn.Sequential(conv(2 * width, width, 3, padding=1, bias=False), nn.ReLU())
        self.head = conv(width, classes, 1, bias=False)

    def forward(self, x):
        skip = self.encoder(x)
        merged = torch.cat([skip, self.up(self.down(skip))], dim=1)
        return self.head(self.decoder(merged))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def plain_autograd_layer(model, image, target_class, mask, layer, output="logits", head="softmax"):
    """(A, G = dT/dA, T) for one image from an ordinary forward pass with autograd on
    everywhere and a hook that keeps the layer's (non-leaf) output: the reference that the
    engine's confined backward pass must reproduce."""
    captured = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("A", o))
    model.eval()
    try:
        logits = model(image[None])
    finally:
        handle.remove()
    if output == "logits":
        values = logits[0, target_class]
    elif head == "softmax":
        values = torch.softmax(logits, dim=1)[0, target_class]
    else:
        values = torch.sigmoid(logits[0, target_class])
    target = values[mask].sum()
    activation = captured["A"]
    (gradient,) = torch.autograd.grad(target, activation)
    return activation[0].detach(), gradient[0], target.item()


def loaded_by_importing(modules: list[str], watched: list[str]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after importing ``modules``."""
    code = f"import sys, {', '.join(modules)}; print(sorted(m for m in {watched!r} if m in sys.modules))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(output.replace("'", '"'))


def bias_free_model_card(folder, spacing, window=(16, 32, 32), seed=0):
    """A model card of a MONAI UNet with ReLUs and neither biases nor normalisation, random
    weights: T is positively homogeneous in the activations of ``model.1`` (every path from
    input to output passes through it), so its Seg-HiRes-Grad CAM map sums to T."""
    from monai.networks.nets import UNet

    kwargs = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
        "act": "RELU",
        "norm": None,
        "bias": False,
    }
    torch.manual_seed(seed)
    torch.save(UNet(**kwargs).state_dict(), folder / "bias_free.pt")
    card = {
        "name": "bias-free UNet",
        "architecture": "UNet",
        "kwargs": kwargs,
        "weights": "bias_free.pt",
        "preprocessing": {
            "orientation": "LPS",
            "spacing": list(spacing),
            "intensity": {"low": -250, "high": 350, "centre": 50, "scale": 150},
        },
        "classes": ["background", "kidney", "tumour"],
        "sliding_window": {"size": list(window), "overlap": 0.25},
        "default_layer": "model.1",
    }
    path = folder / "bias_free.json"
    path.write_text(json.dumps(card))
    return path


def write_small_case(folder, spacing=(6.0, 6.0, 6.0)):
    """A small synthetic CT (ct.nrrd) and its kidneys with tumour and cyst as one mask
    (kidney.nrrd), stored on a grid of ``spacing`` (a bias-free model card's grid); returns
    the folder."""
    import SimpleITK as sitk

    from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case

    ct, labels = case_images(make_case(3, Grid.centred((40, 48, 20), spacing)))
    sitk.WriteImage(ct, str(folder / "ct.nrrd"))
    sitk.WriteImage(sitk.Cast(labels > 0, sitk.sitkUInt8), str(folder / "kidney.nrrd"))
    return folder


def explain_small_case(folder, card, out, *extra):
    """The command line on a write_small_case folder: its kidney explained by ``card`` into ``out``."""
    from SegHiResGradCAMLib.cli import main as cli_main

    return cli_main(
        [
            "explain",
            "--image",
            str(folder / "ct.nrrd"),
            "--model",
            str(card),
            "--target-class",
            "kidney",
            "--mask",
            str(folder / "kidney.nrrd"),
            "--out",
            str(out),
            "--progress",
            "none",
            *extra,
        ]
    )


@pytest.fixture(autouse=True, scope="session")
def private_temporary_folder():
    """Temporary files of this test run only (this process's and its children's), so that the
    checks for leftover work folders see nothing of other programs on the machine."""
    # A short path: Ray puts its sockets under it, and a socket's path has at most 107 bytes
    # (pytest's own folders under a test process of pytest-xdist come close to that alone).
    folder = Path(tempfile.mkdtemp(prefix="shgc-"))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(folder), str(folder)
    yield folder
    tempfile.tempdir = saved[0]
    if saved[1] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[1]
    shutil.rmtree(folder, ignore_errors=True)


def assert_warm_maps_equal_cold(make_job, questions: list, folder) -> list:
    """Runs ``make_job(question, out)`` for each question with the prepared CT and logits
    kept between runs (as the warm worker does), then again with nothing kept: the second and
    later questions ran no inference, and every map and T equals the fresh run's, bit for bit.
    Returns the warm results."""
    import SimpleITK as sitk

    from SegHiResGradCAMLib.pipeline import run
    from SegHiResGradCAMLib.reuse import keep_prepared_inputs

    store = keep_prepared_inputs()
    store.clear()
    try:
        warm = [run(make_job(question, folder / f"warm{number}.nrrd")) for number, question in enumerate(questions)]
        assert store.hits == len(questions) - 1
    finally:
        keep_prepared_inputs(False)
    assert warm[0].seconds["inference"] > 0 and all(result.seconds["inference"] == 0.0 for result in warm[1:])
    for number, question in enumerate(questions):
        cold = run(make_job(question, folder / f"cold{number}.nrrd"))
        assert cold.scores == warm[number].scores, question
        warm_map, cold_map = (sitk.ReadImage(str(folder / f"{kind}{number}.nrrd")) for kind in ("warm", "cold"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(warm_map), sitk.GetArrayFromImage(cold_map))
    return warm


def bundled_network_tumour_crop(seed: int = 300, tumour_label: int = 2):
    """The bundled (trained) network, and a held-out demo case's crop around its tumour on
    the network's grid: (network, image (1, *crop), tumour mask)."""
    from SegHiResGradCAMLib.cam.volume_runner import region_of_interest
    from SegHiResGradCAMLib.demo.phantom import Grid, make_case
    from SegHiResGradCAMLib.models.formats import read_model_card

    card = read_model_card()
    field_of_view = (400, 400, 180)  # mm, as the demo's CTs
    grid = Grid.centred(
        tuple(round(size / step) for size, step in zip(field_of_view, card.spacing, strict=True)), card.spacing
    )
    case = make_case(seed, grid)
    tumour = case.labels == tumour_label
    box = region_of_interest(tumour, card.window)
    image = torch.from_numpy(card.intensity.apply(case.hu)[None][(slice(None), *box)])
    return card.network(), image, tumour[box]
