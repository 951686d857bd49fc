"""Writes the extension's heat colour table (Slicer colour-table text format) from
matplotlib's perceptually uniform "inferno" map: 256 entries, index 0 fully transparent
black so that zero heat shows nothing.

    .venv/bin/python Utilities/make_colour_table.py
"""

from pathlib import Path

from matplotlib import colormaps

PATH = (
    Path(__file__).resolve().parents[1]
    / "SegHiResGradCAM"
    / "SegHiResGradCAMLib"
    / "resources"
    / "ColorTables"
    / "SegHiResGradCAMHeat.txt"
)


def main() -> None:
    inferno = colormaps["inferno"]
    lines = ["# SegHiResGradCAM heat colour table (matplotlib inferno, perceptually uniform)", "# index name r g b a"]
    for index in range(256):
        red, green, blue, _ = (round(255 * channel) for channel in inferno(index / 255))
        lines.append(f"{index} heat{index:03d} {red} {green} {blue} {0 if index == 0 else 255}")
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text("\n".join(lines) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
