"""Why a path given as an input is no file to read, in words: shared by the readers (one CT,
one mask) and the cohort's case folders, so that both say the same thing. Standard library
only, so that listing a dataset loads nothing heavy."""

from __future__ import annotations

import errno
import os


def unreadable_reason(path) -> str | None:
    """How ``path`` fails as something to read, as the end of a sentence ("is a link that
    loops back on itself", "does not exist", ...), or None for a file or a folder."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as error:
            if error.errno == errno.ELOOP:
                return "is a link that loops back on itself"
            return f"is a link to {os.readlink(path)}, which does not exist"
    if not os.path.exists(path):
        return "does not exist"
    if not (os.path.isfile(path) or os.path.isdir(path)):
        return "is a pipe or a device, not a file"
    return None
