"""Sliding-window CAMs of a whole CT volume against plain sliding-window inference.

A synthetic abdomen-like CT (default 256 x 256 x 160; add 512 512 128 with --shapes) and
a MONAI 3D UNet (channels 16..256, 3 classes), windows 96^3, overlap 0.25, Gaussian
blending. Prints, in one run: MONAI's sliding_window_inference CPU time and peak RSS;
Seg-HiRes-Grad CAM and Seg-Grad CAM of a tumour segment as ratios to it (CPU time,
interleaved pairs, median; peak RSS of separate fresh processes); and the peak RSS of a
whole-volume (single pass, no windows) CAM for contrast.

    .venv/bin/python bench/bench_sliding_window.py [--shapes 256 256 160 [512 512 128]] [--pairs 3]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from measure import interleaved_ratio, peak_rss_in_fresh_process, report_peak_rss

CHANNELS = (16, 32, 64, 128, 256)
WINDOW = (96, 96, 96)
OVERLAP = 0.25


def synthetic_ct(shape: tuple[int, int, int]):
    """Normalised intensities of a body with two kidneys and a tumour, and the tumour mask."""
    generator = torch.Generator().manual_seed(0)
    axes = [torch.linspace(-1, 1, size) for size in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    kidneys = ((x.abs() - 0.4) / 0.15) ** 2 + ((y - 0.25) / 0.12) ** 2 + (z / 0.5) ** 2 < 1
    tumour = ((x - 0.5) / 0.12) ** 2 + ((y - 0.3) / 0.12) ** 2 + ((z - 0.2) / 0.18) ** 2 < 1
    image = torch.where(body, 0.05, -1.0) + 0.35 * kidneys + 0.2 * tumour
    image += 0.05 * torch.randn(shape, generator=generator)
    return image[None].float(), tumour


def build_model():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(3, 1, 3, channels=CHANNELS, strides=(2, 2, 2, 2), num_res_units=2).eval()


def inference(model, image):
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        sliding_window_inference(image[None], WINDOW, 1, model, overlap=OVERLAP, mode="gaussian")


def cam(model, image, mask, method, window=WINDOW):
    from SegHiResGradCAMLib import Tiling, explain

    # at the layer before the head, where docs/methods.md's table was measured
    tiling = Tiling.monai(window, OVERLAP)
    explain(model, image, 2, mask=mask, method=method, layer="last-before-head", window=tiling)


def computation(name: str):
    if name == "inference":
        return lambda model, image, mask: inference(model, image)
    if name == "whole-volume":
        return lambda model, image, mask: cam(model, image, mask, "seg-hires-grad-cam", window=None)
    return lambda model, image, mask: cam(model, image, mask, name)


def memory_probe(shape: str, name: str) -> None:
    model = build_model()
    image, mask = synthetic_ct(tuple(int(size) for size in shape.split("x")))
    with torch.no_grad():
        model(torch.zeros(1, 1, 32, 32, 32))  # load kernels before the baseline reading
    report_peak_rss(lambda: computation(name)(model, image, mask))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", type=int, nargs="+", default=[256, 256, 160])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--memory-probe", nargs=2, metavar=("SHAPE", "COMPUTATION"))
    parser.add_argument("--skip-whole-volume", action="store_true", help="skip the single-pass memory contrast")
    arguments = parser.parse_args()
    if arguments.memory_probe:
        memory_probe(*arguments.memory_probe)
        return

    from SegHiResGradCAMLib.cam.sliding_window import window_grid

    threads = torch.get_num_threads()
    print(f"MONAI UNet 3D {CHANNELS}, windows {WINDOW}, overlap {OVERLAP}, gaussian, CPU, {threads} threads")
    model = build_model()
    for first in range(0, len(arguments.shapes), 3):
        shape = tuple(arguments.shapes[first : first + 3])
        label = "x".join(map(str, shape))
        image, mask = synthetic_ct(shape)
        grid = window_grid(shape, WINDOW, OVERLAP)
        print(f"\n{label} voxels, {len(grid.starts)} windows, tumour M = {int(mask.sum())} voxels")
        base = peak_rss_in_fresh_process(__file__, label, "inference")
        for method in ("seg-hires-grad-cam", "seg-grad-cam"):
            run_cam = computation(method)
            ratio, ratios, inference_time = interleaved_ratio(
                partial(inference, model, image), partial(run_cam, model, image, mask), arguments.pairs
            )
            memory = peak_rss_in_fresh_process(__file__, label, method)
            print(
                f"  {method:20s} time {ratio:4.2f}x inference (pairs {' '.join(f'{r:.2f}' for r in ratios)}), "
                f"peak RSS {memory['peak_mib']:6.0f} MiB = {memory['peak_mib'] / base['peak_mib']:.2f}x inference"
            )
        print(f"  inference (MONAI)    {inference_time:.1f} CPU-s, peak RSS {base['peak_mib']:.0f} MiB")
        if not arguments.skip_whole_volume:
            whole = peak_rss_in_fresh_process(__file__, label, "whole-volume")
            print(
                f"  whole-volume CAM, one pass without windows: peak RSS {whole['peak_mib']:.0f} MiB "
                f"= {whole['peak_mib'] / base['peak_mib']:.1f}x inference"
            )


if __name__ == "__main__":
    main()
