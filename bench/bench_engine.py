"""CAM cost against plain inference for a MONAI 3D U-Net on the CPU.

Prints, for each volume size and method, CAM time / no-grad forward time and peak memory
/ forward peak memory. Times are CPU (process) times of the two computations interleaved
in one process, median of several pairs (see bench/measure.py); memory is the peak RSS of
separate processes, each running one computation, counted above the RSS the process had
just before it (model and input loaded), with the whole-process peaks beside it.

    .venv/bin/python bench/bench_engine.py [--sizes 96 160] [--pairs 5]
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from measure import interleaved_ratio, peak_rss_in_fresh_process, report_peak_rss

CHANNELS = (16, 32, 64, 128, 256)


def build_case(size: int):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    model = UNet(3, 1, 3, channels=CHANNELS, strides=(2, 2, 2, 2), num_res_units=2).eval()
    image = torch.randn(1, size, size, size)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size)] * 3, indexing="ij"))
    tumour = ((grid - size * 0.6) ** 2).sum(0) < (size * 0.15) ** 2
    return model, image, tumour.numpy()


def forward(model, image):
    with torch.no_grad():
        model(image[None])


def cam(model, image, mask, method, layer):
    from SegHiResGradCAMLib import explain

    explain(model, image, target_class=2, mask=mask, layer=layer, method=method)


def computation(name: str, layer: str):
    if name == "forward":
        return lambda model, image, mask: forward(model, image)
    return lambda model, image, mask: cam(model, image, mask, name, layer)


def memory_probe(size: int, name: str, layer: str) -> None:
    model, image, mask = build_case(size)
    forward(model, torch.randn(1, 32, 32, 32))  # load kernels before the baseline reading
    report_peak_rss(lambda: computation(name, layer)(model, image, mask))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 160])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["seg-hires-grad-cam", "seg-grad-cam"])
    parser.add_argument(
        "--layer",
        default="last-before-head",
        help="target layer or layer rule (default: the layer before the head, as in docs/methods.md)",
    )
    parser.add_argument("--memory-probe", nargs=3, metavar=("SIZE", "COMPUTATION", "LAYER"))
    arguments = parser.parse_args()
    if arguments.memory_probe:
        size, name, layer = arguments.memory_probe
        memory_probe(int(size), name, layer)
        return

    from SegHiResGradCAMLib import list_layers
    from SegHiResGradCAMLib.cam.model_inspection import LAYER_RULES, layer_by_rule

    threads = torch.get_num_threads()
    print(f"MONAI UNet 3D, channels {CHANNELS}, 3 classes, CPU, {threads} threads, torch {torch.__version__}")
    for size in arguments.sizes:
        model, image, mask = build_case(size)
        layers = list_layers(model, image.shape)
        rule = arguments.layer in LAYER_RULES
        layer = layer_by_rule(model, image.shape, arguments.layer) if rule else arguments.layer
        shape = next(info.shape for info in layers if info.name == layer)
        print(f"\n{size}^3 voxels, target layer {layer} {shape}, M = {int(mask.sum())} voxels")
        forward_memory = peak_rss_in_fresh_process(__file__, str(size), "forward", layer)
        print(
            f"  forward (no grad):      peak RSS {forward_memory['peak_mib']:7.0f} MiB, "
            f"+{forward_memory['added_mib']:6.0f} MiB over the loaded model"
        )
        for method in arguments.methods:
            run_cam = computation(method, layer)
            run_cam(model, image, mask)  # warm-up
            ratio, ratios, forward_time = interleaved_ratio(
                partial(forward, model, image), partial(run_cam, model, image, mask), arguments.pairs
            )
            memory = peak_rss_in_fresh_process(__file__, str(size), method, layer)
            pairs = " ".join(f"{value:.2f}" for value in ratios)
            print(
                f"  {method:22s}  time {ratio:4.2f}x forward "
                f"(pairs: {pairs}; forward {forward_time:.1f} CPU-s), "
                f"memory {memory['added_mib'] / forward_memory['added_mib']:4.2f}x forward "
                f"(peak RSS {memory['peak_mib']:.0f} MiB = {memory['peak_mib'] / forward_memory['peak_mib']:.2f}x)"
            )


if __name__ == "__main__":
    main()
