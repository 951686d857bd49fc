"""What a process keeps between runs on the same CT: the CT as read, the CT on the model's
grid and the network's blended logits, so that a second question (another segment, class,
method or layer) costs only its own explanation.

Off unless a long-lived process turns it on (``keep_prepared_inputs``): the warm worker
behind the Slicer module and a command line run with several targets. A one-shot run keeps
nothing. An entry is found only by the CT's content (a digest of its bytes, not its name or
modification time, which an export into a new folder changes and a rewrite in the same
second may not) and by everything that made the logits (the model's files, its card, the
device), so a changed CT, model file or weight file is never served from here. One entry is
kept, as one network is (``ModelCard.network``): a CT on a model's grid can take gigabytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PreparedCase:
    """One CT and what was computed from it for one model on one device."""

    image_key: str
    model_key: tuple
    ct: object  # the SimpleITK image as read
    notes: list[str]  # what the reading left out (a DICOM series), said again on every run
    model_input: object = None  # the format's PreparedInput
    logits: object = None  # the blended logits (classes, z, y, x), a CPU tensor
    labels: object = None  # their argmax (a softmax head's prediction), made when first needed


class PreparedInputs:
    """At most one ``PreparedCase``; a lookup with other keys drops it."""

    def __init__(self):
        self.case: PreparedCase | None = None
        self.hits = 0  # how many lookups found the CT (tests and the worker's status read it)

    def read(self, image_key: str, read):
        """(CT, notes) of the CT with this key: kept, or ``read()`` and kept."""
        if self.case is not None and self.case.image_key == image_key:
            self.hits += 1
            return self.case.ct, list(self.case.notes)
        ct, notes = read()
        self.case = PreparedCase(image_key, (), ct, list(notes))
        return ct, notes

    def for_model(self, image_key: str, model_key: tuple) -> PreparedCase:
        """The case of this CT for this model: kept, or a new one holding only the CT (the
        prepared input and logits of another model are dropped)."""
        case = self.case
        if case is None or case.image_key != image_key:
            raise RuntimeError("read() comes first: the CT of this case was not read through the cache.")
        if case.model_key != model_key:
            self.case = case = PreparedCase(image_key, model_key, case.ct, case.notes)
        return case

    def clear(self) -> None:
        self.case = None


_KEPT: PreparedInputs | None = None


def keep_prepared_inputs(keep: bool = True) -> PreparedInputs | None:
    """Turns keeping on (or off, dropping what is kept) for this process; returns the store."""
    global _KEPT
    if not keep:
        _KEPT = None
    elif _KEPT is None:
        _KEPT = PreparedInputs()
    return _KEPT


def kept_inputs() -> PreparedInputs | None:
    """The process's store, or None when runs keep nothing."""
    return _KEPT


# Formats whose header names a separate data file: every file beside it counts.
DETACHED_HEADERS = (".nhdr", ".mhd", ".hdr")


def content_key(path, series: str | None = None) -> str:
    """A digest of the bytes of a volume file (with every file beside it when its header
    names a separate data file, or it is one file of a DICOM series), or of every file of a
    DICOM folder, and the chosen series."""
    from .volumes.volume_io import is_dicom_file

    digest = hashlib.blake2b(digest_size=20)
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent
    whole_folder = path.is_dir() or path.suffix.lower() in DETACHED_HEADERS or is_dicom_file(path)
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if whole_folder else [path]
    for file in files:
        name = file.relative_to(folder) if whole_folder else file.suffix  # not the name of an export
        digest.update(str(name).encode() + b"\0")
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
    digest.update(str(series).encode())
    return digest.hexdigest()
