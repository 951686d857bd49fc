"""nnU-Net v2 results folders (DatasetXXX_Name/<Trainer>__<Plans>__<configuration>), explained in
nnU-Net's own computation; the folds to ensemble are an option."""

from . import FOLDS, ModelFormat, Package, Packages

# nnU-Net's plain dependencies (the `nnunet` extra of pyproject.toml) ...
PLAIN = tuple(
    Package(distribution, module)
    for distribution, module in (
        ("threadpoolctl", "threadpoolctl"),
        ("blosc2", "blosc2"),
        ("scikit-image", "skimage"),
        ("scikit-learn", "sklearn"),
        ("pandas", "pandas"),
        ("nibabel", "nibabel"),
        ("einops", "einops"),
        ("tqdm", "tqdm"),
        ("seaborn", "seaborn"),
        ("connected-components-3d", "cc3d"),
    )
)
# ... and nnU-Net's own packages, installed without their dependencies (which would replace
# PyTorch), each at least the lowest version whose API the pipeline uses
# (requirements-nnunet.txt pins the tested ones). An installed nnU-Net at or above these is
# left alone: TotalSegmentator and SlicerNNUNet share Slicer's Python and may rely on it.
OWN = (
    Package("nnunetv2", "nnunetv2", "2.5"),  # get_network_from_plans, PlansManager
    Package("dynamic-network-architectures", "dynamic_network_architectures", "0.3.1"),
    Package("batchgenerators", "batchgenerators", "0.25"),
    Package("batchgeneratorsv2", "batchgeneratorsv2", "0.2"),
    Package("acvl-utils", "acvl_utils", "0.2"),
)
# The SlicerNNUNet extension's installer where that extension is installed, else pip --no-deps.
PACKAGES = Packages(plain=PLAIN, without_dependencies=OWN, installer="nnunet")


def _detects(path):
    from ..nnunet_folder import is_nnunet_folder

    return is_nnunet_folder(path)


def _reads(source):
    from ..nnunet_folder import read_nnunet_folder

    return read_nnunet_folder(source.path, list(source.folds) if source.folds else None)


FORMAT = ModelFormat(
    name="nnunet",
    label="nnU-Net results (folder)",
    help="an nnU-Net v2 results folder (DatasetXXX_Name/<Trainer>__<Plans>__<configuration>)",
    picks="folder",
    detects=_detects,
    reads=_reads,
    order=20,
    listed=30,
    options=frozenset({FOLDS}),
    packages=lambda path: PACKAGES,
)
