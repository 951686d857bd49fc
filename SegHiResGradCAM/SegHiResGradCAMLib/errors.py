"""Errors raised for input the engine cannot explain.

Every message says what is wrong and what to do about it, so that the command line and
the Slicer module can show it to the user as it is.
"""


class ExplainInputError(ValueError):
    """The image, mask, class, layer or model cannot be explained as asked."""
