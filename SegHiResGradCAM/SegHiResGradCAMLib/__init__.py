"""SegHiResGradCAM core: CAM explanations of segmentation networks, importable without Slicer.

The names below are imported lazily so that the Slicer-side modules of this package
(which must not import torch) can be used without loading the engine.
"""

_LAZY_EXPORTS = {
    "explain": ".engine",
    "CamResult": ".engine",
    "list_layers": ".model_inspection",
    "LayerInfo": ".model_inspection",
    "METHODS": ".methods",
    "CamMethod": ".methods",
    "register_method": ".methods",
    "ExplainInputError": ".errors",
    "ExplainCancelled": ".errors",
    "ExplainResourceError": ".errors",
    "sliding_window_logits": ".sliding_window",
    "explain_layers": ".fusion",
    "explanation_metrics": ".metrics",
    "ExplanationMetrics": ".metrics",
}

__all__ = sorted(_LAZY_EXPORTS)


def __getattr__(name):
    if name not in _LAZY_EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
