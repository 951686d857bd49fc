"""MONAI bundles: a folder with configs/ and models/model.pt, run as `monai.bundle run` runs it;
its configuration can run code, so it is read only when the user trusts it."""

from . import TRUST, ModelFormat, Package, Packages


def _detects(path):
    from ..monai_bundle import is_bundle

    return is_bundle(path)


def _reads(source):
    from ..monai_bundle import read_bundle

    return read_bundle(source.path, source.trust_bundle)


def _packages(path):
    from ..monai_bundle import CONFIG_NAMES

    json_configuration = (path / "configs" / CONFIG_NAMES[0]).is_file()
    return Packages() if json_configuration else Packages(plain=(Package("PyYAML", "yaml", "6"),))


FORMAT = ModelFormat(
    name="bundle",
    label="MONAI bundle (folder)",
    help="a MONAI bundle folder (with --trust-bundle)",
    picks="folder",
    detects=_detects,
    reads=_reads,
    order=10,
    listed=20,
    options=frozenset({TRUST}),
    packages=_packages,
)
