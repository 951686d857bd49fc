"""Errors raised for input the engine cannot explain.

Every message says what is wrong and what to do about it, so that the command line and
the Slicer module can show it to the user as it is.
"""


class ExplainInputError(ValueError):
    """The image, mask, class, layer or model cannot be explained as asked.

    Its message says what is wrong and what to do. The command line exits with code 2.

    Example:
        >>> import torch
        >>> from SegHiResGradCAMLib import ExplainInputError, explain
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 3, 1))
        >>> try:
        ...     explain(net, torch.randn(1, 8, 8), 5)
        ... except ExplainInputError as error:
        ...     print(error)
        Target class 5 does not exist: the network has 3 output channels, so choose 0..2.
    """


class ExplainNoEvidence(ExplainInputError):
    """The computation ran, but its map has nothing in it (no positive evidence): writing it
    normalised would show a meaningless picture."""


class ExplainCancelled(Exception):
    """The user cancelled the computation (``cancel.is_set()``); nothing partial is returned."""


class ExplainResourceError(RuntimeError):
    """The computation does not fit the device (GPU memory); the message says what to try
    (a smaller window or batch, mixed precision, or the CPU)."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type's name when it has none), for a
    message that quotes what a library or a model's own code said."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
