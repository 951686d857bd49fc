"""A stand-in for the parts of the Slicer application that slicer-core lacks (Qt, CTK, the
qMRML widgets, ScriptedLoadableModule and parameterNodeWrapper), so that the module's
widget can be built from its real .ui file and driven as a user drives it, over a real MRML
scene and real background runs.

Each stand-in follows the behaviour documented by, and read in the source of, Qt, CTK and
Slicer: which signal is emitted when, in which order the connected slots run, what a
programmatic change emits. It is written for these tests; no Slicer code is copied.
"""
