"""Which Python packages the background computation needs in Slicer's Python, which are
missing or too old, and in which order and with which arguments they are installed.

Qt-free and import-free: versions are read from the installed packages' metadata
(``importlib.metadata``), so checking never imports torch into the Slicer process. The
widget asks the user once (``describe``) and then runs the plan (``install``) with
Slicer's installers: PyTorch through the PyTorch extension (``PyTorchUtils``, which picks
the CUDA build for the machine's driver), everything else with ``slicer.util.pip_install``.
nnU-Net's own packages go in without their declared dependencies, which would replace
PyTorch, and only when missing or older than the pipeline needs (requirements-nnunet.txt
pins the tested versions; a test keeps the two lists in step).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..models.formats import NOTHING_MORE, ModelSource, Package, Packages, registered_formats

TORCH = "torch"
# A package to have installed (the formats declare theirs with the same type).
Requirement = Package


def declared_minimums() -> dict[str, str]:
    """Distribution -> lowest version, from the package's requirements.txt (pyproject.toml
    reads the same file, so the two never disagree)."""
    lines = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text(encoding="utf-8").splitlines()
    found = (re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*", line) for line in lines)
    return {match[1]: match[2] for match in found if match}


# What the explanation pipeline imports (the package's dependencies, minus matplotlib, which
# only the demo's figures use).
CORE = tuple(
    Requirement(name, module, declared_minimums()[name])
    for name, module in (
        (TORCH, "torch"),
        ("numpy", "numpy"),
        ("monai", "monai"),
        ("SimpleITK", "SimpleITK"),
        ("scipy", "scipy"),
    )
)
# nnU-Net results folders: nnU-Net's plain dependencies and its own packages, as the format declares them.
NNUNET = next(model_format for model_format in registered_formats() if model_format.name == "nnunet").packages(Path())
NNUNET_PLAIN, NNUNET_OWN = NNUNET.plain, NNUNET.without_dependencies
NNUNET_INSTALLER = NNUNET.installer  # SlicerNNUNet's InstallLogic where that extension is installed, else pip --no-deps
UNKNOWN_VERSION = "installed"  # importable, but without package metadata (built into Slicer)


@dataclass(frozen=True)
class InstallStep:
    installer: str  # "pytorch" (the PyTorch extension's installTorch) or "pip" (slicer.util.pip_install)
    arguments: tuple[str, ...]  # pip's arguments, or torch's version requirement for installTorch
    reasons: tuple[str, ...]  # what is missing or too old, for the dialog


def installed_version(requirement: Requirement) -> str | None:
    """The installed version, UNKNOWN_VERSION for a module that is importable but has no
    metadata, or None when missing; nothing is imported."""
    try:
        return importlib.metadata.version(requirement.distribution)
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_VERSION if importlib.util.find_spec(requirement.module) is not None else None


def release(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.13.0+cpu' -> (2, 13, 0), '1.6rc1' -> (1, 6)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def problem(requirement: Requirement, version: str | None) -> str | None:
    """Why the requirement is not met, or None when it is."""
    if version is None:
        return f"{requirement.distribution} is not installed"
    if version == UNKNOWN_VERSION or requirement.minimum is None:
        return None
    if release(version) < release(requirement.minimum):
        return f"{requirement.distribution} {version} is older than {requirement.minimum}"
    return None


def plan_installs(
    versions: Callable[[Requirement], str | None] | None = None, extra: Packages = NOTHING_MORE
) -> list[InstallStep]:
    """What to install, in order: PyTorch first (the other packages' installers must find it
    and not bring their own), then the plain packages (the core ones and a format's
    ``extra`` ones) in one pip call, then the format's packages that go in without their
    dependencies (nnU-Net's own), through its installer. Empty when everything is there."""
    versions = versions or installed_version
    plan = []
    torch, *plain = CORE
    torch_problem = problem(torch, versions(torch))
    if torch_problem:
        plan.append(InstallStep("pytorch", (f">={torch.minimum}",), (torch_problem,)))
    wanted = [*plain, *extra.plain]
    problems = [(requirement, problem(requirement, versions(requirement))) for requirement in wanted]
    missing = [(requirement, reason) for requirement, reason in problems if reason]
    if missing:
        plan.append(InstallStep("pip", tuple(r.specifier for r, _ in missing), tuple(reason for _, reason in missing)))
    checked = [(requirement, problem(requirement, versions(requirement))) for requirement in extra.without_dependencies]
    outdated = [(requirement, reason) for requirement, reason in checked if reason]
    if outdated:
        arguments = ("--no-deps", *(requirement.specifier for requirement, _ in outdated))
        plan.append(InstallStep(extra.installer, arguments, tuple(reason for _, reason in outdated)))
    return plan


def plan_for_model(
    model: ModelSource | Path | None, versions: Callable[[Requirement], str | None] | None = None
) -> list[InstallStep]:
    """The install plan for explaining ``model`` (any format; None: the bundled model): the
    core packages and what the model's format needs (nnU-Net's packages for its results
    folders, PyYAML for a YAML bundle)."""
    source = ModelSource.of(model)
    extra = source.format.packages(source.path) if source.path is not None else NOTHING_MORE
    return plan_installs(versions, extra)


def missing_summary(plan: list[InstallStep]) -> str:
    """The packages a plan installs, by name, for a one-line message ("" for an empty plan)."""
    names = []
    for step in plan:
        if step.installer == "pytorch":
            names.append("PyTorch")
        else:
            names += [re.split(r"[<>=!~ ]", argument)[0] for argument in step.arguments if not argument.startswith("-")]
    return ", ".join(names)


def describe(plan: list[InstallStep]) -> str:
    """The confirmation dialog's text: what is missing and exactly what will be installed."""
    lines = ["Seg-HiRes-Grad CAM runs the network with Python packages that are not installed yet:", ""]
    lines += [f"  - {reason}" for step in plan for reason in step.reasons]
    lines += ["", "These will be installed (this can take several minutes and needs the internet):", ""]
    for step in plan:
        if step.installer == "pytorch":
            lines.append(f"  - PyTorch {step.arguments[0]}, by the PyTorch extension (it chooses the GPU build)")
        else:
            lines.append(f"  - pip install {' '.join(step.arguments)}")
    lines += ["", "Install now? If you cancel, nothing is changed."]
    return "\n".join(lines)


def install(
    plan: list[InstallStep],
    confirm: Callable[[str], bool],
    install_torch: Callable[[str], object],
    pip_install: Callable[[list[str]], object],
    progress: Callable[[str], object] | None = None,
    install_nnunet: Callable[[list[str]], object] | None = None,
) -> bool:
    """Asks once, then runs the plan in order; False (and nothing installed) when declined.
    ``install_torch(version_requirement)`` returns a falsy value when PyTorch was not
    installed, which stops the plan with an error."""
    if not plan:
        return True
    if not confirm(describe(plan)):
        return False
    for step in plan:
        if progress is not None:
            progress(f"Installing {missing_summary([step])} ... this can take several minutes.")
        if step.installer == "pytorch":
            if not install_torch(step.arguments[0]):
                raise RuntimeError("PyTorch was not installed; install it with the PyTorch Utils module, then retry.")
        elif step.installer == NNUNET_INSTALLER and install_nnunet is not None:
            install_nnunet(list(step.arguments))
        else:
            pip_install(list(step.arguments))
    return True
