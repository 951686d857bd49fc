"""A synthetic, KiTS-like contrast-enhanced abdominal CT with kidney, tumour and cyst labels.

Deterministic by seed. Anatomy is drawn in patient coordinates (LPS, millimetres, origin
at the centre of the abdomen at kidney level) and sampled on any axis-aligned grid, so that
training data can be made directly at the model's spacing and demo cases at KiTS spacing.
HU values and sizes are those of contrast-enhanced (late arterial) KiTS CTs, set below.
Labels: 0 background, 1 kidney, 2 tumour, 3 cyst.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

LABELS = {0: "background", 1: "kidney", 2: "tumour", 3: "cyst"}


@dataclass(frozen=True)
class Grid:
    """An axis-aligned LPS grid: ``shape`` and ``spacing`` in (x, y, z) order, ``origin``
    the LPS position (mm) of voxel (0, 0, 0). Arrays on it are indexed [z, y, x] like
    SimpleITK's."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @staticmethod
    def centred(shape, spacing, centre=(0.0, 0.0, 0.0)) -> Grid:
        origin = tuple(c - (n - 1) * s / 2 for n, s, c in zip(shape, spacing, centre, strict=True))
        return Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), origin)

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """LPS coordinates along x, y, z, shaped for broadcasting over [z, y, x]."""
        x, y, z = (o + s * np.arange(n) for o, s, n in zip(self.origin, self.spacing, self.shape, strict=True))
        return x[None, None, :], y[None, :, None], z[:, None, None]


@dataclass(frozen=True)
class Case:
    hu: np.ndarray  # float32 [z, y, x]
    labels: np.ndarray  # uint8 [z, y, x]
    grid: Grid
    seed: int
    tumours: int
    cysts: int


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray  # columns: the ellipsoid's axes in LPS

    def inside(self, grid: Grid, scale: float = 1.0) -> np.ndarray:
        """Boolean [z, y, x] mask, computed only inside the bounding box."""
        mask = np.zeros(grid.shape[::-1], dtype=bool)
        extent = np.abs(self.rotation) @ (self.semi_axes * scale)
        low = np.floor((self.centre - extent - np.array(grid.origin)) / grid.spacing).astype(int)
        high = np.ceil((self.centre + extent - np.array(grid.origin)) / grid.spacing).astype(int) + 1
        low = np.clip(low, 0, grid.shape)
        high = np.clip(high, 0, grid.shape)
        if np.any(high <= low):
            return mask
        box = tuple(slice(lo, hi) for lo, hi in zip(low[::-1], high[::-1], strict=True))
        x, y, z = grid.axes()
        offsets = (
            x[..., low[0] : high[0]] - self.centre[0],
            y[:, low[1] : high[1]] - self.centre[1],
            z[low[2] : high[2]] - self.centre[2],
        )
        distance = 0
        for axis in range(3):
            along = sum(offsets[d] * self.rotation[d, axis] for d in range(3))
            distance = distance + (along / (self.semi_axes[axis] * scale)) ** 2
        mask[box] = distance <= 1
        return mask


def _rotation(rng: np.random.Generator, max_degrees: float) -> np.ndarray:
    angles = np.deg2rad(rng.uniform(-max_degrees, max_degrees, 3))
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


def _tumour_diameter(rng: np.random.Generator) -> float:
    """Equivalent diameter (mm), log-normal with KiTS's median 39 mm and p90 92 mm."""
    return float(np.clip(np.exp(rng.normal(np.log(39.0), np.log(92.0 / 39.0) / 1.2816)), 15.0, 100.0))


def _smooth_texture(rng, shape, sigma_voxels) -> np.ndarray:
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), sigma_voxels)
    return texture / max(float(texture.std()), 1e-6)


def make_case(seed: int, grid: Grid | None = None) -> Case:
    """One synthetic case on ``grid`` (default: 512 x 512 in-plane at 0.78 mm, 3 mm slices
    covering 180 mm around the kidneys)."""
    grid = grid or Grid.centred((512, 512, 60), (0.78, 0.78, 3.0))
    rng = np.random.default_rng(seed)  # the anatomy: the same patient on every grid
    texture_rng = np.random.default_rng([seed, 1])  # textures and noise, whose draws depend on the grid
    x, y, z = grid.axes()
    shape = grid.shape[::-1]
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    sigma = [2.0 / s for s in grid.spacing[::-1]]  # 2 mm texture correlation, in voxels

    # Body wall: skin and subcutaneous fat, abdominal muscle, visceral fat.
    half_width, half_depth = rng.uniform(140, 170), rng.uniform(100, 125)
    fat_thickness = rng.uniform(10, 30)
    radius = np.sqrt((x / half_width) ** 2 + (y / half_depth) ** 2)
    body = np.broadcast_to(radius < 1, shape)
    hu[body] = -100
    wall = (radius < 1 - fat_thickness / half_depth) & (radius >= 1 - (fat_thickness + 12) / half_depth)
    hu[np.broadcast_to(wall, shape)] = 52
    fat_texture = 15 * _smooth_texture(texture_rng, shape, sigma)
    hu[body] += fat_texture[body]

    def paint(region: np.ndarray, value: float, spread: float = 0.0) -> None:
        hu[region] = value + (spread * fat_texture[region] / 15 if spread else 0)

    def tube(cx, cy, r) -> np.ndarray:
        return np.broadcast_to((x - cx) ** 2 + (y - cy) ** 2 < r**2, shape)

    # Spine (cortical shell, trabecular body, canal), psoas and paraspinal muscles.
    spine_y = half_depth * 0.55
    paint(tube(0, spine_y, 20), rng.uniform(800, 1100))
    paint(tube(0, spine_y, 16), rng.uniform(180, 260), 30)
    disc_phase = rng.uniform(0, 32)
    paint(tube(0, spine_y, 20) & np.broadcast_to(((z - disc_phase) % 32) < 8, shape), 85, 5)  # discs
    paint(tube(0, spine_y + 30, 8), 20)
    for side in (-1, 1):
        paint(tube(side * 38, spine_y - 5, 16), 50, 5)
        paint(tube(side * 30, spine_y + 40, 18), 55, 5)
    # Aorta (left of midline, in front of the spine) and inferior vena cava (right).
    paint(tube(12, spine_y - 32, 12), rng.uniform(220, 330), 10)
    paint(tube(-22, spine_y - 30, 11), rng.uniform(140, 180), 8)

    # Liver (patient right is -x in LPS), spleen (left), bowel with gas.
    liver = Ellipsoid(np.array([-75.0, -5, rng.uniform(85, 110)]), np.array([85.0, 80, 75]), _rotation(rng, 8))
    paint(liver.inside(grid) & body, rng.uniform(90, 110), 6)
    spleen = Ellipsoid(np.array([85.0, 40, 70]), np.array([45.0, 32, 55]), _rotation(rng, 10))
    paint(spleen.inside(grid) & body, rng.uniform(110, 140), 6)
    for _ in range(rng.integers(5, 9)):
        centre = np.array([rng.uniform(-70, 70), rng.uniform(-80, -20), rng.uniform(-80, 60)])
        loop = Ellipsoid(centre, rng.uniform([12, 10, 15], [28, 20, 35]), _rotation(rng, 40))
        paint(loop.inside(grid) & body, rng.uniform(20, 45), 8)
        paint(loop.inside(grid, 0.5) & body, -1000)

    # Kidneys: cortex, medulla, sinus fat at the hilum.
    kidneys = []
    cortex_hu, medulla_hu = rng.uniform(180, 250), rng.uniform(80, 140)
    for side in (-1, 1):  # right (-x), left (+x)
        centre = np.array([side * rng.uniform(65, 80), spine_y - rng.uniform(0, 12), rng.uniform(-15, 15)])
        semi_axes = np.array([rng.uniform(27, 34), rng.uniform(22, 28), rng.uniform(50, 60)])
        tilt = _rotation(rng, 15)
        kidney = Ellipsoid(centre, semi_axes, tilt)
        inside = kidney.inside(grid) & body
        paint(inside, cortex_hu, 10)
        paint(kidney.inside(grid, 0.72) & body, medulla_hu, 10)
        hilum = Ellipsoid(centre - np.array([side * semi_axes[0] * 0.55, 0, 0]), semi_axes * [0.35, 0.35, 0.4], tilt)
        paint(hilum.inside(grid) & inside, -80, 10)
        labels[inside] = 1
        kidneys.append(kidney)

    # Cysts in about half the cases, then one to three tumours.
    cysts = int(rng.integers(1, 3)) if rng.random() < 0.5 else 0
    for _ in range(cysts):
        kidney = kidneys[rng.integers(2)]
        centre = kidney.centre + kidney.rotation @ (kidney.semi_axes * rng.uniform(-0.6, 0.6, 3))
        cyst = Ellipsoid(centre, np.full(3, rng.uniform(5, 18)), np.eye(3))
        region = cyst.inside(grid) & body
        paint(region, rng.uniform(0, 20), 3)
        labels[region] = 3
    tumours = int(rng.choice([1, 1, 1, 2, 3]))
    for _ in range(tumours):
        kidney = kidneys[rng.integers(2)]
        direction = rng.normal(0, 1, 3)
        direction /= np.linalg.norm(direction)
        # Renal cell carcinomas arise from the cortex and mostly bulge out of the kidney.
        centre = kidney.centre + kidney.rotation @ (kidney.semi_axes * direction * rng.uniform(0.7, 1.05))
        radius = _tumour_diameter(rng) / 2
        tumour = Ellipsoid(centre, radius * rng.uniform(0.85, 1.15, 3), _rotation(rng, 30))
        region = tumour.inside(grid) & body
        if rng.random() < 0.75:  # clear-cell: heterogeneous enhancement, necrotic core
            texture = _smooth_texture(texture_rng, shape, [2 * s for s in sigma])
            hu[region] = rng.uniform(120, 160) + 25 * texture[region]
            paint(tumour.inside(grid, rng.uniform(0.3, 0.6)) & region, rng.uniform(10, 40), 8)
        else:  # papillary: low, homogeneous enhancement
            paint(region, rng.uniform(40, 90), 6)
        labels[region] = 2

    # Partial-volume blur and CT noise.
    hu = ndimage.gaussian_filter(hu, [0.7 / s for s in grid.spacing[::-1]])
    hu += texture_rng.normal(0, rng.uniform(10, 20), shape).astype(np.float32)
    return Case(hu.astype(np.float32), labels, grid, seed, tumours, cysts)


def case_images(case: Case) -> tuple[sitk.Image, sitk.Image]:
    """The phantom's CT (int16 HU) and label map as LPS-oriented images."""
    images = []
    for array in (np.round(case.hu).astype(np.int16), case.labels.astype(np.uint8)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(case.grid.spacing)
        image.SetOrigin(case.grid.origin)
        images.append(image)
    return images[0], images[1]


def write_cohort(folder, seeds, layout: str = "kits", grid: Grid | None = None):
    """Synthetic cases as a cohort on disk, in the KiTS layout (case_XXXXX/imaging.nii.gz and
    segmentation.nii.gz), the nnU-Net raw layout (imagesTs/, labelsTs/) or a CSV list; for
    tests, benchmarks and trying the cohort command. Returns what to pass as --cases."""
    from pathlib import Path

    folder = Path(folder)
    lines = ["case,image,truth"]
    for seed in seeds:
        ct, labels = case_images(make_case(seed, grid))
        name = f"case_{seed:05d}"
        if layout == "kits":
            image, truth = folder / name / "imaging.nii.gz", folder / name / "segmentation.nii.gz"
        elif layout == "nnunet":
            image, truth = folder / "imagesTs" / f"{name}_0000.nii.gz", folder / "labelsTs" / f"{name}.nii.gz"
        else:
            image, truth = folder / "images" / f"{name}.nii.gz", folder / "truth" / f"{name}.nii.gz"
            lines.append(f"{name},images/{name}.nii.gz,truth/{name}.nii.gz")
        for path, picture in ((image, ct), (truth, labels)):
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(picture, str(path))
    if layout == "csv":
        (folder / "cases.csv").write_text("\n".join(lines) + "\n")
        return folder / "cases.csv"
    return folder
