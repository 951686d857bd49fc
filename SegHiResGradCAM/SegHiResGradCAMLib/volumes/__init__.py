"""Reading and writing volumes with their geometry, preparation for a model's grid and the way back.

SimpleITK and numpy only; imports nothing of this package but ``..errors``.
"""
