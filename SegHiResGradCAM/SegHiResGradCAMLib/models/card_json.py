"""Model card JSON files (a card next to its weights): the format of the bundled demo model
and of any MONAI network described by architecture name and arguments.

Each entry is checked on its own, so that a mistyped card names the entry, what it holds
and what it should hold; the weights must lie inside the card's folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path

from ..errors import ExplainInputError
from .card import Intensity, ModelCard, file_inside, read_json

ORIENTATION_LETTERS = ({"L", "R"}, {"P", "A"}, {"S", "I"})
HEADS = ("softmax", "sigmoid")
BLENDS = ("gaussian", "constant")
# The network's array axis order -> the card's internal name (a 2D network's "yx" is the identity).
AXIS_ORDERS = {3: {"zyx": "zyx", "xyz": "xyz"}, 2: {"yx": "zyx", "xy": "xy"}}
# Every entry a card may hold; None: its contents are free (the network's arguments, notes).
KNOWN_ENTRIES = {
    "name": None,
    "description": None,
    "architecture": None,
    "kwargs": None,
    "weights": None,
    "head": None,
    "classes": None,
    "colours": None,
    "default_layer": None,
    "training": None,
    "validation": None,
    "preprocessing": {
        "orientation": None,
        "spacing": None,
        "intensity": {"low": None, "high": None, "centre": None, "scale": None},
    },
    "sliding_window": {"size": None, "overlap": None, "blend": None, "axis_order": None},
}


def check_known_entries(card: dict, known: dict, name: str, prefix: str = "") -> None:
    """Refuses an entry the reader would ignore (a misspelt or unsupported key), naming the
    closest known one: an ignored entry would silently change the computation."""
    for key, value in card.items():
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
            hint = f"did you mean {prefix + close[0]!r}? " if close else ""
            raise ExplainInputError(
                f"The model card {name}: unknown entry {prefix + key!r}; {hint}The card can hold "
                f"{', '.join(prefix + entry for entry in known)} (see 'Your own model' in docs/models.md)."
            )
        if isinstance(known[key], dict) and isinstance(value, dict):
            check_known_entries(value, known[key], name, f"{prefix}{key}.")


class _Entries:
    """Reads a card's entries by dotted key, each with a clear error."""

    def __init__(self, card: dict, name: str):
        self.card, self.name = card, name

    def fail(self, key: str, expected: str, value=None) -> ExplainInputError:
        got = "it is missing" if value is None else f"got {value!r}"
        return ExplainInputError(f"The model card {self.name}: {key} must be {expected}; {got}.")

    def get(self, key: str, expected: str, default=None, required: bool = True):
        value = self.card
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                if not required:
                    return default
                raise self.fail(key, expected)
            value = value[part]
        return value

    def numbers(self, key: str, count: int | tuple[int, ...], expected: str, positive: bool = True) -> tuple:
        value = self.get(key, expected)
        counts = (count,) if isinstance(count, int) else count
        if not isinstance(value, list) or len(value) not in counts or not all(_is_number(v) for v in value):
            raise self.fail(key, expected, value)
        if positive and min(value) <= 0:
            raise self.fail(key, expected, value)
        return tuple(value)

    def number(self, key: str, expected: str, default=None, required: bool = True) -> float:
        value = self.get(key, expected, default, required)
        if not _is_number(value):
            raise self.fail(key, expected, value)
        return float(value)

    def text(self, key: str, expected: str, default=None, choices=None) -> str:
        value = self.get(key, expected, default, required=default is None)
        if not isinstance(value, str) or not value or (choices is not None and value not in choices):
            raise self.fail(key, expected, value)
        return value

    def names(self, key: str, expected: str) -> tuple[str, ...]:
        value = self.get(key, expected)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, expected, value)
        return tuple(value)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_card_json(path: Path) -> ModelCard:
    """A model card from a JSON file or a folder holding exactly one."""
    if path.is_dir():
        cards = sorted(path.glob("*.json"))
        if len(cards) != 1:
            raise ExplainInputError(
                f"The model folder {path} must hold exactly one model card (.json); it holds {len(cards)}."
            )
        path = cards[0]
    if not path.is_file():
        raise ExplainInputError(f"The model card {path} does not exist: give a model card JSON or a model folder.")
    card = read_json(path)
    if not isinstance(card, dict):
        raise ExplainInputError(f"The model card {path.name} must be a JSON object (name, architecture, kwargs, ...).")
    check_known_entries(card, KNOWN_ENTRIES, path.name)
    entries = _Entries(card, path.name)
    kwargs = entries.get("kwargs", 'an object of the network\'s arguments, e.g. {"spatial_dims": 3, ...}')
    if not isinstance(kwargs, dict):
        raise entries.fail("kwargs", "an object of the network's arguments", kwargs)
    classes = entries.names("classes", 'a list of class names, e.g. ["background", "kidney", "tumour"]')
    orientation = entries.text("preprocessing.orientation", 'three axis letters such as "LPS" or "RAS"')
    if len(orientation) != 3 or any(sum(c in letters for c in orientation) != 1 for letters in ORIENTATION_LETTERS):
        raise entries.fail("preprocessing.orientation", 'three axis letters such as "LPS" or "RAS"', orientation)
    intensity = Intensity(
        *(
            entries.number(f"preprocessing.intensity.{key}", "a number (HU)")
            for key in ("low", "high", "centre", "scale")
        )
    )
    if intensity.scale <= 0 or intensity.low >= intensity.high:
        raise entries.fail("preprocessing.intensity", "low < high and a positive scale", intensity)
    colours = entries.get("colours", "a list of [red, green, blue] in 0..1, one per class", required=False)
    if colours is None:
        colours = [[0.5, 0.5, 0.5]] * len(classes)
    if (
        not isinstance(colours, list)
        or len(colours) != len(classes)
        or not all(
            isinstance(c, list) and len(c) == 3 and all(_is_number(v) and 0 <= v <= 1 for v in c) for c in colours
        )
    ):
        raise entries.fail("colours", f"{len(classes)} colours [red, green, blue] in 0..1, one per class", colours)
    overlap = entries.number("sliding_window.overlap", "a fraction in [0, 1)", default=0.25, required=False)
    if not 0 <= overlap < 1:
        raise entries.fail("sliding_window.overlap", "a fraction in [0, 1)", overlap)
    default_layer = entries.get("default_layer", "a layer name", required=False)
    if default_layer is not None and not isinstance(default_layer, str):
        raise entries.fail("default_layer", "a layer name (see `seghiresgradcam layers`)", default_layer)
    window = entries.numbers("sliding_window.size", (2, 3), "whole window sizes: (z, y, x) or (y, x)")
    if not all(float(size).is_integer() for size in window):
        raise entries.fail("sliding_window.size", "whole window sizes: (z, y, x) or (y, x)", list(window))
    weights_name = entries.text("weights", 'the weights file next to the card, e.g. "net.pt"')
    model_card = ModelCard(
        path=path,
        name=str(entries.get("name", "a name", default=path.stem, required=False)),
        architecture=entries.text("architecture", 'a MONAI network name such as "UNet"'),
        kwargs=dict(kwargs),
        weights=file_inside(path.parent, weights_name, f"The model card {path.name}'s weights"),
        orientation=orientation,
        spacing=entries.numbers("preprocessing.spacing", 3, "three positive numbers in mm (x, y, z), e.g. [2, 2, 3]"),
        intensity=intensity,
        head=entries.text("head", f"one of {', '.join(HEADS)}", default="softmax", choices=HEADS),
        classes=classes,
        colours=tuple((float(red), float(green), float(blue)) for red, green, blue in colours),
        window=tuple(int(size) for size in window),
        overlap=overlap,
        default_layer=default_layer,
        extra={key: value for key, value in card.items() if key in ("training", "validation")},
        blend=entries.text("sliding_window.blend", f"one of {', '.join(BLENDS)}", default="gaussian", choices=BLENDS),
    )
    if model_card.spatial_dims not in (2, 3) or len(model_card.window) != model_card.spatial_dims:
        raise ExplainInputError(
            f"The model card {path.name} describes a {model_card.spatial_dims}D network with a sliding window of "
            f"{len(model_card.window)} sizes: give one size per spatial axis ((y, x) for 2D, (z, y, x) for 3D)."
        )
    orders = AXIS_ORDERS[model_card.spatial_dims]
    default_order = next(iter(orders))
    order = entries.text(
        "sliding_window.axis_order",
        f"the network's array axis order, one of {', '.join(orders)}",
        default=default_order,
        choices=orders,
    )
    return dataclasses.replace(model_card, axis_order=orders[order])
