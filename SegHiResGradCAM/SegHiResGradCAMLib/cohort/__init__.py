"""Many cases: datasets (KiTS, nnU-Net raw, CSV), one case through the pipeline, runs in this process or on Ray, the
results table and the report. May import ``..pipeline``, ``..models``, ``..volumes``, ``..cam`` and ``..demo``.
"""
