"""Outputs that are not plain files: a link is written through, a device or a pipe is never
replaced by a file (run as root, `--out /dev/null` once replaced the system's /dev/null)."""

import os

import pytest
import SimpleITK as sitk

from conftest import bias_free_model_card, explain_small_case, write_small_case
from SegHiResGradCAMLib.volumes.outputs import write_atomically

SPACING = (6.0, 6.0, 6.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = write_small_case(tmp_path_factory.mktemp("special"), SPACING)
    return folder, bias_free_model_card(folder, SPACING)


def test_devices_and_pipes_are_refused_and_left_as_they_are(case, tmp_path, capsys):
    folder, card = case
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for extra in (["--summary", "/dev/null"], ["--metrics", str(pipe)], ["--prediction", "/dev/zero"]):
        assert explain_small_case(folder, card, tmp_path / "heat.nrrd", *extra) == 2
        assert "is not a regular file (a device, a pipe or a socket" in capsys.readouterr().err
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    assert not os.path.isfile(pipe) and not (tmp_path / "heat.nrrd").exists()
    with pytest.raises(Exception, match="not a regular file"):
        write_atomically(pipe, lambda partial: partial.write_text("x"))


def test_a_link_to_a_file_is_written_through_and_stays_a_link(case, tmp_path):
    folder, card = case
    target = tmp_path / "maps" / "heat.nrrd"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.nrrd"
    link.symlink_to(target)
    assert explain_small_case(folder, card, link) == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sitk.ReadImage(str(target)).GetSize() == sitk.ReadImage(str(folder / "ct.nrrd")).GetSize()
