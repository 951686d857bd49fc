"""The synthetic KiTS-like phantom, ``seghiresgradcam demo`` and the paper-style figures.

May import ``..pipeline``, ``..models``, ``..volumes`` and ``..cam``; nothing imports it but the CLI.
"""
