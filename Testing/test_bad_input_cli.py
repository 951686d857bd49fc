"""Bad input to the command line, table-driven: each case must end with its exit code and
one line on stderr (no traceback), write no output file, and leave every input file
byte-identical. Inputs are real files: a synthetic CT, label maps, the bundled model's card
and weights copied into a model folder, and damaged or hostile variants of them."""

import gzip
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SegHiResGradCAMLib.cli import main as cli_main
from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case
from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.volumes import outputs as outputs_module
from SegHiResGradCAMLib.volumes.outputs import PARTIAL_PREFIX

BUNDLED = Path(__file__).resolve().parents[1] / "SegHiResGradCAM" / "SegHiResGradCAMLib" / "resources" / "Models"
OUTPUT_OPTIONS = ("--out", "--prediction", "--summary", "--metrics", "--signed")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """The good inputs, made once: each case copies them into its own folder."""
    folder = tmp_path_factory.mktemp("originals")
    ct, labels = case_images(make_case(5, Grid.centred((64, 64, 20), (5.0, 5.0, 6.0))))
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    sitk.WriteImage(ct, str(folder / "ct.nrrd"), useCompression=True)
    sitk.WriteImage(ct, str(folder / "ct.nii"))
    sitk.WriteImage(sitk.Cast(labels == 1, sitk.sitkUInt8), str(folder / "kidney.nrrd"))
    sitk.WriteImage(labels, str(folder / "labels.nrrd"))
    model = folder / "model"
    model.mkdir()
    shutil.copy(BUNDLED / "kits_demo_unet.json", model / "card.json")
    shutil.copy(BUNDLED / "kits_demo_unet.pt", model / "kits_demo_unet.pt")
    return folder


def card(folder: Path, **changes) -> Path:
    """The model folder's card with entries changed (None removes one)."""
    path = folder / "model" / "card.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        target, *rest = key.split("__")
        holder = data
        for part in [target, *rest][:-1]:
            holder = holder[part]
        if value is None:
            holder.pop([target, *rest][-1])
        else:
            holder[[target, *rest][-1]] = value
    path.write_text(json.dumps(data))
    return path


def renamed_entry(folder: Path, key: str, new_key: str) -> Path:
    path = folder / "model" / "card.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data[new_key] = data.pop(key)
    path.write_text(json.dumps(data))
    return path


def image(folder: Path, name: str, array: np.ndarray, spacing=(5.0, 5.0, 6.0)) -> Path:
    """A file on the case CT's grid (the given spacing, its origin), holding ``array``."""
    picture = sitk.GetImageFromArray(array)
    if picture.GetDimension() == 3:
        picture.SetSpacing(spacing)
        picture.SetOrigin(sitk.ReadImage(str(folder / "kidney.nrrd")).GetOrigin())
    sitk.WriteImage(picture, str(folder / name))
    return folder / name


def truncated(folder: Path, name: str, source: str, keep: float = 0.6) -> Path:
    data = (folder / source).read_bytes()
    (folder / name).write_bytes(data[: int(len(data) * keep)])
    return folder / name


def corrupted_middle(folder: Path, name: str, source: str) -> Path:
    data = bytearray((folder / source).read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    (folder / name).write_bytes(bytes(data))
    return folder / name


def nrrd_header(folder: Path, name: str, sizes: str, directions: str = "(5,0,0) (0,5,0) (0,0,6)") -> Path:
    header = (
        f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {sizes}\n"
        f"space directions: {directions}\nendian: little\nencoding: gzip\nspace origin: (0,0,0)\n\n"
    )
    (folder / name).write_bytes(header.encode() + gzip.compress(b"\0" * 4096))
    return folder / name


def big_network_card(folder: Path) -> Path:
    return card(
        folder,
        kwargs={
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 4,
            "num_res_units": 0,
            "channels": [4096, 8192, 16384, 32768],
            "strides": [2, 2, 2],
        },
    )


def outside_weights(folder: Path) -> Path:
    outside = folder / "outside"
    outside.mkdir()
    shutil.copy(folder / "model" / "kits_demo_unet.pt", outside / "secret_weights.pt")
    return card(folder, weights="../outside/secret_weights.pt")


def linked_weights(folder: Path) -> Path:
    (folder / "elsewhere.pt").write_bytes((folder / "model" / "kits_demo_unet.pt").read_bytes())
    (folder / "model" / "link.pt").symlink_to(folder / "elsewhere.pt")
    return card(folder, weights="link.pt")


def pickled_code(folder: Path) -> Path:
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch should-not-exist",))

    torch.save({"weights": Payload()}, folder / "model" / "kits_demo_unet.pt")
    return card(folder)


def inflated_weights(folder: Path) -> Path:
    """The weights with an extra 64 MB tensor of zeros, every record deflated: a small file
    that unpacks to far more than the network's weights."""
    import io
    import zipfile

    path = folder / "model" / "kits_demo_unet.pt"
    state = torch.load(path, weights_only=True)
    buffer = io.BytesIO()
    torch.save({**state, "padding": torch.zeros(16 * 2**20)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as stored, zipfile.ZipFile(path, "w") as deflated:
        for record in stored.infolist():
            deflated.writestr(record.filename, stored.read(record), compress_type=zipfile.ZIP_DEFLATED)
    return card(folder)


def looped_link(folder: Path) -> Path:
    (folder / "loop-a.nii.gz").symlink_to(folder / "loop-b.nii.gz")
    (folder / "loop-b.nii.gz").symlink_to(folder / "loop-a.nii.gz")
    return folder / "loop-a.nii.gz"


def dangling_link(folder: Path) -> Path:
    (folder / "link.nii.gz").symlink_to(folder / "gone.nii.gz")
    return folder / "link.nii.gz"


def fifo(folder: Path) -> Path:
    """What ``--image <(zcat ct.nii.gz)`` gives: a pipe (nothing writes to it, so reading would hang)."""
    os.mkfifo(folder / "piped")
    return folder / "piped"


def jpeg_as_nifti(folder: Path) -> Path:
    (folder / "photo.nii.gz").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(4000))
    return folder / "photo.nii.gz"


def second_card(folder: Path) -> Path:
    shutil.copy(folder / "model" / "card.json", folder / "model" / "other.json")
    return folder / "model"


def bundle(folder: Path) -> Path:
    (folder / "bundle" / "configs").mkdir(parents=True)
    (folder / "bundle" / "configs" / "inference.json").write_text('{"network_def": {"_target_": "UNet"}}')
    return folder / "bundle"


def nnunet_without_dataset(folder: Path) -> Path:
    model = folder / "Dataset001_X" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    return model


def symlinked_ct(folder: Path) -> Path:
    (folder / "ct-link.nii.gz").symlink_to(folder / "ct.nii.gz")
    return folder / "ct-link.nii.gz"


def in_a_file(folder: Path) -> Path:
    (folder / "notes.txt").write_text("not a folder")
    return folder / "notes.txt" / "heat.nrrd"


def good(folder: Path, **replace) -> list:
    """The arguments of a good run, with some replaced (a value of None drops the option)."""
    options = {
        "--image": folder / "ct.nii.gz",
        "--target-class": "kidney",
        "--mask": folder / "kidney.nrrd",
        "--out": folder / "out" / "heat.nrrd",
    }
    options.update({f"--{key.replace('_', '-')}": value for key, value in replace.items()})
    arguments = ["explain"]
    for option, value in options.items():
        if value is None:
            continue
        arguments += [option] if value is True else [option, value]
    return [*arguments, "--progress", "none"]


# name -> (arguments for the case folder, exit code, what the message must say)
CASES = {
    # Outputs that would destroy an input, or cannot be written.
    "out is the CT": (lambda f: good(f, out=f / "ct.nii.gz"), 2, "is an input of this run"),
    "out is the mask": (lambda f: good(f, out=f / "kidney.nrrd"), 2, "is an input of this run"),
    "prediction is the CT": (lambda f: good(f, prediction=f / "ct.nii.gz"), 2, "is an input of this run"),
    "signed map is the CT": (lambda f: good(f, signed=f / "ct.nii.gz"), 2, "is an input of this run"),
    "summary is the model card": (
        lambda f: good(f, model=card(f), summary=f / "model" / "card.json"),
        2,
        "is an input of this run",
    ),
    "out is the weights": (
        lambda f: good(f, model=card(f), out=f / "model" / "kits_demo_unet.pt"),
        2,
        "is an input of this run|cannot be written",
    ),
    "metrics is the bundled weights": (
        lambda f: good(f, metrics=BUNDLED / "kits_demo_unet.pt"),
        2,
        "is an input of this run",
    ),
    "out is a link to the CT": (lambda f: good(f, out=symlinked_ct(f)), 2, "is an input of this run"),
    "out and prediction the same": (lambda f: good(f, prediction=f / "out" / "heat.nrrd"), 2, "would both be written"),
    "out is a folder": (lambda f: good(f, out=f), 2, "is a folder"),
    "out has an unknown extension": (lambda f: good(f, out=f / "heat.xyz"), 2, "cannot be written"),
    "out is a header with a data file": (lambda f: good(f, out=f / "heat.nhdr"), 2, "cannot be written"),
    "prediction as PNG": (lambda f: good(f, prediction=f / "labels.png"), 2, "cannot be written"),
    "out inside a file": (lambda f: good(f, out=in_a_file(f)), 2, "not a writable folder"),
    "summary is a folder": (lambda f: good(f, summary=f), 2, "is a folder"),
    "metrics is a folder": (lambda f: good(f, metrics=f), 2, "is a folder"),
    # What a model card may reach, and how its errors read.
    "weights climb out of the folder": (
        lambda f: good(f, model=card(f, weights="../../../../etc/passwd")),
        2,
        "outside the model's folder",
    ),
    "weights at an absolute path": (
        lambda f: good(f, model=card(f, weights="/etc/shadow")),
        2,
        "outside the model's folder",
    ),
    "weights next to the folder": (lambda f: good(f, model=outside_weights(f)), 2, "outside the model's folder"),
    "weights linked from outside": (lambda f: good(f, model=linked_weights(f)), 2, "outside the model's folder"),
    "spacing with units": (
        lambda f: good(f, model=card(f, preprocessing__spacing="2mm")),
        2,
        r"preprocessing.spacing must be three positive numbers.*'2mm'",
    ),
    "spacing of two numbers": (
        lambda f: good(f, model=card(f, preprocessing__spacing=[2, 2])),
        2,
        "preprocessing.spacing must be",
    ),
    "negative spacing": (
        lambda f: good(f, model=card(f, preprocessing__spacing=[2, -2, 3])),
        2,
        "preprocessing.spacing must be",
    ),
    "classes is a number": (lambda f: good(f, model=card(f, classes=4)), 2, "classes must be a list of class names"),
    "orientation letters": (
        lambda f: good(f, model=card(f, preprocessing__orientation="XYZ")),
        2,
        "preprocessing.orientation must be",
    ),
    "intensity scale zero": (
        lambda f: good(f, model=card(f, preprocessing__intensity__scale=0)),
        2,
        "preprocessing.intensity must be",
    ),
    "intensity as text": (
        lambda f: good(f, model=card(f, preprocessing__intensity__low="low")),
        2,
        "preprocessing.intensity.low must be a number",
    ),
    "misspelt card entry": (
        lambda f: good(f, model=renamed_entry(f, "preprocessing", "preprocesing")),
        2,
        "unknown entry 'preprocesing'; did you mean 'preprocessing'",
    ),
    "misspelt nested card entry": (
        lambda f: good(f, model=card(f, preprocessing__intensity__center=50)),
        2,
        "unknown entry 'preprocessing.intensity.center'; did you mean 'preprocessing.intensity.centre'",
    ),
    "card entry the reader does not know": (
        lambda f: good(f, model=card(f, normalisation="zscore")),
        2,
        "unknown entry 'normalisation'; The card can hold name, ",
    ),
    "axis order of another dimension": (
        lambda f: good(f, model=card(f, sliding_window__axis_order="xy")),
        2,
        "sliding_window.axis_order must be the network's array axis order, one of zyx, xyz; got 'xy'",
    ),
    "unknown blend": (
        lambda f: good(f, model=card(f, sliding_window__blend="mean")),
        2,
        "sliding_window.blend must be",
    ),
    "no architecture": (lambda f: good(f, model=card(f, architecture=None)), 2, "architecture must be"),
    "architecture names code": (
        lambda f: good(f, model=card(f, architecture="os.system")),
        2,
        "not one of the supported MONAI networks",
    ),
    "kwargs not an object": (lambda f: good(f, model=card(f, kwargs=[1, 2])), 2, "kwargs must be"),
    "kwargs that do not fit": (
        lambda f: good(f, model=card(f, kwargs={"spatial_dims": 3, "wings": 2})),
        2,
        "network arguments do not fit",
    ),
    "window as text": (
        lambda f: good(f, model=card(f, sliding_window__size=["32", "96", "96"])),
        2,
        "sliding_window.size must be",
    ),
    "overlap above one": (
        lambda f: good(f, model=card(f, sliding_window__overlap=1.5)),
        2,
        "sliding_window.overlap must be",
    ),
    "unknown head": (lambda f: good(f, model=card(f, head="tanh")), 2, "head must be one of softmax, sigmoid"),
    "colours of the wrong length": (lambda f: good(f, model=card(f, colours=[[1, 0, 0]])), 2, "colours must be"),
    "card that is not JSON": (
        lambda f: (f / "model" / "card.json").write_text("{not json") and good(f, model=f / "model" / "card.json"),
        2,
        "is not valid JSON",
    ),
    "card that is a list": (
        lambda f: (f / "model" / "card.json").write_text("[1, 2]") and good(f, model=f / "model" / "card.json"),
        2,
        "must be a JSON object",
    ),
    "missing weights": (
        lambda f: (f / "model" / "kits_demo_unet.pt").unlink() or good(f, model=card(f)),
        2,
        "does not exist",
    ),
    "damaged weights": (
        lambda f: truncated(f / "model", "kits_demo_unet.pt", "kits_demo_unet.pt", 0.5) and good(f, model=card(f)),
        2,
        "Cannot load weights",
    ),
    "weights that would run code": (
        lambda f: good(f, model=pickled_code(f)),
        2,
        r"\(Trying to load unsupported GLOBAL \w+\.system whose module \w+ is blocked\)\. .*never code",
    ),
    "a network too large for memory": (lambda f: good(f, model=big_network_card(f)), 2, "GB of memory"),
    "a sliding window of 2048 cubed": (
        lambda f: good(f, model=card(f, sliding_window__size=[2048, 2048, 2048])),
        2,
        r"one window of 2048 x 2048 x 2048 voxels \(.* GB of activations.*give a smaller sliding window",
    ),
    "a sliding window of one voxel": (
        lambda f: good(f, model=card(f, sliding_window__size=[1, 1, 1])),
        2,
        r"the network cannot run on a window of 1 x 1 x 1 voxels .*give a larger sliding window",
    ),
    "a class named twice": (
        lambda f: good(f, model=card(f, classes=["background", "tumour", "tumour", "cyst"])),
        2,
        "names the class 'tumour' more than once",
    ),
    "weights that unpack to far more than the network": (
        lambda f: good(f, model=inflated_weights(f)),
        2,
        r"kits_demo_unet.pt unpacks to \d+ MB, but the network it should fit has .* MB of weights",
    ),
    "a folder with two cards": (lambda f: good(f, model=second_card(f)), 2, "exactly one model card"),
    "an untrusted bundle": (lambda f: good(f, model=bundle(f)), 2, "can run arbitrary Python"),
    "an nnU-Net folder without dataset.json": (
        lambda f: good(f, model=nnunet_without_dataset(f)),
        2,
        "has no dataset.json",
    ),
    "a model that does not exist": (lambda f: good(f, model=f / "nothing.json"), 2, "does not exist"),
    # Images.
    "missing CT": (lambda f: good(f, image=f / "none.nii.gz"), 2, "does not exist"),
    "CT that is a link loop": (lambda f: good(f, image=looped_link(f)), 2, "is a link that loops back on itself"),
    "CT that is a link to nothing": (
        lambda f: good(f, image=dangling_link(f)),
        2,
        r"is a link to .*gone.nii.gz, which does not exist",
    ),
    "CT that is a pipe (process substitution)": (lambda f: good(f, image=fifo(f)), 2, "is a pipe or a device"),
    "a JPEG renamed .nii.gz": (lambda f: good(f, image=jpeg_as_nifti(f)), 2, "holds a JPEG image, not the volume"),
    "a header with a zero spacing": (
        lambda f: good(f, image=nrrd_header(f, "flat.nrrd", "16 16 16", "(0,0,0) (0,5,0) (0,0,6)")),
        2,
        r"header gives a voxel spacing of 0 x 5 x 6 mm \(zero or undefined along x\)",
    ),
    "a CT without bone or contrast": (
        lambda f: good(f, image=image(f, "soft.nrrd", np.linspace(-1000, 40, 20 * 64 * 64).reshape(20, 64, 64))),
        2,
        r"its highest value is 40, where a CT's bone or contrast reaches above 100\): give the CT",
    ),
    "CT that is text": (
        lambda f: (f / "ct.txt").write_text("hello") and good(f, image=f / "ct.txt"),
        2,
        "Cannot read ct.txt as a volume",
    ),
    "truncated nii.gz": (lambda f: good(f, image=truncated(f, "cut.nii.gz", "ct.nii.gz")), 2, "cut.nii.gz is damaged"),
    "corrupt nii.gz": (
        lambda f: good(f, image=corrupted_middle(f, "bad.nii.gz", "ct.nii.gz")),
        2,
        "bad.nii.gz is damaged",
    ),
    "truncated raw nii": (lambda f: good(f, image=truncated(f, "cut.nii", "ct.nii")), 2, "cut.nii is damaged"),
    "truncated nrrd": (lambda f: good(f, image=truncated(f, "cut.nrrd", "ct.nrrd")), 2, "cut.nrrd is damaged"),
    "2D image": (lambda f: good(f, image=image(f, "flat.nrrd", np.zeros((20, 20), np.int16))), 2, "2D image"),
    "colour image": (lambda f: good(f, image=image(f, "rgb.nrrd", np.zeros((4, 20, 20, 3), np.uint8))), 2, "component"),
    "label map as the CT": (lambda f: good(f, image=f / "labels.nrrd"), 2, "does not look like a CT"),
    "a header claiming 2000 cubed voxels": (
        lambda f: good(f, image=nrrd_header(f, "huge.nrrd", "2000 2000 2000")),
        2,
        "GB of memory",
    ),
    "a 3000 mm spacing": (
        lambda f: good(
            f,
            image=image(
                f,
                "wide.nrrd",
                np.full((20, 64, 64), -1000, np.int16) + (np.arange(64) * 20).astype(np.int16),
                spacing=(3000.0, 3000.0, 3000.0),
            ),
        ),
        2,
        "on the model's grid.*GB of memory",
    ),
    "a sheared grid": (
        lambda f: good(f, image=nrrd_header(f, "tilted.nrrd", "8 8 8", "(5,0,0) (2,5,0) (0,0,6)")),
        2,
        "sheared",
    ),
    # Masks.
    "a probability map as mask": (
        lambda f: good(
            f,
            mask=image(
                f,
                "p.nrrd",
                np.where(sitk.GetArrayFromImage(sitk.ReadImage(str(f / "kidney.nrrd"))) > 0, 0.91, 0.01).astype(
                    np.float32
                ),
            ),
        ),
        2,
        "fractional values.*--mask-threshold",
    ),
    "the CT as mask": (lambda f: good(f, mask=f / "ct.nii.gz"), 2, "does not look like a label map"),
    "a mask with negative labels": (
        lambda f: good(f, mask=image(f, "neg.nrrd", np.full((20, 64, 64), -1, np.int16))),
        2,
        "does not look like a label map",
    ),
    "a mask label that is not there": (
        lambda f: good(f, mask=f / "labels.nrrd", mask_label=7),
        2,
        "no voxel of label 7.*1, 2",
    ),
    "an empty mask": (
        lambda f: good(f, mask=image(f, "empty.nrrd", np.zeros((20, 64, 64), np.uint8))),
        2,
        "selects no voxel",
    ),
    "a threshold above every value": (lambda f: good(f, mask_threshold=5.0), 2, "selects no voxel"),
    "a mask outside the CT": (lambda f: good(f, mask=far_mask(f)), 2, "no voxel inside the CT"),
    "a threshold that is not a number": (
        lambda f: good(f, mask_threshold="nan"),
        2,
        r"--mask-threshold must be a finite number .*got NaN",
    ),
    "deletion fractions that decrease": (
        lambda f: [*good(f, metrics=True), "--fractions", "0.05", "0"],
        2,
        "at least two increasing fractions between 0 and 1",
    ),
    "out given as a folder with a slash": (
        lambda f: good(f, out=f"{f / 'results'}/"),
        2,
        r"--out .*results/ is a folder \(it ends in '/'\): give a file name",
    ),
    "a missing mask": (lambda f: good(f, mask=f / "none.nrrd"), 2, "does not exist"),
    "a damaged mask": (lambda f: good(f, mask=truncated(f, "cut-mask.nrrd", "kidney.nrrd", 0.3)), 2, "damaged"),
    # Other arguments.
    "unknown class": (lambda f: good(f, target_class="spleen"), 2, "no class 'spleen'"),
    "unknown method": (lambda f: good(f, method="grad-cam-deluxe"), 2, "Unknown CAM method"),
    "CUDA on a machine without": (lambda f: good(f, device="cuda"), 2, "no CUDA GPU"),
    "MPS on a build without": (lambda f: good(f, device="mps"), 2, "MPS"),
    "layers of a card with bad spacing": (
        lambda f: ["layers", "--model", card(f, preprocessing__spacing="2mm")],
        2,
        "preprocessing.spacing must be",
    ),
    "layers of a missing model": (lambda f: ["layers", "--model", f / "none"], 2, "does not exist"),
}


def far_mask(folder: Path) -> Path:
    picture = sitk.GetImageFromArray(np.ones((4, 4, 4), np.uint8))
    picture.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(picture, str(folder / "far.nrrd"))
    return folder / "far.nrrd"


def fingerprints(folder: Path) -> dict:
    """Every file under the case folder (inputs and all) with its content's hash."""
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def prepare(originals: Path, folder: Path):
    shutil.copytree(originals, folder, dirs_exist_ok=True)


def output_paths(arguments: list) -> list[Path]:
    return [Path(arguments[i + 1]) for i, value in enumerate(arguments) if value in OUTPUT_OPTIONS]


def test_there_are_at_least_sixty_kinds_of_bad_input():
    assert len(CASES) >= 60


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_exit_code_no_output_inputs_unchanged(case, originals, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a file that a payload might create would land here
    folder = tmp_path / "case"
    prepare(originals, folder)
    make_arguments, code, message = CASES[case]
    arguments = [str(value) for value in make_arguments(folder)]
    outputs = [path for path in output_paths(arguments) if not path.exists()]
    before = fingerprints(folder)
    bundled_before = fingerprints(BUNDLED)
    capsys.readouterr()
    assert cli_main(arguments) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("seghiresgradcam: error: ") and "Traceback" not in captured.err
    assert re.search(message, lines[0]), lines[0]
    assert "weights_only" not in lines[0], "never suggest loading weights unsafely"
    assert [path for path in outputs if path.exists()] == []
    assert not list(folder.rglob(f"{PARTIAL_PREFIX}*"))
    assert fingerprints(folder) == before and fingerprints(BUNDLED) == bundled_before
    assert not (tmp_path / "should-not-exist").exists()


@pytest.mark.slow
def test_a_failure_while_writing_leaves_no_output(originals, tmp_path, capsys, monkeypatch):
    """The summary cannot be written (say, the disk is full) after the heatmap and the
    prediction have been: neither is left on disk."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    real_stage_text = outputs_module.OutputFiles.stage_text

    def disk_full(self, label, text):
        real_stage_text(self, label, text)
        raise OSError(28, "No space left on device", str(self.outputs[label]))

    monkeypatch.setattr(outputs_module.OutputFiles, "stage_text", disk_full)
    arguments = good(folder, prediction=folder / "out" / "labels.nrrd", summary=folder / "out" / "summary.json")
    assert cli_main([str(value) for value in arguments]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not (folder / "out").exists(), "the folder made for the outputs is removed too"


@pytest.mark.slow
def test_a_run_replaces_an_output_and_says_so_and_clears_a_killed_run_s_leftovers(originals, tmp_path, capsys):
    folder = tmp_path / "case"
    prepare(originals, folder)
    (folder / "out").mkdir()
    (folder / "out" / "heat.nrrd").write_text("an earlier result")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is gone
    leftover = folder / "out" / f"{PARTIAL_PREFIX}{dead.pid}-heat.nrrd"
    leftover.write_text("half a file from a killed run")
    mine = folder / "out" / f"{PARTIAL_PREFIX}{os.getpid()}-other.nrrd"
    mine.write_text("a live run's file")
    assert cli_main([str(value) for value in good(folder)]) == 0
    out = capsys.readouterr().out
    assert f"replaced {folder / 'out' / 'heat.nrrd'}" in out
    assert sitk.ReadImage(str(folder / "out" / "heat.nrrd")).GetSize() == (64, 64, 20)
    assert not leftover.exists() and mine.exists()


@pytest.mark.slow
def test_a_label_map_with_several_labels_is_explained_as_the_target_class_label_and_says_so(
    originals, tmp_path, capsys
):
    """KiTS label files hold kidney, tumour and cyst: every nonzero voxel would explain several
    classes at once, so M is the target class's label (softmax class index = label value)."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd")))
    for target, label in (("kidney", 1), ("tumour", 2)):
        heat = folder / "out" / f"{target}.nrrd"
        assert cli_main([str(v) for v in good(folder, mask=folder / "labels.nrrd", target_class=target, out=heat)]) == 0
        out = capsys.readouterr().out
        assert f"M: label {label} of labels.nrrd, the target class {target}'s index" in out and "--mask-label" in out
        prediction_free = sitk.GetArrayFromImage(sitk.ReadImage(str(heat)))
        assert prediction_free[labels == label].sum() > prediction_free[(labels != label) & (labels > 0)].sum()
    assert cli_main([str(value) for value in good(folder, mask=folder / "labels.nrrd", mask_label=1)]) == 0
    assert "the voxels of label 1 in labels.nrrd" in capsys.readouterr().out


def test_a_label_map_that_does_not_hold_the_target_class_is_refused_with_its_labels(originals, tmp_path, capsys):
    folder = tmp_path / "case"
    prepare(originals, folder)
    assert cli_main([str(value) for value in good(folder, mask=folder / "labels.nrrd", target_class="cyst")]) == 2
    error = capsys.readouterr().err
    assert "holds several labels (1, 2)" in error and "--mask-label N" in error
    assert not (folder / "out" / "heat.nrrd").exists()


@pytest.mark.slow
def test_segment_names_in_a_seg_nrrd_header_choose_the_label(originals, tmp_path, capsys):
    """A Slicer .seg.nrrd names its segments: the name decides, even when the label values
    are not the model's class indices."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    labels = sitk.ReadImage(str(folder / "labels.nrrd"))
    swapped = sitk.GetArrayFromImage(labels)
    swapped = np.select([swapped == 1, swapped == 2], [2, 1], 0).astype(np.uint8)  # tumour 1, kidney 2
    segmentation = sitk.GetImageFromArray(swapped)
    segmentation.CopyInformation(labels)
    for index, (name, value) in enumerate((("Tumor", 1), ("Kidney", 2))):
        segmentation.SetMetaData(f"Segment{index}_Name", name)
        segmentation.SetMetaData(f"Segment{index}_LabelValue", str(value))
    sitk.WriteImage(segmentation, str(folder / "truth.seg.nrrd"))
    assert cli_main([str(v) for v in good(folder, mask=folder / "truth.seg.nrrd", target_class="tumour")]) == 0
    assert "M: the segment 'Tumor' of truth.seg.nrrd, named like the target" in capsys.readouterr().out
    assert cli_main([str(v) for v in good(folder, mask=folder / "truth.seg.nrrd", target_class="cyst")]) == 2
    assert "holds the segments 'Tumor', 'Kidney': choose one with --segment NAME" in capsys.readouterr().err


@pytest.mark.slow
def test_a_probability_map_is_explained_with_a_threshold(originals, tmp_path, capsys):
    folder = tmp_path / "case"
    prepare(originals, folder)
    kidney = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "kidney.nrrd"))) > 0
    probability = image(folder, "p.nrrd", np.where(kidney, 0.91, 0.01).astype(np.float32))
    assert cli_main([str(value) for value in good(folder, mask=probability, mask_threshold=0.5)]) == 0
    assert "at or above 0.5" in capsys.readouterr().out


PEAK_MEMORY = """
def peak_kb():
    # VmHWM belongs to the exec'd interpreter's own address space; ru_maxrss would carry the
    # forking test runner's peak across exec on Linux.
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def test_a_huge_header_is_refused_quickly_and_in_little_memory(tmp_path):
    """A 4 KB gzip NRRD whose header claims 2000 x 2000 x 2000 voxels: refused from the
    header, before any voxel or the network is touched (the process does not even load torch)."""
    header = nrrd_header(tmp_path, "huge.nrrd", "2000 2000 2000")
    arguments = [
        "explain",
        "--image",
        str(header),
        "--target-class",
        "tumour",
        "--from-prediction",
        "--out",
        str(tmp_path / "heat.nrrd"),
        "--progress",
        "none",
    ]
    code = PEAK_MEMORY + (
        "import sys, time\nfrom SegHiResGradCAMLib.cli import main\nstart = time.time()\n"
        f"status = main({arguments!r})\nprint(status, time.time() - start, peak_kb(), 'torch' in sys.modules)\n"
    )
    started = time.time()
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    status, seconds, peak_kb, torch_loaded = completed.stdout.split()
    assert status == "2" and "GB of memory" in completed.stderr
    assert float(seconds) < 5 and time.time() - started < 20
    assert int(peak_kb) < 1024 * 1024  # KB
    assert torch_loaded == "False"


@pytest.mark.slow
def test_listing_layers_into_a_closed_pipe_ends_quietly():
    """``seghiresgradcam layers --json | true``: the reader is gone before anything is
    written, so every write fails; no traceback, no 'Exception ignored' at exit."""
    command = f"{sys.executable} -m SegHiResGradCAMLib.cli layers --json | true; exit ${{PIPESTATUS[0]}}"
    completed = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120)
    assert completed.stderr.strip() == ""
    assert completed.returncode == 1


def test_an_error_after_the_progress_bar_starts_on_a_line_of_its_own(originals, tmp_path, capsys, monkeypatch):
    """An error raised while the bar is drawn (after inference: the explanation refuses)."""
    from SegHiResGradCAMLib.cam import volume_runner

    def refusing(*arguments, **options):
        raise ExplainInputError("the explanation refused this case")

    monkeypatch.setattr(volume_runner, "explain_on_model_grid", refusing)
    folder = tmp_path / "case"
    prepare(originals, folder)
    arguments = [*[str(value) for value in good(folder)][:-2], "--progress", "bar"]
    assert cli_main(arguments) == 2
    err = capsys.readouterr().err
    assert "inference" in err and "\nseghiresgradcam: error: the explanation refused this case" in err
    assert err.rstrip("\n").splitlines()[-1].startswith("seghiresgradcam: error: ")


def inference_must_not_run(*arguments, **options):
    raise AssertionError("inference ran before the refusal")


def off_path_card(folder: Path) -> Path:
    """A DynUNet with deep-supervision heads, which its output (in eval mode) does not use."""
    from monai.networks.nets import DynUNet

    kwargs = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 4,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "deep_supervision": True,
        "deep_supr_num": 1,
    }
    torch.save(DynUNet(**kwargs).state_dict(), folder / "model" / "dyn.pt")
    return card(
        folder,
        architecture="DynUNet",
        kwargs=kwargs,
        weights="dyn.pt",
        sliding_window__size=[16, 32, 32],
        default_layer=None,
    )


# name -> (arguments for the case folder, what the one line says); each refused before inference runs
BEFORE_INFERENCE = {
    "an unknown layer": (lambda f: good(f, layer="no.such.layer"), "no layer named 'no.such.layer'"),
    "a layer off the output path": (
        lambda f: good(f, model=off_path_card(f), layer="deep_supervision_heads.0"),
        "The output does not depend on layer 'deep_supervision_heads.0'",
    ),
    "a mask outside the CT": (lambda f: good(f, mask=far_mask(f)), "no voxel inside the CT"),
}


@pytest.mark.parametrize("case", list(BEFORE_INFERENCE))
def test_what_would_fail_after_inference_is_refused_before_it(case, originals, tmp_path, capsys, monkeypatch):
    from SegHiResGradCAMLib.cam import sliding_window

    monkeypatch.setattr(sliding_window, "sliding_window_logits", inference_must_not_run)
    folder = tmp_path / "case"
    prepare(originals, folder)
    make_arguments, message = BEFORE_INFERENCE[case]
    capsys.readouterr()
    assert cli_main([str(value) for value in make_arguments(folder)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines


def cli_process(arguments: list) -> list[str]:
    return [sys.executable, "-m", "SegHiResGradCAMLib.cli", *[str(value) for value in arguments]]


def leftovers(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.name.startswith(PARTIAL_PREFIX) or path.parent.name == "out"]


@pytest.mark.slow
def test_sigterm_ends_a_run_as_ctrl_c_does_leaving_no_output(originals, tmp_path):
    """kill, timeout, docker stop and SLURM send SIGTERM: the run stops, says so in one line,
    exits 143 and leaves no partial output."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    arguments = [*good(folder, prediction=folder / "out" / "labels.nrrd", metrics=True)[:-2], "--progress", "json"]
    process = subprocess.Popen(cli_process(arguments), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stdout:  # wait until the computation runs
            if json.loads(line)["fraction"] > 0:
                break
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err
    assert err.strip().splitlines() == ["seghiresgradcam: terminated (SIGTERM); no output was written."]
    assert leftovers(folder) == [] and not (folder / "out").exists()


@pytest.mark.slow
def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(originals, tmp_path):
    """Run as a process whose files may not grow past 4 KiB (a write fails as on a full disk):
    ITK's many-line report becomes one line, and nothing is left behind."""
    folder = tmp_path / "case"
    prepare(originals, folder)

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    done = subprocess.run(
        cli_process(good(folder)), capture_output=True, text=True, preexec_fn=small_files, timeout=600
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(r"Cannot write the .*heatmap \(.*MB free on its disk\); nothing was written", lines[0]), lines
    assert leftovers(folder) == [] and not (folder / "out").exists()


def test_a_non_ascii_path_under_a_non_utf8_locale_is_refused_at_once(originals, tmp_path):
    """With LC_ALL=C and Python's UTF-8 mode off, a non-ASCII argument arrives undecodable and
    ITK would abort the process (SIGABRT) after the whole computation: refused first."""
    folder = tmp_path / "case"
    prepare(originals, folder)
    environment = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    started = time.perf_counter()
    done = subprocess.run(
        cli_process(good(folder, out=folder / "Ergebnisse-ü" / "heat.nrrd")),
        capture_output=True,
        env=environment,
        timeout=600,
    )
    err = done.stderr.decode("utf-8", "replace").strip().splitlines()
    assert done.returncode == 2 and len(err) == 1, err
    assert "locale is not UTF-8. Run it with LC_ALL=C.UTF-8" in err[0]
    assert time.perf_counter() - started < 60 and not list(folder.glob("Ergebnisse*"))
