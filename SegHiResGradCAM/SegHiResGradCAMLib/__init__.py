"""SegHiResGradCAM core: CAM explanations of segmentation networks, importable without Slicer.

The names below are imported lazily so that the Slicer-side modules of this package
(which must not import torch) can be used without loading the engine.
"""

__version__ = "0.1.0"  # as pyproject.toml says (a test keeps them equal); recorded on every Slicer output

_LAZY_EXPORTS = {
    "explain": ".cam.engine",
    "Explainer": ".cam.explainer",
    "SegmentTarget": ".cam.explainer",
    "CallableTarget": ".cam.explainer",
    "Tiling": ".cam.sliding_window",
    "CamResult": ".cam.engine",
    "list_layers": ".cam.model_inspection",
    "LayerInfo": ".cam.model_inspection",
    "METHODS": ".cam.methods",
    "CamMethod": ".cam.methods",
    "register_method": ".cam.methods",
    "ExplainInputError": ".errors",
    "ExplainCancelled": ".errors",
    "ExplainResourceError": ".errors",
    "sliding_window_logits": ".cam.sliding_window",
    "explain_layers": ".cam.fusion",
    "explanation_metrics": ".cam.metrics",
    "ExplanationMetrics": ".cam.metrics",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name):
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
