"""Which render size suits each panel's place on the page (for `storyboard plan`).

In: the compiled jobs (each panel's id and width x height), the story's ``LayoutSpec`` and the
model's native size (1024 for SDXL and Kolors, 512 for SD 1.5, 128 for the built-ins). Out:
``SizeSuggestion``s, one for each panel whose size is not the native size that best fits the
box the page gives it, e.g. a panel across two columns of square cells (a 2:1 box) rendered
square, where SDXL's 1536x640 would fill it without cropping or blank bands.

The native sizes are the aspect-ratio buckets SDXL was trained on (about a megapixel each,
sides multiples of 64), scaled for a family of another native size: a model renders best at
the shapes it was trained at. A panel's box is its cell's picture area: the width of the
columns it spans (gutters included, border left out) by ``cell_height``; without
``cell_height`` a one-column panel's box is its own shape (the page follows the panel: nothing
to suggest), and a panel spanning columns has the height of the page's one-column panels (the
tallest, drawn), else of a square cell; a panel across rows, those rows' height and the gutters
and borders between them (captions left out). Pure arithmetic: no imaging library, no model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..story.schema import LayoutSpec
from .geometry import arrange, cell_width, panel_size, per_page, row_spans, spans

# SDXL's training buckets (width, height) near 1024 x 1024 pixels, square first (it wins a tie).
SDXL_BUCKETS = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768),
                (768, 1344), (1536, 640), (640, 1536))


@dataclass(frozen=True)
class SizeSuggestion:
    panel: str
    box: tuple[int, int]  # the picture area the page gives the panel, in page pixels
    best: tuple[int, int]  # the native size closest to the box's shape
    now: tuple[int, int]  # the panel's width x height

    def ratio(self) -> str:
        """The box's shape, its longer side to 1: '2.2:1' (wide), '1:1.5' (tall), '1:1'."""
        w, h = self.box
        return f"{w / h:.2g}:1" if w >= h else f"1:{h / w:.2g}"

    def line(self) -> str:
        return (f"panel {self.panel}: box {self.ratio()} fits {self.best[0]}x{self.best[1]} "
                f"best (now {self.now[0]}x{self.now[1]})")

    def to_dict(self) -> dict:
        return {"panel": self.panel, "box": list(self.box), "ratio": self.ratio(),
                "best": list(self.best), "now": list(self.now)}


def native_sizes(native: int) -> list[tuple[int, int]]:
    """The buckets for a model trained at ``native`` x ``native``: SDXL's, scaled by
    ``native / 1024``, each side rounded to a multiple of 8 (what the VAE needs)."""
    scale = native / 1024
    return [(max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8))
            for w, h in SDXL_BUCKETS]


def best_size(box: tuple[int, int], sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The size whose shape is closest to ``box``'s (by the log of the aspect ratio, so 2:1
    and 1:2 are as far from square); the first of equals."""
    want = math.log(box[0] / max(1, box[1]))
    return min(sizes, key=lambda s: abs(math.log(s[0] / s[1]) - want))


def panel_boxes(panels: Sequence[tuple[str, int, int]],
                layout: LayoutSpec) -> list[tuple[str, tuple[int, int] | None]]:
    """Each panel's box on its page (``None``: the page takes the panel's own shape);
    ``panels`` are (id, width, height) in story order."""
    out: list[tuple[str, tuple[int, int] | None]] = []
    count = per_page(layout, len(panels))
    b, gutter = layout.border, layout.gutter
    for first in range(0, len(panels), count):
        chunk = panels[first:first + count]
        sizes = [(w, h) for _, w, h in chunk]
        widths = spans([p for p, _, _ in chunk], layout)
        cell_w = cell_width(sizes, layout, widths)
        tall = row_spans([p for p, _, _ in chunk], layout)
        one_column = [panel_size(s, cell_w - 2 * b, layout)[1]
                      for s, n, k in zip(sizes, widths, tall) if n == k == 1]
        height = layout.cell_height or max(one_column, default=cell_w - 2 * b)
        boxes: dict[int, tuple[int, int] | None] = {}
        for row in arrange(widths, layout, tall):
            for i, _, n in row:
                wide = n * cell_w + (n - 1) * gutter - 2 * b
                high = tall[i] * height + (tall[i] - 1) * (gutter + 2 * b)
                boxes[i] = (wide, high) if layout.cell_height or n > 1 or tall[i] > 1 else None
        out += [(chunk[i][0], boxes[i]) for i in range(len(chunk))]
    return out


def size_suggestions(panels: Sequence[tuple[str, int, int]], layout: LayoutSpec,
                     native: int) -> list[SizeSuggestion]:
    """The panels whose size is not the native size that best fits their box, in story order."""
    sizes = native_sizes(native)
    out = []
    for (panel, w, h), (_, box) in zip(panels, panel_boxes(panels, layout)):
        if box is None:
            continue
        best = best_size(box, sizes)
        if best != (w, h):
            out.append(SizeSuggestion(panel, box, best, (w, h)))
    return out
