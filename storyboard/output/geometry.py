"""Page geometry, known before anything is drawn: how many pages, how big, and whether they fit.

In: the story's ``LayoutSpec``, each panel's pixel size and caption line count (or the story
and its compiled jobs, for ``layout_problems``). Out: ``PageGeometry`` (the one measurement
``pages`` draws by: every cell's panel and caption box, the title's size), ``sheet`` (a
``page_size``'s pixels at ``dpi``), ``page_count``, and the problems of a layout whose pages
would exceed what can be composed and written, each with a hint, so `validate`, `plan` and
`build` refuse it before anything is rendered instead of failing in a writer or running out of
memory.

No imaging library unless a page comes near a limit: the caption line counts used first are an
upper bound computed from the text alone (one line per character at worst); only a page whose
bound is too big has its captions measured with the real font to decide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import Problem
from ..story.fields import page_inches
from ..story.schema import LayoutSpec

# A page must stay writable and readable: Pillow refuses to open images over 89,478,485 pixels
# as possible decompression bombs (about 270 MB of RGB to compose), and a page PNG over 65,500
# pixels a side cannot be saved as JPEG or opened by many comic readers (the CBZ's pages).
MAX_PAGE_SIDE = 65_500
MAX_PAGE_PIXELS = 89_478_485


def page_count(panels: int, layout: LayoutSpec) -> int:
    """How many pages ``panels`` panels fill (at least one)."""
    per_page = layout.panels_per_page or max(panels, 1)
    return max(1, -(-panels // per_page))


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    def touches(self, other: Box) -> bool:
        """Whether the two boxes overlap or share an edge (no gap between them)."""
        return (self.x <= other.x + other.w and other.x <= self.x + self.w
                and self.y <= other.y + other.h and other.y <= self.y + self.h)


@dataclass(frozen=True)
class CellGeometry:
    panel: Box  # the panel with its border, as drawn (never past native size by default)
    caption: Box | None  # its caption, from the panel's edge (pad included); None: no caption
    text_top: int = 0  # where the caption's first line starts


@dataclass(frozen=True)
class PageGeometry:
    columns: int
    cell_width: int
    font_size: int  # the captions' (the layout's, else relative to the cell width)
    line_height: int
    pad: int  # between a panel and its caption
    cells: tuple[CellGeometry, ...]
    title_size: int
    title_line_height: int
    title_height: int  # with the gutter under it; 0 without a title
    width: int
    height: int

    def fits(self) -> bool:
        return (max(self.width, self.height) <= MAX_PAGE_SIDE
                and self.width * self.height <= MAX_PAGE_PIXELS)


def sheet(layout: LayoutSpec) -> tuple[int, int] | None:
    """The page's pixels with a ``page_size`` (its inches at ``dpi``), else None."""
    if layout.page_size is None:
        return None
    w, h = page_inches(layout.page_size)
    return round(w * layout.dpi), round(h * layout.dpi)


def font_size(layout: LayoutSpec, cell_w: int) -> int:
    """The captions' size in pixels: the layout's ``font_size``, else a size that keeps the
    same share of the cell whatever its width (28 px in a 512-pixel cell), so a caption under
    a small panel is not as big as the panel."""
    return layout.font_size or min(256, max(10, round(cell_w / 18)))


def line_height(size: int) -> int:
    return int(size * 1.45)  # Noto Sans CJK's ascent + descent, 1.16 + 0.29 em


def title_size(layout: LayoutSpec, cell_w: int) -> int:
    """The title's largest size; ``pages`` shrinks it (down to the captions' size) to fit."""
    return int(font_size(layout, cell_w) * 1.6)


def panel_size(size: tuple[int, int] | None, inner_w: int, layout: LayoutSpec) -> tuple[int, int]:
    """A panel's drawn size inside a cell ``inner_w`` wide: its aspect ratio kept, scaled down
    to fit and, unless ``layout.upscale``, never up past its own pixels (that only blurs it).
    A panel not rendered is a square placeholder."""
    if size is None:
        return inner_w, inner_w
    w, h = size
    scale = inner_w / w if layout.upscale else min(1.0, inner_w / w)
    return max(1, round(w * scale)), max(1, round(h * scale))


INSIDE_PAD = 0.5  # of the font size: the band an inside caption sits on, around its lines


def caption_width(size: tuple[int, int] | None, cell_w: int, layout: LayoutSpec) -> int:
    """The width a cell's caption wraps to: the cell's, or for ``inside`` the panel's less
    the band's padding."""
    if layout.caption != "inside":
        return cell_w
    w, _ = panel_size(size, cell_w - 2 * layout.border, layout)
    return max(1, w - 2 * int(font_size(layout, cell_w) * INSIDE_PAD))


def fits_inside(text_h: int, panel_h: int, fs: int) -> bool:
    """Whether a caption ``text_h`` tall, on its band, covers at most half its panel."""
    return text_h + 2 * int(fs * INSIDE_PAD) <= panel_h // 2


def measure(sizes: Sequence[tuple[int, int] | None], caption_lines: Sequence[int],
            layout: LayoutSpec, title_lines: int, title_px: int | None = None) -> PageGeometry:
    """The geometry of one page: ``sizes`` are the panels' pixel sizes (None: not rendered,
    drawn as a square placeholder), ``caption_lines`` their captions' line counts at
    ``caption_width``, ``title_lines`` the title's line count (0: no title) at ``title_px``
    (default: ``title_size``).

    Each caption is attached to its own panel: ``below`` starts right under it (panels of a
    row share their top edge), ``above`` ends right over it (panels share their bottom edge),
    ``inside`` sits on a band at the panel's foot. ``direction: rtl`` fills each row from the
    right."""
    columns = max(1, min(layout.columns, len(sizes) or 1))
    cell_w = cell_width(sizes, layout)
    fs = font_size(layout, cell_w)
    line_h = line_height(fs)
    pad = max(4, fs // 3)
    b, m, gutter = layout.border, layout.margin, layout.gutter
    t_size = title_px or title_size(layout, cell_w)
    t_line = line_height(t_size)
    title_h = title_lines * t_line + gutter if title_lines else 0
    inside = layout.caption == "inside"
    cells: list[CellGeometry] = []
    y = m + title_h
    for start in range(0, len(sizes), columns):
        row = range(start, min(start + columns, len(sizes)))
        drawn = {i: panel_size(sizes[i], cell_w - 2 * b, layout) for i in row}
        text = {i: (caption_lines[i] * line_h if caption_lines[i] else 0) for i in row}
        within = {i: inside and fits_inside(text[i], drawn[i][1], fs) for i in row}
        below = {i: 0 if within[i] else text[i] + (pad if text[i] else 0) for i in row}
        panel_h = max(drawn[i][1] + 2 * b for i in row)
        row_h = max(drawn[i][1] + 2 * b + below[i] for i in row)
        for k, i in enumerate(row):
            col = columns - 1 - k if layout.direction == "rtl" else k
            x = m + col * (cell_w + gutter)
            w, h = drawn[i]
            px = x + (cell_w - w - 2 * b) // 2
            if layout.caption == "above":
                panel = Box(px, y + row_h - h - 2 * b, w + 2 * b, h + 2 * b)
                caption = Box(x, panel.y - pad - text[i], cell_w, text[i] + pad)
                top = caption.y
            elif within[i]:
                panel = Box(px, y + (panel_h - h - 2 * b) // 2, w + 2 * b, h + 2 * b)
                band = int(fs * INSIDE_PAD)
                caption = Box(px + b + band, panel.y + panel.h - b - band - text[i],
                              w - 2 * band, text[i])
                top = caption.y
            else:
                panel = Box(px, y, w + 2 * b, h + 2 * b)
                caption = Box(x, y + panel.h, cell_w, pad + text[i])
                top = caption.y + pad
            cells.append(CellGeometry(panel, caption if text[i] else None, top))
        y += row_h + gutter
    width = 2 * m + columns * cell_w + (columns - 1) * gutter
    height = y - (gutter if sizes else 0) + m
    return PageGeometry(columns, cell_w, fs, line_h, pad, tuple(cells), t_size, t_line,
                        title_h, width, max(height, 2 * m + 1))


def cell_width(sizes: Sequence[tuple[int, int] | None], layout: LayoutSpec) -> int:
    """Every cell's width: the layout's, else the widest panel's (with its border), so that no
    panel is drawn past its own size."""
    return layout.cell_width or max((s[0] + 2 * layout.border for s in sizes if s),
                                    default=512)


def most_lines(caption: str) -> int:
    """An upper bound on a caption's line count at any width: a character per line."""
    return sum(max(1, len(paragraph)) for paragraph in caption.split("\n")) if caption else 0


def layout_problems(story, jobs: Sequence, font: str | None,
                    lines: Callable[[str, int, str | None, int], int]) -> list[Problem]:
    """What keeps the story's pages from being composed and written: one problem, with a
    hint. ``lines(caption, font_size, font, width)`` counts a caption's lines with the real
    font; it is asked only about panels on pages whose upper bound is too big."""
    layout: LayoutSpec = story.spec.layout
    title = (story.spec.title if layout.title is True else layout.title or "") \
        if layout.title is not False else ""
    pages_total = page_count(len(jobs), layout)
    if title and pages_total > 1:
        title = f"{title} ({pages_total}/{pages_total})"
    captions = layout.caption not in ("none", "inside")  # inside: no height of its own
    exact: dict[int, int] = {}  # panel index -> its caption's measured line count

    def page(first: int, count: int) -> PageGeometry:
        chunk = range(first, min(first + count, len(jobs)))
        # A panel not rendered yet is drawn as a square: a page is checked at its tallest.
        sizes = [(jobs[i].width, max(jobs[i].width, jobs[i].height)) for i in chunk]
        bound = measure(sizes, [most_lines(jobs[i].caption) if captions else 0 for i in chunk],
                        layout, most_lines(title))
        if bound.fits() or not (captions or title):
            return bound
        cell_w, fs = bound.cell_width, bound.font_size
        inner = bound.width - 2 * layout.margin
        for i in chunk:
            if i not in exact:
                exact[i] = lines(jobs[i].caption, fs, font, cell_w) \
                    if jobs[i].caption and captions else 0
        # The title at its largest size: the most lines, each the tallest (pages shrinks it).
        t_lines = lines(title, title_size(layout, cell_w), font, inner) if title else 0
        return measure(sizes, [exact[i] for i in chunk], layout, t_lines)

    fixed = sheet(layout)
    if fixed is not None:  # every page is the sheet, whatever is on it
        g = measure([], [], layout, 0)
        g = PageGeometry(g.columns, g.cell_width, g.font_size, g.line_height, g.pad, (), 0, 0,
                         0, *fixed)
        if g.fits():
            return []
        return [story.doc.problem(("layout", "dpi"), f"a {layout.page_size} page at "
                                  f"{layout.dpi} dpi would be {g.width:,} x {g.height:,} pixels,"
                                  " too big to compose or write", "lower `dpi`")]
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
