"""The README's pictures of the layout presets: each preset's page composed from plain
coloured panels (no model), small enough to keep in the repository.

In: nothing (run from the repository root: ``python docs/readme_pictures.py``). Out:
``examples/images/preset-<name>.png``, each at most 600 pixels a side, its colours reduced
to a palette (flat panels and text compress to a few kilobytes that way).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from storyboard.output.pages import Cell, compose_pages
from storyboard.story.layout import PRESETS
from storyboard.story.schema import LayoutSpec

OUT = Path("examples/images")
COLOURS = ["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#b8b8ff", "#f6bd60", "#84a59d"]
# Each preset with panels of the shapes it is made for (pixels, width x height).
SHAPES = {
    "grid-2x2": [(512, 384)] * 4,
    "strip-3": [(512, 512)] * 3,
    "splash": [(512, 720)],
    "manga-4koma": [(512, 288)] * 4,
    "wide-top": [(1040, 384)] + [(512, 384)] * 4,
}


def preset_page(name: str) -> Image.Image:
    cells = [Cell(f"p{i}", i + 1, Image.new("RGB", size, COLOURS[i % len(COLOURS)]),
                  f"Panel {i + 1}")
             for i, size in enumerate(SHAPES[name])]
    (page,) = compose_pages(cells, LayoutSpec(preset=name, cell_width=512), name)
    page.thumbnail((600, 600), Image.LANCZOS)
    return page


def main() -> None:
    assert set(SHAPES) == set(PRESETS), "a preset without a picture"
    for name in PRESETS:
        page = preset_page(name).quantize(64, method=Image.Quantize.MEDIANCUT)
        path = OUT / f"preset-{name}.png"
        page.save(path, optimize=True)
        print(f"{path}  {page.size[0]}x{page.size[1]}  {path.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
