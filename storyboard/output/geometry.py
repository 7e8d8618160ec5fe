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
    return max(1, -(-panels // per_page(layout, panels)))


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

    def fits(self, bleed: int = 0) -> bool:
        """Whether the page, grown by ``bleed`` pixels on every side (as ``pages.bled`` grows
        it), stays within what can be composed and written."""
        w, h = self.width + 2 * bleed, self.height + 2 * bleed
        return max(w, h) <= MAX_PAGE_SIDE and w * h <= MAX_PAGE_PIXELS


def sheet(layout: LayoutSpec) -> tuple[int, int] | None:
    """The page's pixels with a ``page_size`` (its inches at ``dpi``), else None."""
    if layout.page_size is None:
        return None
    w, h = page_inches(layout.page_size)
    return round(w * layout.dpi), round(h * layout.dpi)


READABLE_INCHES = 210 / 25.4  # A5's longer side: the least a page is printed at, unless told


def print_dpi(layout: LayoutSpec, width: int, height: int) -> int:
    """The pixels per inch a ``width`` x ``height`` page is printed at (its PDF page's size,
    its PNG's pHYs): the layout's ``dpi``, except that a page of few pixels (small panels,
    like the built-in models' 128-pixel ones) would be a stamp at 300 dpi (1.2 x 1.5 in), so
    when the story gives neither ``dpi`` nor ``page_size`` nor ``bleed`` (whose lengths are
    at ``dpi``), its longer side is spread over ``READABLE_INCHES`` instead."""
    if layout.page_size or layout.bleed or "dpi" in layout.model_fields_set:
        return layout.dpi
    return max(1, min(layout.dpi, int(max(width, height) / READABLE_INCHES)))


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


def scaled_size(size: tuple[int, int] | None, inner: tuple[int, int | None],
                layout: LayoutSpec) -> tuple[int, int]:
    """A panel's size once scaled for a cell whose picture area is ``inner`` (width, and height
    with ``cell_height``): its aspect ratio kept, scaled down to fit (``fit: cover``: to fill,
    the overflow cropped) and, unless ``layout.upscale``, never up past its own pixels (that
    only blurs it). A panel not rendered is a square placeholder (or fills a fixed cell)."""
    inner_w, inner_h = inner
    if size is None:
        return inner_w, inner_h or inner_w
    w, h = size
    if inner_h is None:
        scale = inner_w / w
    elif layout.fit == "cover":
        scale = max(inner_w / w, inner_h / h)
    else:
        scale = min(inner_w / w, inner_h / h)
    scale = scale if layout.upscale else min(1.0, scale)
    return max(1, round(w * scale)), max(1, round(h * scale))


def panel_size(size: tuple[int, int] | None, inner_w: int, layout: LayoutSpec,
               rows: int = 1) -> tuple[int, int]:
    """A panel's drawn size in a cell ``inner_w`` wide (``scaled_size``, cropped to the cell);
    with ``cell_height``, a panel across ``rows`` rows has their height and the gutters and
    borders between them."""
    inner_h = layout.cell_height and (rows * layout.cell_height
                                      + (rows - 1) * (layout.gutter + 2 * layout.border))
    w, h = scaled_size(size, (inner_w, inner_h), layout)
    return min(w, inner_w), min(h, inner_h) if inner_h else h


INSIDE_PAD = 0.5  # of the font size: the band an inside caption sits on, around its lines


def caption_width(size: tuple[int, int] | None, width: int, layout: LayoutSpec, fs: int,
                  rows: int = 1) -> int:
    """The width a caption wraps to in a cell ``width`` wide (a spanning cell's included): the
    cell's, or for ``inside`` the panel's less the band's padding."""
    if layout.caption != "inside":
        return width
    w, _ = panel_size(size, width - 2 * layout.border, layout, rows)
    return max(1, w - 2 * int(fs * INSIDE_PAD))


# A page's rows when the layout does not say: a comic page holds 6-9 panels, and one page of
# a long story's every panel is tens of thousands of pixels tall, composed only after its last
# panel (40 SDXL panels waited 11 s for it; issue 17).
DEFAULT_PAGE_PANELS = 8


def per_page(layout: LayoutSpec, panels: int) -> int:
    """Panels a page: the layout's, else a ``rows`` pattern's, else all of them up to about
    ``DEFAULT_PAGE_PANELS`` (whole rows: 8 in 2 or 4 columns, 9 in 3)."""
    if layout.panels_per_page:
        return layout.panels_per_page
    if layout.rows:
        return sum(len(row) for row in layout.rows)
    whole_rows = layout.columns * -(-DEFAULT_PAGE_PANELS // layout.columns)
    return max(min(panels, whole_rows), 1)


def spans(panels: Sequence[str], layout: LayoutSpec) -> list[int]:
    """How many columns each of a page's panels (by id, in order) takes: by its place in the
    ``rows`` pattern, else ``span`` (1 when not named)."""
    if layout.rows:
        pattern = [n for row in layout.rows for n in row]
        return [pattern[i % len(pattern)] for i in range(len(panels))]
    return [min(layout.span.get(p, 1), layout.columns) for p in panels]


def row_spans(panels: Sequence[str], layout: LayoutSpec) -> list[int]:
    """How many rows each of a page's panels (by id, in order) takes: ``row_span``, else 1."""
    return [layout.row_span.get(p, 1) for p in panels]


def arrange(spans_: Sequence[int], layout: LayoutSpec,
            tall: Sequence[int] | None = None) -> list[list[tuple[int, int, int]]]:
    """The page's rows: (panel index, first column, span) each, in the row where the panel
    starts. ``rows`` places the panels row by row as its pattern says (repeating it);
    otherwise they flow left to right, a panel that does not fit in what is left of a row
    starts the next one, and a panel across ``tall[i]`` rows keeps its columns in the rows
    under it taken, so the panels after it flow around it (a tall panel beside two stacked
    ones). A row that panels from above fill starts none: it is there, empty."""
    rows: list[list[tuple[int, int, int]]] = []
    if layout.rows:
        i = 0
        while i < len(spans_):
            pattern_row = layout.rows[len(rows) % len(layout.rows)]
            row, col = [], 0
            for _ in pattern_row:
                if i == len(spans_):
                    break
                row.append((i, col, spans_[i]))
                col += spans_[i]
                i += 1
            rows.append(row)
        return rows
    tall = tall or [1] * len(spans_)
    taken: set[tuple[int, int]] = set()  # (row, column) cells of panels across rows
    r, col = -1, layout.columns
    for i, n in enumerate(spans_):
        while col + n > layout.columns or any(
                (r + dr, col + dc) in taken for dr in range(tall[i]) for dc in range(n)):
            if col + n > layout.columns:
                r, col = r + 1, 0
            else:
                col += 1
        while len(rows) < r + tall[i]:
            rows.append([])
        rows[r].append((i, col, n))
        taken.update((r + dr, col + dc) for dr in range(tall[i]) for dc in range(n))
        col += n
    return rows


def fits_inside(text_h: int, panel_h: int, fs: int) -> bool:
    """Whether a caption ``text_h`` tall, on its band, covers at most half its panel."""
    return text_h + 2 * int(fs * INSIDE_PAD) <= panel_h // 2


def measure(sizes: Sequence[tuple[int, int] | None], caption_lines: Sequence[int],
            layout: LayoutSpec, title_lines: int, title_px: int | None = None,
            spans_: Sequence[int] | None = None,
            tall: Sequence[int] | None = None) -> PageGeometry:
    """The geometry of one page: ``sizes`` are the panels' pixel sizes (None: not rendered,
    drawn as a square placeholder), ``caption_lines`` their captions' line counts at
    ``caption_width``, ``title_lines`` the title's line count (0: no title) at ``title_px``
    (default: ``title_size``), ``spans_`` the columns each panel takes (default: one),
    ``tall`` the rows (default: one).

    Each caption is attached to its own panel: ``below`` starts right under it (panels of a
    row share their top edge), ``above`` ends right over it (panels share their bottom edge),
    ``inside`` sits on a band at the panel's foot, and goes below a panel it would cover more
    than half of. A panel across rows has the rows' height and the gutters between them: it
    starts at the top of its first (``above``: ends at the foot of its last), and when it and
    its caption are taller than those rows, its last row grows. ``direction: rtl`` fills each
    row from the right."""
    spans_ = list(spans_ or [1] * len(sizes))
    tall = list(tall or [1] * len(sizes))
    rows = arrange(spans_, layout, tall)
    columns = max([col + n for row in rows for _, col, n in row], default=1)
    cell_w = cell_width(sizes, layout, spans_)
    fs = font_size(layout, cell_w)
    line_h = line_height(fs)
    pad = max(4, fs // 3)
    b, m, gutter = layout.border, layout.margin, layout.gutter
    t_size = title_px or title_size(layout, cell_w)
    t_line = line_height(t_size)
    title_h = title_lines * t_line + gutter if title_lines else 0
    inside = layout.caption == "inside"
    start = {i: r for r, row in enumerate(rows) for i, _, _ in row}
    wide = {i: n * cell_w + (n - 1) * gutter for i, n in enumerate(spans_)}
    drawn = {i: panel_size(sizes[i], wide[i] - 2 * b, layout, tall[i]) for i in start}
    text = {i: (caption_lines[i] * line_h if caption_lines[i] else 0) for i in start}
    within = {i: inside and fits_inside(text[i], drawn[i][1], fs) for i in start}
    below = {i: 0 if within[i] else text[i] + (pad if text[i] else 0) for i in start}
    need = {i: drawn[i][1] + 2 * b + below[i] for i in start}
    row_h = [max([need[i] for i, _, _ in row if tall[i] == 1], default=0) for row in rows]
    panel_h = [max([drawn[i][1] + 2 * b for i, _, _ in row if tall[i] == 1], default=0)
               for row in rows]
    # Panels across rows, the shortest reach first: the last of a panel's rows grows by what
    # it and its caption need past them.
    for i in sorted((i for i in start if tall[i] > 1), key=lambda i: start[i] + tall[i]):
        first, last = start[i], start[i] + tall[i] - 1
        have = sum(row_h[first:last + 1]) + (last - first) * gutter
        row_h[last] += max(0, need[i] - have)
    tops = [m + title_h + sum(row_h[:r]) + r * gutter for r in range(len(rows))]
    cells: dict[int, CellGeometry] = {}
    for r, row in enumerate(rows):
        for i, col, n in row:
            y = tops[r]
            last = r + tall[i] - 1
            area_h = tops[last] + row_h[last] - y
            col = columns - col - n if layout.direction == "rtl" else col
            x = m + col * (cell_w + gutter)
            w, h = drawn[i]
            px = x + (wide[i] - w - 2 * b) // 2
            if layout.caption == "above":
                panel = Box(px, y + area_h - h - 2 * b, w + 2 * b, h + 2 * b)
                caption = Box(x, panel.y - pad - text[i], wide[i], text[i] + pad)
                top = caption.y
            elif within[i]:
                room = panel_h[r] if tall[i] == 1 else area_h
                panel = Box(px, y + (room - h - 2 * b) // 2, w + 2 * b, h + 2 * b)
                band = int(fs * INSIDE_PAD)
                caption = Box(px + b + band, panel.y + panel.h - b - band - text[i],
                              w - 2 * band, text[i])
                top = caption.y
            else:
                panel = Box(px, y, w + 2 * b, h + 2 * b)
                caption = Box(x, y + panel.h, wide[i], pad + text[i])
                top = caption.y + pad
            cells[i] = CellGeometry(panel, caption if text[i] else None, top)
    width = 2 * m + columns * cell_w + (columns - 1) * gutter
    height = m + title_h + sum(row_h) + max(0, len(rows) - 1) * gutter + m
    return PageGeometry(columns, cell_w, fs, line_h, pad, tuple(cells[i] for i in
                                                                 range(len(sizes))),
                        t_size, t_line, title_h, width, max(height, 2 * m + 1))


def cell_width(sizes: Sequence[tuple[int, int] | None], layout: LayoutSpec,
               spans_: Sequence[int] | None = None) -> int:
    """Every cell's width: the layout's, else the widest panel's (with its border; a panel
    spanning columns shares its width with the gutters between them), so that no panel is
    drawn past its own size."""
    if layout.cell_width:
        return layout.cell_width
    spans_ = spans_ or [1] * len(sizes)
    b, g = layout.border, layout.gutter
    return max((-(-(s[0] + 2 * b - (n - 1) * g) // n) for s, n in zip(sizes, spans_) if s),
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
    # An inside caption has no height of its own, unless it would cover most of its panel and
    # goes below it: the bound puts every one below.
    captions = layout.caption != "none"
    if layout.caption == "inside":
        layout = layout.model_copy(update={"caption": "below"})
    exact: dict[int, int] = {}  # panel index -> its caption's measured line count

    def page(first: int, count: int) -> PageGeometry:
        chunk = range(first, min(first + count, len(jobs)))
        # A panel not rendered yet is drawn as a square: a page is checked at its tallest.
        sizes = [(jobs[i].width, max(jobs[i].width, jobs[i].height)) for i in chunk]
        widths = spans([jobs[i].panel for i in chunk], layout)
        tall = row_spans([jobs[i].panel for i in chunk], layout)
        bound = measure(sizes, [most_lines(jobs[i].caption) if captions else 0 for i in chunk],
                        layout, most_lines(title), spans_=widths, tall=tall)
        if bound.fits(bleed) or not (captions or title):
            return bound
        cell_w, fs = bound.cell_width, bound.font_size
        inner = bound.width - 2 * layout.margin
        for i in chunk:
            if i not in exact:
                exact[i] = lines(jobs[i].caption, fs, font, cell_w) \
                    if jobs[i].caption and captions else 0
        # The title at its largest size: the most lines, each the tallest (pages shrinks it).
        t_lines = lines(title, title_size(layout, cell_w), font, inner) if title else 0
        return measure(sizes, [exact[i] for i in chunk], layout, t_lines, spans_=widths,
                       tall=tall)

    # The page as written: a bleed grows it by that many pixels on every side.
    bleed = layout.bleed
    bled = f" with its bleed ({bleed:,} pixels on every side)" if bleed else ""
    fixed = sheet(layout)
    if fixed is not None:  # every page is the sheet, whatever is on it
        g = measure([], [], layout, 0)
        g = PageGeometry(g.columns, g.cell_width, g.font_size, g.line_height, g.pad, (), 0, 0,
                         0, *fixed)
        if g.fits(bleed):
            return []
        return [story.doc.problem(("layout", "dpi"), f"a {layout.page_size} page at "
                                  f"{layout.dpi} dpi would be {g.width + 2 * bleed:,} x "
                                  f"{g.height + 2 * bleed:,} pixels{bled}, too big to compose "
                                  "or write", "lower `dpi`" + (" or `bleed`" if bleed and
                                                               g.fits() else ""))]
    count = per_page(layout, len(jobs))
    pages = [page(first, count) for first in range(0, len(jobs), count)]
    too_big = [(n + 1, g) for n, g in enumerate(pages) if not g.fits(bleed)]
    if not too_big:
        # Every page of a story is the same size (pages.plan_pages): the widest page's width
        # by the tallest page's height, which can be too big when no one page is.
        width = max(g.width for g in pages)
        height = max(g.height for g in pages)
        alike = PageGeometry(*[getattr(pages[0], f) for f in (
            "columns", "cell_width", "font_size", "line_height", "pad", "cells", "title_size",
            "title_line_height", "title_height")], width, height)
        if alike.fits(bleed):
            return []
        return [story.doc.problem(("layout",), f"every page would be {width + 2 * bleed:,} x "
                                  f"{height + 2 * bleed:,} pixels{bled} (all pages take the "
                                  "widest page's width and the tallest page's height), more "
                                  f"than {MAX_PAGE_PIXELS:,} pixels: too big to compose or "
                                  "write", "give the panels sizes closer to each other, or "
                                  "set `page_size` (every page that sheet, the panels scaled "
                                  "to fit)")]
    number, geometry = too_big[0]
    width, height = geometry.width + 2 * bleed, geometry.height + 2 * bleed
    where = f"page {number} would be {width:,} x {height:,} pixels{bled}"
    limit = (f"more than {MAX_PAGE_SIDE:,} pixels a side" if max(width, height) > MAX_PAGE_SIDE
             else f"more than {MAX_PAGE_PIXELS:,} pixels")
    if width > MAX_PAGE_SIDE:
        hint = "use fewer `columns` or a smaller `cell_width`"
    else:
        fitting = next((n for n in range(min(count, len(jobs)) - 1, 0, -1)
                        if all(page(first, n).fits(bleed)
                               for first in range(0, len(jobs), n))),
                       None)
        hint = (f"set `panels_per_page: {fitting}` to spread the panels over more pages"
                if fitting else "shorten the longest captions, or lower `font_size` or "
                "`columns`")
    if bleed and geometry.fits():
        hint = f"lower `bleed` (without it the page is {geometry.width:,} x " \
               f"{geometry.height:,} pixels), or {hint}"
    more = f" ({len(too_big)} pages are too big)" if len(too_big) > 1 else ""
    return [story.doc.problem(("layout",), f"{where}, {limit}: too big to compose or write"
                              f"{more}", hint)]
