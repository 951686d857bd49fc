"""The explanation core: layer capture, forward/backward passes, methods, sliding windows, metrics.

Imports torch and numpy only (and ``..errors``); it knows no file format, model format or Slicer.
"""
