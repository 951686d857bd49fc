"""Model cards: a JSON file (or a folder holding one) naming an allowed architecture and its weights."""

from . import BUNDLED_MODEL, ModelFormat


def _reads(source):
    from ..card_json import read_card_json

    return read_card_json(source.path if source.path is not None else BUNDLED_MODEL)


FORMAT = ModelFormat(
    name="card",
    label="model card (JSON file)",
    help="a model card JSON file, or a folder holding one",
    picks="file",
    detects=lambda path: True,  # asked last: what no other format recognises is read as a card
    reads=_reads,
    order=1000,
    listed=10,
)
