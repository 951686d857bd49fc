"""Where the lattice inside M comes from: the map's period-2 pattern on the layer grid.

Seg-HiRes-Grad CAM maps of the bundled network show a faint checkerboard inside M. This
script measures it at each stage of its making, on the demo case (the network's tumour
prediction as M), as the ratio of the mean over even layer voxels to the mean over odd ones
along each axis, inside M eroded by two layer voxels (1.0: no lattice):

- A summed over channels, and |G| summed over channels (G = dT/dA), on the layer grid;
- S = sum_k G_k A_k on the layer grid (the map before ReLU and upsampling);
- the displayed heatmap on the model's grid, at the same parity of the layer grid.

If S already has the pattern and the heatmap keeps it, the lattice belongs to the layer,
not to the display.

    .venv/bin/python bench/bench_lattice.py [--seed 7]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from SegHiResGradCAMLib.cam.volume_runner import explain_on_model_grid
from SegHiResGradCAMLib.demo.phantom import case_images, make_case
from SegHiResGradCAMLib.models.formats import read_model_card
from SegHiResGradCAMLib.volumes.volume_io import reorient

TUMOUR = 2
CROP = (32, 96, 96)  # a window of the network, centred on M (a multiple of the network's strides)


def parity_ratios(values: np.ndarray, inside: np.ndarray, period: int = 1) -> list[float]:
    """Mean over even / mean over odd positions along each axis, inside ``inside``;
    ``period`` model voxels per layer voxel (parity of the layer grid on a finer grid)."""
    ratios = []
    for axis in range(values.ndim):
        parity = (np.indices(values.shape)[axis] // period) % 2
        ratios.append(float(values[inside & (parity == 0)].mean() / values[inside & (parity == 1)].mean()))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    arguments = parser.parse_args()
    card = read_model_card(None).resolved()
    ct, _ = case_images(make_case(arguments.seed))
    model_input = card.prepare_input(reorient(ct, "IPL"), None)
    network = card.build_network().eval()
    with torch.no_grad():
        from SegHiResGradCAMLib.cam.sliding_window import sliding_window_logits

        logits = sliding_window_logits(network, model_input.array, card.tiling)
    mask = (logits.argmax(0) == TUMOUR).numpy()
    centre = np.argwhere(mask).mean(0).astype(int)
    box = tuple(slice(max(0, c - s // 2), max(0, c - s // 2) + s) for c, s in zip(centre, CROP, strict=True))
    image, crop_mask = model_input.array[(slice(None), *box)], mask[box]
    heatmap, cam = explain_on_model_grid(
        network, card, image, TUMOUR, crop_mask, "seg-hires-grad-cam", card.default_layer, torch.device("cpu")
    )
    captured = {}
    layer = dict(network.named_modules())[cam.layer]
    hook = layer.register_forward_hook(lambda module, inputs, output: captured.setdefault("A", output))
    output = network(torch.from_numpy(image[None]).float())
    hook.remove()
    target = output[0, TUMOUR][torch.from_numpy(crop_mask)].sum()
    (gradient,) = torch.autograd.grad(target, captured["A"])
    activations, gradient = captured["A"][0].detach().numpy(), gradient[0].numpy()
    stride = crop_mask.shape[0] // activations.shape[1]
    on_layer = ndimage.zoom(crop_mask.astype(float), 1 / stride, order=0) > 0.5
    inside = ndimage.binary_erosion(on_layer, iterations=2)
    inside_model = ndimage.binary_erosion(crop_mask, iterations=2 * stride)
    rows = [
        ("A summed over channels", parity_ratios(activations.sum(0), inside)),
        ("|G| summed over channels", parity_ratios(np.abs(gradient).sum(0), inside)),
        ("S = sum_k G_k A_k (layer grid)", parity_ratios((gradient * activations).sum(0), inside)),
        ("S from the engine (layer grid)", parity_ratios(np.asarray(cam.raw), inside)),
        ("heatmap (model grid)", parity_ratios(heatmap, inside_model, period=stride)),
    ]
    print(
        f"layer {cam.layer}: {activations.shape[0]} channels on a {'x'.join(map(str, activations.shape[1:]))} "
        f"grid, {stride} model voxels per layer voxel; M: {int(crop_mask.sum())} voxels"
    )
    print(f"{'even / odd layer voxels':34s} {'z':>7s} {'y':>7s} {'x':>7s}")
    for name, ratios in rows:
        print(f"{name:34s} " + " ".join(f"{ratio:7.3f}" for ratio in ratios))


if __name__ == "__main__":
    main()
