"""The installed ``seghiresgradcam`` command, run as a user would."""

import shutil
import subprocess
from pathlib import Path

import numpy as np

COMMAND = shutil.which("seghiresgradcam") or str(Path(__file__).resolve().parents[1] / ".venv/bin/seghiresgradcam")


def test_methods_lists_both_registered_methods():
    listing = subprocess.run([COMMAND, "methods"], capture_output=True, text=True, check=True).stdout
    assert "seg-hires-grad-cam" in listing and "seg-grad-cam" in listing


def test_demo_writes_a_figure_and_heatmaps_concentrated_on_the_tumour(tmp_path):
    out = tmp_path / "demo"
    run = subprocess.run([COMMAND, "demo", "--out", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "heat inside the segment" in run.stdout
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for method in ("seg-grad-cam", "seg-hires-grad-cam"):
        heatmap = np.load(out / f"{method}.npy")
        assert heatmap.shape == (96, 96)
        assert heatmap.min() >= 0 and heatmap.max() > 0


def test_unknown_command_fails_with_usage():
    failed = subprocess.run([COMMAND, "frobnicate"], capture_output=True, text=True)
    assert failed.returncode == 2
    assert "invalid choice" in failed.stderr
