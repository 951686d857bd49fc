"""What the module installs on first use: the plan for installed, missing and too-old
packages, the order and exact installer arguments, and that declining installs nothing."""

import re
from pathlib import Path

import pytest
import tomllib

from SegHiResGradCAMLib.models.formats import NOTHING_MORE
from SegHiResGradCAMLib.mrml import dependencies
from SegHiResGradCAMLib.mrml.dependencies import (
    CORE,
    NNUNET,
    NNUNET_OWN,
    NNUNET_PLAIN,
    UNKNOWN_VERSION,
    install,
    installed_version,
    plan_installs,
    problem,
    release,
)

ROOT = Path(__file__).resolve().parents[2]
WORKING = {"torch": "2.13.0+cpu", "numpy": "2.4.6", "monai": "1.6.1", "SimpleITK": "2.5.7", "scipy": "1.17.1"}


def versions_from(table: dict):
    return lambda requirement: table.get(requirement.distribution)


def test_nothing_to_install_when_every_package_is_there_in_a_working_version():
    assert plan_installs(versions_from(WORKING)) == []
    # Packages built into Slicer without metadata count as installed.
    assert plan_installs(versions_from({**WORKING, "SimpleITK": UNKNOWN_VERSION})) == []


def test_missing_torch_is_installed_first_through_the_pytorch_extension():
    plan = plan_installs(versions_from({key: value for key, value in WORKING.items() if key != "torch"}))
    assert [(step.installer, step.arguments) for step in plan] == [("pytorch", (">=2.5",))]
    assert plan[0].reasons == ("torch is not installed",)


def test_too_old_and_missing_packages_go_into_one_pip_call_after_pytorch():
    table = {**WORKING, "torch": "2.1.0", "monai": "1.2.0"}
    del table["scipy"]
    plan = plan_installs(versions_from(table))
    assert [step.installer for step in plan] == ["pytorch", "pip"]
    assert plan[0].reasons == ("torch 2.1.0 is older than 2.5",)
    assert plan[1].arguments == ("monai>=1.5", "scipy>=1.13")
    assert plan[1].reasons == ("monai 1.2.0 is older than 1.5", "scipy is not installed")


def test_nnunet_adds_its_plain_dependencies_then_its_own_packages_without_theirs():
    plan = plan_installs(versions_from(WORKING), extra=NNUNET)
    assert [step.installer for step in plan] == ["pip", "nnunet"]
    assert plan[0].arguments == tuple(requirement.distribution for requirement in NNUNET_PLAIN)
    own = (
        "nnunetv2>=2.5",
        "dynamic-network-architectures>=0.3.1",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.2",
        "acvl-utils>=0.2",
    )
    assert plan[1].arguments == ("--no-deps", *own)
    installed = {
        **WORKING,
        **{r.distribution: "1.0" for r in NNUNET_PLAIN},
        **{r.distribution: r.minimum for r in NNUNET_OWN},
    }
    assert plan_installs(versions_from(installed), extra=NNUNET) == []
    for working in ("2.5.0", "2.8.1", "2.9.0"):  # a working nnU-Net, another extension's maybe, is left alone
        assert plan_installs(versions_from({**installed, "nnunetv2": working}), extra=NNUNET) == []
    plan = plan_installs(versions_from({**installed, "nnunetv2": "2.3.1"}), extra=NNUNET)
    assert [step.arguments for step in plan] == [("--no-deps", "nnunetv2>=2.5")]
    assert plan[0].reasons == ("nnunetv2 2.3.1 is older than 2.5",)


def test_nnunet_goes_to_its_own_installer_when_one_is_given():
    installers = Installers()
    plan = plan_installs(versions_from(WORKING), extra=NNUNET)
    nnunet_calls = []
    assert install(
        plan, installers.confirm, installers.install_torch, installers.pip_install, install_nnunet=nnunet_calls.append
    )
    assert nnunet_calls == [list(plan[1].arguments)] and installers.calls == [("pip", plan[0].arguments)]


def test_the_dialog_lists_what_is_missing_and_what_will_be_installed():
    plan = plan_installs(versions_from({"numpy": "2.0"}), extra=NOTHING_MORE)
    text = dependencies.describe(plan)
    assert "torch is not installed" in text and "monai is not installed" in text
    assert "PyTorch >=2.5, by the PyTorch extension" in text
    assert "pip install monai>=1.5 SimpleITK>=2.4 scipy>=1.13" in text
    assert "nothing is changed" in text


class Installers:
    """Records what would be installed, in order (the real ones need the Slicer application)."""

    def __init__(self, answer=True, torch_installed=True):
        self.answer, self.torch_installed, self.calls, self.asked = answer, torch_installed, [], []

    def confirm(self, text):
        self.asked.append(text)
        return self.answer

    def install_torch(self, requirement):
        self.calls.append(("pytorch", requirement))
        return self.torch_installed

    def pip_install(self, arguments):
        self.calls.append(("pip", tuple(arguments)))


def run_install(plan, installers):
    return install(plan, installers.confirm, installers.install_torch, installers.pip_install)


def test_declining_installs_nothing():
    installers = Installers(answer=False)
    assert run_install(plan_installs(versions_from({}), extra=NNUNET), installers) is False
    assert len(installers.asked) == 1 and installers.calls == []


def test_accepting_installs_in_the_planned_order_after_asking_once():
    plan = plan_installs(versions_from({"numpy": "2.0"}), extra=NNUNET)
    installers = Installers()
    assert run_install(plan, installers) is True
    assert len(installers.asked) == 1
    # Without an nnU-Net installer of its own (outside Slicer), nnU-Net's step goes to pip too.
    expected = [
        ("pytorch", step.arguments[0]) if step.installer == "pytorch" else ("pip", step.arguments) for step in plan
    ]
    assert installers.calls == expected
    assert installers.calls[0] == ("pytorch", ">=2.5") and installers.calls[-1][1][0] == "--no-deps"


def test_nothing_missing_asks_nothing():
    installers = Installers()
    assert run_install([], installers) is True and installers.asked == [] and installers.calls == []


def test_a_failed_pytorch_install_stops_before_pip():
    installers = Installers(torch_installed=None)
    with pytest.raises(RuntimeError, match="PyTorch was not installed"):
        run_install(plan_installs(versions_from({})), installers)
    assert installers.calls == [("pytorch", ">=2.5")]


RELEASES = [("2.13.0+cpu", (2, 13, 0)), ("1.6rc1", (1, 6)), ("v0.4.4", (0, 4, 4)), ("10.0", (10, 0)), ("nonsense", ())]


@pytest.mark.parametrize(("version", "expected"), RELEASES)
def test_release_numbers_compare_numerically(version, expected):
    assert release(version) == expected
    assert release("1.10") > release("1.9")


def test_installed_versions_are_read_without_importing():
    """On this machine torch is installed (the test suite needs it), a made-up package is not."""
    assert release(installed_version(CORE[0])) >= release("2.5")
    assert installed_version(dependencies.Requirement("no-such-package-x", "no_such_package_x")) is None


def test_the_lists_match_the_project_s_own_install_files():
    """One truth: what Slicer installs is what `make` installs and CI tests."""
    from importlib.metadata import requires

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    # The installed package's dependencies (pyproject.toml reads them from the package's requirements.txt).
    declared = {re.split(r"[<>=]", item)[0]: item for item in requires("seghiresgradcam") if ";" not in item}
    wanted = {declared[name] for name in declared if name != "matplotlib"}  # only the demo's figures need it
    assert {requirement.specifier for requirement in CORE} == wanted
    assert [requirement.distribution for requirement in NNUNET_PLAIN] == project["optional-dependencies"]["nnunet"]
    lines = [line.strip() for line in (ROOT / "requirements-nnunet.txt").read_text(encoding="utf-8").splitlines()]
    pinned = [line for line in lines if line and not line.startswith("#")]
    assert [line.split("==")[0] for line in pinned] == [requirement.distribution for requirement in NNUNET_OWN]
    for line, requirement in zip(pinned, NNUNET_OWN, strict=True):  # the tested versions meet the minimums
        assert problem(requirement, line.split("==")[1]) is None
