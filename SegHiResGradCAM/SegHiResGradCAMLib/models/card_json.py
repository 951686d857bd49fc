"""Model card JSON files (a card next to its weights): the format of the bundled demo model
and of any MONAI network described by architecture name and arguments."""

from __future__ import annotations

from pathlib import Path

from ..errors import ExplainInputError
from .card import Intensity, ModelCard, read_json


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
    try:
        preprocessing = card["preprocessing"]
        intensity = preprocessing["intensity"]
        model_card = ModelCard(
            path=path,
            name=card.get("name", path.stem),
            architecture=card["architecture"],
            kwargs=dict(card["kwargs"]),
            weights=(path.parent / card["weights"]).resolve(),
            orientation=preprocessing["orientation"],
            spacing=tuple(float(v) for v in preprocessing["spacing"]),
            intensity=Intensity(*(float(intensity[key]) for key in ("low", "high", "centre", "scale"))),
            head=card.get("head", "softmax"),
            classes=tuple(card["classes"]),
            colours=tuple(tuple(c) for c in card.get("colours", [[0.5, 0.5, 0.5]] * len(card["classes"]))),
            window=tuple(int(v) for v in card["sliding_window"]["size"]),
            overlap=float(card["sliding_window"].get("overlap", 0.25)),
            default_layer=card.get("default_layer"),
            extra={key: value for key, value in card.items() if key in ("training", "validation")},
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ExplainInputError(f"The model card {path.name} lacks or mistypes the entry {error}.") from None
    if model_card.spatial_dims not in (2, 3) or len(model_card.window) != model_card.spatial_dims:
        raise ExplainInputError(
            f"The model card {path.name} describes a {model_card.spatial_dims}D network with a sliding window of "
            f"{len(model_card.window)} sizes: give one size per spatial axis ((y, x) for 2D, (z, y, x) for 3D)."
        )
    return model_card
