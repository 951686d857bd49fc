"""The Slicer side without Qt: MRML adapter, module logic, background run, sample data.

Never imports torch: it may import ``..models`` (card reading) and torch-free ``..cam.metric_table`` only.
"""
