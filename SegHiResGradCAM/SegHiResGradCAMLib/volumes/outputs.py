"""A run's output files, all or none: checked before any computation, written under
temporary names next to their targets, and renamed into place only when every one exists.

Temporary files and folders are named ``.seghiresgradcam-partial-<pid>-<name>``
(``partial_path``), so that one left by a killed run is recognisably ours; the next run
writing into that folder removes those whose process is gone (``remove_stale_partials``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

from ..errors import ExplainInputError

PARTIAL_PREFIX = ".seghiresgradcam-partial-"
# Single-file formats only: a header with a separate data file (.nhdr, .mhd) names its data
# file, which a rename of the header would not carry along.
VOLUME_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")
DISK_NEARLY_FULL = 64 * 2**20  # bytes free below which a failed write is put down to a full disk


def _suffix_supported(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _same_file(first: Path, second: Path) -> bool:
    if first.resolve() == second.resolve():
        return True
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except OSError:
        return False


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def process_alive(pid: int) -> bool:
    """Whether the process still runs (when that cannot be told, as if it did)."""
    if os.name == "nt":
        return True  # os.kill would end the process there: keep its file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or no way to tell: keep its file
    return True


def partial_path(target: Path) -> Path:
    """Where this process builds ``target`` before renaming it into place."""
    return target.with_name(f"{PARTIAL_PREFIX}{os.getpid()}-{target.name}")


def write_atomically(path: Path, write) -> None:
    """``write(partial)`` writes the file (or folder) under its partial name next to ``path``,
    which is then renamed into place: ``path`` is whole or untouched, and a failure leaves
    nothing behind. A link is written through (its target replaced, the link kept); a device,
    pipe or socket is never replaced by a file."""
    if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
        raise ExplainInputError(f"{path} is not a regular file (a device, a pipe or a socket): give a file's path.")
    path = Path(os.path.realpath(path))
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


def write_failure(path: Path, label: str, report: str) -> OSError:
    """A writer's failure as one line: the last line of its report, and the disk's free space
    (nothing tells a full disk apart in ITK's report)."""
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    detail = lines[-1].split(": ", 1)[-1] if lines else "the writer failed"
    try:
        free = shutil.disk_usage(_nearest_existing(Path(path).parent)).free
    except OSError:
        free = 0
    code = errno.ENOSPC if free < DISK_NEARLY_FULL else errno.EIO
    return OSError(
        code,
        f"Cannot write the {label} ({detail}; {free / 2**20:.0f} MB free on its disk); nothing was written",
        str(path),
    )


def remove_stale_partials(folder: Path) -> None:
    """Removes the partial files and folders in ``folder`` whose process is gone."""
    if not folder.is_dir():
        return
    for partial in folder.glob(f"{PARTIAL_PREFIX}*"):
        pid = partial.name[len(PARTIAL_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or process_alive(int(pid)):
            continue
        if partial.is_dir():
            shutil.rmtree(partial, ignore_errors=True)
        else:
            partial.unlink(missing_ok=True)


class OutputFiles:
    """``outputs``: what each output is (for messages) -> path; ``volumes``: which of them
    are volume files; ``inputs``: files the run reads, which no output may be."""

    def __init__(self, outputs: dict[str, Path], volumes: set[str], inputs: list[Path]):
        self.given = {label: Path(path) for label, path in outputs.items() if path is not None}
        # A link is written through: its target is replaced, the link stays a link.
        self.outputs = {label: Path(os.path.realpath(path)) for label, path in self.given.items()}
        self.volumes = volumes
        self.inputs = [Path(path) for path in inputs if path is not None]
        self._staged: dict[str, Path] = {}
        self._created_folders: list[Path] = []

    def add(self, label: str, path: Path, volume: bool = False) -> None:
        """One more output, known only once the computation has run (check again before staging)."""
        self.given[label] = Path(path)
        self.outputs[label] = Path(os.path.realpath(path))
        if volume:
            self.volumes.add(label)

    def check(self) -> None:
        """Refuses, before anything runs, outputs that would overwrite an input or each other,
        or that cannot be written: a folder, an unsupported format, an unwritable folder."""
        seen: dict[Path, str] = {}
        for label, given in self.given.items():
            if os.path.exists(given) and not (os.path.isfile(given) or os.path.isdir(given)):
                raise ExplainInputError(
                    f"The {label} path {given} is not a regular file (a device, a pipe or a socket, or a link to one): "
                    "give the path of a file to write."
                )
        for label, path in self.outputs.items():
            for source in self.inputs:
                if _same_file(path, source):
                    raise ExplainInputError(
                        f"The {label} file {path} is an input of this run ({source.name}): writing it would destroy "
                        "the input. Choose another output name."
                    )
            if path.resolve() in seen:
                raise ExplainInputError(f"The {label} and the {seen[path.resolve()]} would both be written to {path}.")
            seen[path.resolve()] = label
            if path.is_dir():
                raise ExplainInputError(f"The {label} path {path} is a folder: give a file name, e.g. {path / 'x'}.")
            if label in self.volumes and not _suffix_supported(path):
                raise ExplainInputError(
                    f"The {label} file {path.name} has a format that cannot be written: end its name with "
                    f"{', '.join(VOLUME_SUFFIXES)}."
                )
            existing = _nearest_existing(path.parent)
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise ExplainInputError(
                    f"The {label} cannot be written to {path.parent}: {existing} is not a writable folder."
                )
        for folder in {path.parent for path in self.outputs.values()}:
            remove_stale_partials(folder)

    def _partial(self, label: str) -> Path:
        target = self.outputs[label]
        missing = []
        folder = target.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for created in reversed(missing):
            created.mkdir()
            self._created_folders.append(created)
        partial = partial_path(target)
        self._staged[label] = partial
        return partial

    def stage_volume(self, label: str, image) -> None:
        import SimpleITK as sitk  # here: the Slicer module's writers use this file without loading SimpleITK

        partial = self._partial(label)
        try:
            sitk.WriteImage(image, str(partial), useCompression=True)
        except RuntimeError as error:  # ITK's many-line report; a full disk is the usual cause
            raise write_failure(self.outputs[label], label, str(error)) from None

    def stage_text(self, label: str, content: str | bytes) -> None:
        partial = self._partial(label)
        if isinstance(content, bytes):
            partial.write_bytes(content)
        else:
            partial.write_text(content, encoding="utf-8")

    def commit(self) -> list[Path]:
        """Renames every staged file into place; returns the files that were replaced."""
        missing = set(self.outputs) - set(self._staged)
        if missing:
            raise RuntimeError(f"outputs not written: {sorted(missing)}")
        replaced = [self.outputs[label] for label in self._staged if self.outputs[label].exists()]
        for label, partial in self._staged.items():
            os.replace(partial, self.outputs[label])
        self._staged.clear()
        return replaced

    def discard(self) -> None:
        """Removes what was staged, and the folders made for it: nothing is left behind."""
        for partial in self._staged.values():
            partial.unlink(missing_ok=True)
        self._staged.clear()
        for folder in reversed(self._created_folders):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        self._created_folders.clear()
