"""Page geometry, known before anything is drawn: how many pages, how big, and whether they fit.

In: the story's ``LayoutSpec``, each panel's pixel size and caption line count (or the story
and its compiled jobs, for ``layout_problems``). Out: ``PageGeometry`` (the one measurement
``pages`` draws by), ``page_count``, and the problems of a layout whose pages would exceed
what can be composed and written, each with a hint, so `validate`, `plan` and `build` refuse it
before anything is rendered instead of failing in the PDF writer or running out of memory.

No imaging library unless a page comes near a limit: the caption line counts used first are an
upper bound computed from the text alone (one line per character at worst); only a page whose
bound is too big has its captions measured with the real font to decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import Problem
from ..story.schema import LayoutSpec

# A page must stay writable and readable: the PDF writer embeds each page as a JPEG (at most
# 65,535 pixels a side; Pillow stops at 65,500), and Pillow refuses to open images over
# 89,478,485 pixels as possible decompression bombs (about 270 MB of RGB to compose).
MAX_PAGE_SIDE = 65_500
MAX_PAGE_PIXELS = 89_478_485


def page_count(panels: int, layout: LayoutSpec) -> int:
    """How many pages ``panels`` panels fill (at least one)."""
    per_page = layout.panels_per_page or max(panels, 1)
    return max(1, -(-panels // per_page))


@dataclass(frozen=True)
class PageGeometry:
    columns: int
    cell_width: int
    line_height: int
    pad: int  # between a panel and its caption
    rows: tuple[tuple[int, int], ...]  # (panel height with border, caption height) per row
    title_height: int
    width: int
    height: int

    def fits(self) -> bool:
        return (max(self.width, self.height) <= MAX_PAGE_SIDE
                and self.width * self.height <= MAX_PAGE_PIXELS)


def measure(sizes: Sequence[tuple[int, int] | None], caption_lines: Sequence[int],
            layout: LayoutSpec, titled: bool) -> PageGeometry:
    """The geometry of one page: ``sizes`` are the panels' pixel sizes (None: not rendered,
    drawn as a square placeholder), ``caption_lines`` their captions' line counts at the
    cell's width."""
    columns = max(1, min(layout.columns, len(sizes) or 1))
    cell_w = cell_width(sizes, layout)
    line_h = int(layout.font_size * 1.45)
    pad = max(4, layout.font_size // 3)
    inner_w = cell_w - 2 * layout.border
    rows = []
    for start in range(0, len(sizes), columns):
        row = range(start, min(start + columns, len(sizes)))
        image_h = max((max(1, round(sizes[i][1] * inner_w / sizes[i][0])) if sizes[i]
                       else inner_w for i in row), default=0) + 2 * layout.border
        text_h = max((caption_lines[i] for i in row), default=0) * line_h
        rows.append((image_h, text_h + (pad if text_h else 0)))
    title_h = int(layout.font_size * 1.6 * 1.45) + layout.gutter if titled else 0
    width = 2 * layout.margin + columns * cell_w + (columns - 1) * layout.gutter
    height = (2 * layout.margin + title_h + sum(a + b for a, b in rows)
              + max(len(rows) - 1, 0) * layout.gutter)
    return PageGeometry(columns, cell_w, line_h, pad, tuple(rows), title_h, width,
                        max(height, 2 * layout.margin + 1))


def cell_width(sizes: Sequence[tuple[int, int] | None], layout: LayoutSpec) -> int:
    """Every cell's width: the layout's, else the widest panel's."""
    return layout.cell_width or max((s[0] for s in sizes if s), default=512)


def most_lines(caption: str) -> int:
    """An upper bound on a caption's line count at any width: a character per line."""
    return sum(max(1, len(paragraph)) for paragraph in caption.split("\n")) if caption else 0


def layout_problems(story, jobs: Sequence, font: str | None,
                    lines: Callable[[str, int, str | None, int], int]) -> list[Problem]:
    """What keeps the story's pages from being composed and written: one problem, with a
    hint. ``lines(caption, font_size, font, width)`` counts a caption's lines with the real
    font; it is asked only about panels on pages whose upper bound is too big."""
    layout: LayoutSpec = story.spec.layout
    titled = layout.title is not False and bool(
        story.spec.title if layout.title is True else layout.title)
    captions = layout.caption != "none"
    exact: dict[int, int] = {}  # panel index -> its caption's measured line count

    def page(first: int, count: int) -> PageGeometry:
        chunk = range(first, min(first + count, len(jobs)))
        # A panel not rendered yet is drawn as a square: a page is checked at its tallest.
        sizes = [(jobs[i].width, max(jobs[i].width, jobs[i].height)) for i in chunk]
        bound = measure(sizes, [most_lines(jobs[i].caption) if captions else 0 for i in chunk],
                        layout, titled)
        if bound.fits() or not captions:
            return bound
        for i in chunk:
            if i not in exact:
                exact[i] = lines(jobs[i].caption, layout.font_size, font, bound.cell_width) \
                    if jobs[i].caption else 0
        return measure(sizes, [exact[i] for i in chunk], layout, titled)

    per_page = layout.panels_per_page or max(len(jobs), 1)
    too_big = [(first // per_page + 1, g) for first in range(0, len(jobs), per_page)
               if not (g := page(first, per_page)).fits()]
    if not too_big:
        return []
    number, geometry = too_big[0]
    where = f"page {number} would be {geometry.width:,} x {geometry.height:,} pixels"
    limit = (f"more than {MAX_PAGE_SIDE:,} pixels a side" if max(geometry.width,
             geometry.height) > MAX_PAGE_SIDE else f"more than {MAX_PAGE_PIXELS:,} pixels")
    if geometry.width > MAX_PAGE_SIDE:
        hint = "use fewer `columns` or a smaller `cell_width`"
    else:
        fitting = next((n for n in range(min(per_page, len(jobs)) - 1, 0, -1)
                        if all(page(first, n).fits() for first in range(0, len(jobs), n))),
                       None)
        hint = (f"set `panels_per_page: {fitting}` to spread the panels over more pages"
                if fitting else "shorten the longest captions, or lower `font_size` or "
                "`columns`")
    more = f" ({len(too_big)} pages are too big)" if len(too_big) > 1 else ""
    return [story.doc.problem(("layout",), f"{where}, {limit}: too big to compose or write"
                              f"{more}", hint)]
