"""The package as a user installs it: a wheel built from the repository, installed into a
fresh environment, run away from the source tree."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import SimpleITK as sitk

from SegHiResGradCAMLib.demo.phantom import Grid, case_images, make_case

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_installed_wheel_runs_without_the_source_tree(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "source"
    for name in tracked:  # a clean copy: nothing built in the repository, no editable install
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
    )
    wheel = next((tmp_path / "dist").glob("seghiresgradcam-*.whl"))
    environment = tmp_path / "environment"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    python = environment / "bin" / "python"
    # this environment's pip installs into the new one (seeding it with its own pip costs seconds)
    install = ["install", "--quiet", "--no-deps", "--no-index", str(wheel)]
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *install], check=True)
    # The dependencies (torch, MONAI, ...) come from this environment's site-packages, added
    # after the new environment's own: the package itself is the installed wheel's.
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(source)
    work = tmp_path / "work"
    work.mkdir()

    def run(*arguments):
        done = subprocess.run(
            [str(environment / "bin" / "seghiresgradcam"), *map(str, arguments)],
            cwd=work,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = subprocess.run(
        [str(python), "-c", "import SegHiResGradCAMLib; print(SegHiResGradCAMLib.__file__)"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(environment))
    assert "(recommended)" in run("layers") and "seg-hires-grad-cam" in run("methods")
    ct, labels = case_images(make_case(21, Grid.centred((96, 96, 32), (2.0, 2.0, 3.0))))
    sitk.WriteImage(ct, str(work / "ct.nrrd"))
    sitk.WriteImage(sitk.Cast(labels == 2, sitk.sitkUInt8), str(work / "tumour.nrrd"))
    printed = run(
        "explain",
        "--image",
        "ct.nrrd",
        "--target-class",
        "tumour",
        "--mask",
        "tumour.nrrd",
        "--out",
        "heat.nrrd",
        "--progress",
        "none",
    )
    assert "heatmap written to heat.nrrd" in printed and (work / "heat.nrrd").is_file()
