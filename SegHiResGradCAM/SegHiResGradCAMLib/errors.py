"""Errors raised for input the engine cannot explain.

Every message says what is wrong and what to do about it, so that the command line and
the Slicer module can show it to the user as it is.
"""


class ExplainInputError(ValueError):
    """The image, mask, class, layer or model cannot be explained as asked."""


class ExplainNoEvidence(ExplainInputError):
    """The computation ran, but its map has nothing in it (no positive evidence): writing it
    normalised would show a meaningless picture."""


class ExplainCancelled(Exception):
    """The user cancelled the computation; nothing partial is returned."""


class ExplainResourceError(RuntimeError):
    """The computation does not fit the device (e.g. GPU memory)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name when it has none), for a
    message that quotes what a library or a model's own code said."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
