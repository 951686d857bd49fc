"""The memory a computation may plan for comes from the operating system on every platform."""

import ctypes
import os
import sys
import types

import pytest

from SegHiResGradCAMLib.errors import ExplainInputError
from SegHiResGradCAMLib.volumes import volume_io


def test_on_linux_the_limit_is_half_the_memory_the_kernel_reports(monkeypatch):
    monkeypatch.delenv(volume_io.MEMORY_LIMIT_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "psutil", None)  # as on a machine without psutil
    with open("/proc/meminfo") as meminfo:
        total = int(next(line for line in meminfo if line.startswith("MemTotal:")).split()[1]) * 1024
    assert abs(volume_io.memory_limit_bytes() - total // 2) < 2**20


def test_psutil_is_asked_first_where_it_is_installed(monkeypatch):
    monkeypatch.delenv(volume_io.MEMORY_LIMIT_VARIABLE, raising=False)
    psutil = types.SimpleNamespace(virtual_memory=lambda: types.SimpleNamespace(total=96 * 2**30))
    monkeypatch.setitem(sys.modules, "psutil", psutil)
    assert volume_io.memory_limit_bytes() == 48 * 2**30


def test_without_sysconf_the_windows_api_is_asked_not_a_fixed_guess(monkeypatch):
    """Windows has no os.sysconf; kernel32's GlobalMemoryStatusEx fills in the total."""
    monkeypatch.delenv(volume_io.MEMORY_LIMIT_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.delattr(os, "sysconf")

    class Kernel32:
        @staticmethod
        def GlobalMemoryStatusEx(pointer):
            status = pointer._obj
            assert status.dwLength == ctypes.sizeof(status)  # the caller must set it, as Windows requires
            status.ullTotalPhys = 64 * 2**30
            return 1

    monkeypatch.setattr(ctypes, "windll", types.SimpleNamespace(kernel32=Kernel32()), raising=False)
    assert volume_io.memory_limit_bytes() == 32 * 2**30
    monkeypatch.delattr(ctypes, "windll")  # neither sysconf nor Windows: the stated assumption
    assert volume_io.memory_limit_bytes() == volume_io.UNKNOWN_MEMORY_BYTES


@pytest.mark.parametrize("given", ["lots", "nan", "inf", "0", "-4"])
def test_a_memory_limit_that_is_no_positive_number_is_refused_with_what_to_do(monkeypatch, given):
    monkeypatch.setenv(volume_io.MEMORY_LIMIT_VARIABLE, given)
    with pytest.raises(ExplainInputError, match=f"must be a positive number of GB, e.g. 8; got '{given}'"):
        volume_io.memory_limit_bytes()
    monkeypatch.setenv(volume_io.MEMORY_LIMIT_VARIABLE, "2.5")
    assert volume_io.memory_limit_bytes() == int(2.5 * 2**30)
