"""One way to write a file: under a partial name, renamed into place."""

import ast
from pathlib import Path

import pytest

from SegHiResGradCAMLib.volumes.outputs import PARTIAL_PREFIX, write_atomically

LIBRARY = Path(__file__).resolve().parents[2] / "SegHiResGradCAM" / "SegHiResGradCAMLib"


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def failing(partial):
        partial.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, failing)
    assert target.read_text(encoding="utf-8") == "old" and [path.name for path in tmp_path.iterdir()] == ["table.csv"]
    write_atomically(target, lambda partial: partial.write_text("new"))
    assert target.read_text(encoding="utf-8") == "new" and not list(tmp_path.glob(f"{PARTIAL_PREFIX}*"))


def test_a_folder_is_written_whole_or_not_at_all(tmp_path):
    def interrupted(partial):
        partial.mkdir()
        (partial / "rows.json").write_text("[]")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "case", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_every_writer_renames_through_the_one_helper():
    """No module but the outputs module renames files into place itself."""
    renaming = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("replace", "rename")
                and getattr(node.value, "id", None) == "os"
            ):
                renaming.append(path.relative_to(LIBRARY).as_posix())
    assert sorted(set(renaming)) == ["volumes/outputs.py"]
