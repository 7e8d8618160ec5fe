"""Compose rendered panels into captioned comic pages.

In: the panels in story order (image, number, caption; an image may be missing), the story's
``LayoutSpec`` and title. Out: ``Page`` plans (what is drawn where, in pixels, from
``geometry.measure``), PIL page images rasterized from them, and their PNG bytes with
storyboard's mark (``page_png``). ``compose.write_pages`` saves them as ``page-1.png``,
``page-2.png``, ... plus ``story.pdf`` and ``story.cbz``, each written atomically.

A page is a grid: ``columns`` cells per row, each ``cell_width`` wide; a panel fits its cell
without distortion and is never scaled past its own pixels (unless ``upscale``); each caption
is attached to its own panel (below, above or inside it) and wraps to the cell width (CJK text
breaks between characters, with no lone character on a last line where one can move down,
Latin text between words, with the usual rules that keep closing punctuation off the start of
a line) and is never cut: a row grows to fit its longest caption. The title shrinks, then
wraps, to fit the page. The default font is Noto Sans CJK (from the ``manimgx-fonts-cjk``
package, SIL OFL 1.1), so Chinese, Japanese and Korean captions always render.
"""

from __future__ import annotations

import io
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from ..story.fields import page_inches
from ..story.schema import LayoutSpec
from .geometry import (
    INSIDE_PAD, Box, CellGeometry, PageGeometry, arrange, caption_width, cell_width, fits_inside,
    font_size, line_height, measure, panel_size, per_page, print_dpi, row_spans, sheet, spans,
    title_size,
)
from .balloons import Shape, balloon_items
from .fonts import SUPERSAMPLE, PageFont, draw_text, draw_turned, file_stamp, page_font
from .ownership import PAGE_MARK
from .pngenc import LEVEL, channels, encode_png

_NO_LINE_START = set("，。、！？；：”’）》」』】〕〉…‥・ー—―-~～%）)]}.,!?;:'\"·")
_NO_LINE_END = set("“‘（《「『【〔〈([{")


@dataclass
class Cell:
    panel: str
    number: int
    image: Image.Image | None  # None: not rendered (yet)
    caption: str = ""
    balloons: tuple = ()  # the panel's BalloonSpecs, drawn over its picture


def load_font(path: str | None, size: int, weight: str = "Regular") -> PageFont:
    """The page font at ``size`` pixels (``fonts.PageFont``: measured by its own advances);
    read again once the file has changed (a long-lived `storyboard serve`)."""
    return _load_font(path, size, weight, file_stamp(path) if path else None)


@lru_cache(maxsize=48)
def _load_font(path: str | None, size: int, weight: str, stamp: tuple | None) -> PageFont:
    try:
        return page_font(path, size, weight)
    except OSError as exc:
        from ..errors import UserError

        raise UserError(f"layout.font: cannot read {path} as a font ({exc}); give a "
                        ".ttf, .otf or .ttc file, or leave `font` out for the built-in "
                        "Noto Sans CJK") from None


load_font.cache_clear = _load_font.cache_clear  # type: ignore[attr-defined]


def _breakable(ch: str) -> bool:
    """Characters a line may break around without a space: CJK ideographs, kana, Hangul,
    full-width forms."""
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _units(text: str) -> list[str]:
    """Split into unbreakable units: single wide characters, words, and runs of spaces."""
    units: list[str] = []
    word = ""
    for ch in text:
        if ch == " " or _breakable(ch):
            if word:
                units.append(word)
                word = ""
            units.append(ch)
        else:
            word += ch
    if word:
        units.append(word)
    # Keep closing punctuation attached to what precedes it, opening to what follows.
    merged: list[str] = []
    for unit in units:
        if merged and unit[0] in _NO_LINE_START and merged[-1] != " ":
            merged[-1] += unit
        elif merged and merged[-1][-1] in _NO_LINE_END and unit != " ":
            merged[-1] += unit
        else:
            merged.append(unit)
    return merged


def wrap_text(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Lines of ``text`` that each fit ``width`` pixels; explicit newlines are kept."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        start = len(lines)
        line = ""
        for unit in _units(paragraph):
            candidate = line + unit
            if font.getlength(candidate.rstrip()) <= width or not line.strip():
                if font.getlength(candidate.rstrip()) > width:
                    # A single unit wider than the cell (a very long word): split it by letters.
                    pieces = _split_long(candidate, font, width)
                    lines.extend(pieces[:-1])
                    line = pieces[-1]
                else:
                    line = candidate
            else:
                lines.append(line.rstrip())
                line = unit.lstrip()
        lines.append(line.rstrip())
        _no_orphan(lines, start, font, width)
    return lines


def _no_orphan(lines: list[str], start: int, font: ImageFont.FreeTypeFont, width: int) -> None:
    """A paragraph (``lines[start:]``) whose last line is one lone wide character (with any
    punctuation attached to it) takes the previous line's last unit down with it, when the
    previous line keeps at least two and the new last line still fits: CJK typesetting avoids
    such orphans."""
    if len(lines) - start < 2:
        return
    last = _units(lines[-1])
    if len(last) != 1 or not _breakable(last[0][0]):
        return
    previous = _units(lines[-2])
    if len(previous) < 3 or previous[-1] == " " or not _breakable(previous[-1][0]):
        return
    moved = previous[-1] + lines[-1]
    if font.getlength(moved) <= width:
        lines[-2], lines[-1] = "".join(previous[:-1]).rstrip(), moved


def _split_long(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    pieces, current = [], ""
    for ch in text:
        if current and font.getlength(current + ch) > width:
            pieces.append(current)
            current = ch
        else:
            current += ch
    pieces.append(current)
    return pieces


def _rgb(color: str) -> tuple[int, int, int]:
    return Image.new("RGB", (1, 1), color).getpixel((0, 0))


@dataclass(frozen=True)
class Text:
    """One line of text, ``x`` its left edge and ``y`` its baseline, in page pixels."""
    x: float
    y: int
    text: str
    size: int
    weight: str  # "Regular" or "Bold"
    color: tuple[int, int, int]
    rotate: int = 0  # 90: turned a quarter turn clockwise about (x, y) (vertical text)


@dataclass(frozen=True)
class Picture:
    box: Box
    image: Image.Image  # already at the box's size


@dataclass(frozen=True)
class Fill:
    box: Box
    color: tuple[int, int, int]


@dataclass
class Page:
    """A page as what is drawn where, in pixels: ``rasterize`` makes the PNG of it and
    ``pdf.write_pdf`` the PDF page (pictures as images, text as text), so both show the
    same."""
    width: int
    height: int
    background: tuple[int, int, int]
    items: list[Text | Picture | Fill | Shape]
    font: str | None  # the layout's font file; None: the built-in one
    geometry: PageGeometry
    dpi: int = 300  # its pixels per inch on paper
    title: str = ""  # the story's, for the PDF's document information
    direction: str = "ltr"
    inches: tuple[float, float] | None = None  # the sheet's exact size, with a page_size
    bleed: int = 0  # pixels on every side past the trimmed page (in width and height)

    def image(self) -> Image.Image:
        return rasterize(self)


def compose_pages(cells: list[Cell], layout: LayoutSpec, title: str) -> list[Image.Image]:
    """The pages as images (``plan_pages`` says what is drawn)."""
    return [rasterize(page) for page in plan_pages(cells, layout, title)]


def plan_pages(cells: list[Cell], layout: LayoutSpec, title: str) -> list[Page]:
    """Every page of a story, all the same size: the ``page_size`` sheet, else the biggest
    page's (a shorter last page keeps its content at the top), as a printed book's pages are;
    printed at ``geometry.print_dpi``."""
    count = per_page(layout, len(cells))
    chunks = [cells[i:i + count] for i in range(0, len(cells), count)] or [[]]
    pages = [plan_page(chunk, layout, title, n, len(chunks)) for n, chunk in enumerate(chunks)]
    width, height = max(p.width for p in pages), max(p.height for p in pages)
    dpi = print_dpi(layout, width, height)
    return [replace(bled(placed(p, width, height, centre_y=False), layout), dpi=dpi)
            for p in pages]


def bled(page: Page, layout: LayoutSpec) -> Page:
    """``page`` grown by the layout's ``bleed`` on every side, its background running out to
    the edge, with ``trim_marks`` in that margin at the trimmed page's corners."""
    b = layout.bleed
    if not b:
        return page
    page = replace(placed(page, page.width + 2 * b, page.height + 2 * b), bleed=b)
    if layout.trim_marks:
        page.items += trim_marks(page.width, page.height, b, layout.dpi)
    return page


def trim_marks(width: int, height: int, bleed: int, dpi: int) -> list[Shape]:
    """Crop marks at the trim's four corners, in the bleed: along each trim edge, from the
    page's edge to a gap short of the corner, so none reaches into the trimmed page (a cut a
    hair off still shows no line). A quarter point thick (the printers' usual hairline)."""
    stroke = max(1, round(dpi * 0.25 / 72))
    gap = max(1, bleed // 3)
    right, bottom = width - bleed, height - bleed
    lines = []
    for x, out in ((bleed, 0), (right, width)):  # the trim's left and right edges
        for y, edge in ((bleed, 0), (bottom, height)):  # its top and bottom
            near_y = bleed - gap if edge == 0 else bottom + gap
            near_x = bleed - gap if out == 0 else right + gap
            lines.append(((x, edge), (x, near_y)))  # vertical, above/below the corner
            lines.append(((out, y), (near_x, y)))  # horizontal, left/right of it
    return [Shape("line", Box(int(min(a[0], c[0])), int(min(a[1], c[1])),
                              int(abs(a[0] - c[0])) + 1, int(abs(a[1] - c[1])) + 1),
                  (a, c), fill=(0, 0, 0), width=stroke) for a, c in lines]


def plan_page(cells: list[Cell], layout: LayoutSpec, title: str, index: int,
              count: int) -> Page:
    """One page; with a ``page_size``, its content scaled (cells, text, gutters and borders
    alike; down only, unless ``upscale``) to fit the sheet inside the margin, and centred."""
    page = _plan(cells, layout, title, index, count)
    fixed = sheet(layout)
    if fixed is None:
        return page
    (width, height), m = fixed, layout.margin
    scale = min((width - 2 * m) / max(1, page.width - 2 * m),
                (height - 2 * m) / max(1, page.height - 2 * m))
    scale = scale if layout.upscale else min(1.0, scale)
    while scale != 1.0 and scale > 0.01:
        page = _plan(cells, _scaled(layout, page.geometry, scale), title, index, count)
        if page.width <= width and page.height <= height:
            break
        scale *= 0.97  # rounding (whole pixels, whole font sizes) overshot: a little smaller
    return replace(placed(page, width, height), inches=page_inches(layout.page_size))


def _scaled(layout: LayoutSpec, g: PageGeometry, scale: float) -> LayoutSpec:
    return layout.model_copy(update={
        "cell_width": max(8, int(g.cell_width * scale)),
        "cell_height": max(8, int(layout.cell_height * scale)) if layout.cell_height else None,
        "font_size": max(6, int(g.font_size * scale)),
        "gutter": round(layout.gutter * scale),
        "border": max(1, round(layout.border * scale)) if layout.border else 0,
        "upscale": True})  # the cell is now the size the panels are meant to be drawn at


def placed(page: Page, width: int, height: int, centre_y: bool = True) -> Page:
    """``page`` on a ``width`` x ``height`` one, centred across (and down, unless not)."""
    dx = (width - page.width) // 2
    dy = (height - page.height) // 2 if centre_y else 0
    if (dx, dy, width, height) == (0, 0, page.width, page.height):
        return page

    def move(box: Box | None) -> Box | None:
        return None if box is None else Box(box.x + dx, box.y + dy, box.w, box.h)

    items = [replace(i, x=i.x + dx, y=i.y + dy) if isinstance(i, Text)
             else replace(i, box=move(i.box), points=tuple((x + dx, y + dy) for x, y in i.points))
             if isinstance(i, Shape) else replace(i, box=move(i.box)) for i in page.items]
    g = page.geometry
    cells = tuple(CellGeometry(move(c.panel), move(c.caption), c.text_top + dy)
                  for c in g.cells)
    return replace(page, width=width, height=height, items=items,
                   geometry=replace(g, cells=cells, width=width, height=height))


def page_title(layout: LayoutSpec, title: str, index: int, count: int) -> str:
    text = (title if layout.title is True else layout.title or "") \
        if layout.title is not False else ""
    return f"{text} ({index + 1}/{count})" if text and count > 1 else text


def fit_title(text: str, font_path: str | None, largest: int, smallest: int,
              width: int) -> tuple[int, list[str]]:
    """The title's size and lines: as large as fits ``width`` on one line, shrinking from
    ``largest`` down to ``smallest`` (the captions' size), then wrapped at that size; the
    "(n/N)" suffix is one unit and never splits."""
    size = largest
    while size > smallest and load_font(font_path, size, "Bold").getlength(text) > width:
        size = max(smallest, int(size * 0.92))
    return size, wrap_text(text, load_font(font_path, size, "Bold"), width)


def _plan(cells: list[Cell], layout: LayoutSpec, title: str, index: int, count: int) -> Page:
    sizes = [c.image.size if c.image else None for c in cells]
    widths = spans([c.panel for c in cells], layout)
    tall = row_spans([c.panel for c in cells], layout)
    cell_w = cell_width(sizes, layout, widths)
    gutter = layout.gutter
    wide = [n * cell_w + (n - 1) * gutter for n in widths]  # each cell, spans included
    fs = font_size(layout, cell_w)
    font = load_font(layout.font, fs)
    show = layout.caption != "none"
    captions = [wrap_text(c.caption, font, caption_width(s, w, layout, fs, k))
                if c.caption and show else [] for c, s, w, k in zip(cells, sizes, wide, tall)]
    if layout.caption == "inside":  # one that would cover most of its panel goes below it
        captions = [lines if fits_inside(len(lines) * line_height(fs),
                                         panel_size(s, w - 2 * layout.border, layout, k)[1], fs)
                    else wrap_text(c.caption, font, w)
                    for c, s, w, k, lines in zip(cells, sizes, wide, tall, captions)]
    title_text = page_title(layout, title, index, count)
    columns = max([col + n for row in arrange(widths, layout, tall) for _, col, n in row],
                  default=1)
    inner = columns * cell_w + (columns - 1) * gutter
    t_size, t_lines = fit_title(title_text, layout.font, title_size(layout, cell_w), fs,
                                inner) if title_text else (0, [])
    g = measure(sizes, [len(c) for c in captions], layout, len(t_lines), t_size or None,
                widths, tall)
    ink = _rgb(layout.text_color)
    background = _rgb(layout.background)
    items: list[Text | Picture | Fill] = []
    t_font = load_font(layout.font, g.title_size, "Bold")
    for k, line in enumerate(t_lines):
        x = (g.width - t_font.getlength(line)) / 2
        items.append(Text(x, layout.margin + k * g.title_line_height + _ascent(t_font), line,
                          g.title_size, "Bold", ink))
    for cell, box, lines in zip(cells, g.cells, captions):
        items += _panel_items(cell, box.panel, layout, g, ink)
        if box.caption is None:
            continue
        c = box.caption
        if c.y < box.panel.y + box.panel.h:  # inside its panel, on a band
            band = int(g.font_size * INSIDE_PAD)
            items.append(Fill(Box(c.x - band, c.y - band // 2, c.w + 2 * band,
                                  c.h + band + band // 2), background))  # the panel's foot
        for k, line in enumerate(lines):
            items.append(Text(c.x + (c.w - font.getlength(line)) / 2,
                              box.text_top + k * g.line_height + _ascent(font), line, g.font_size,
                              "Regular", ink))
    return Page(g.width, g.height, background, items, layout.font, g, layout.dpi, title,
                layout.direction)


def _ascent(font: ImageFont.FreeTypeFont) -> int:
    return font.getmetrics()[0]


def _panel_items(cell: Cell, box: Box, layout: LayoutSpec, g: PageGeometry,
                 ink) -> list[Text | Picture | Fill]:
    b = layout.border
    inner = Box(box.x + b, box.y + b, box.w - 2 * b, box.h - 2 * b)
    items: list[Text | Picture | Fill] = []
    if b:
        items.append(Fill(box, _rgb(layout.border_color)))
    grey = (120, 120, 120)
    if cell.image is not None:
        image = cell.image.convert("RGB")
        if image.size != (inner.w, inner.h):
            # Scaled to cover the box (the same as fitting it, unless `fit: cover` cropped
            # it), then its overflow cut off evenly on both sides.
            w, h = image.size
            scale = max(inner.w / w, inner.h / h)
            sw, sh = max(inner.w, round(w * scale)), max(inner.h, round(h * scale))
            image = image.resize((sw, sh), Image.LANCZOS)
            left, top = (sw - inner.w) // 2, (sh - inner.h) // 2
            image = image.crop((left, top, left + inner.w, top + inner.h))
        items.append(Picture(inner, image))
    else:  # not rendered: a grey square that says so
        items.append(Fill(inner, (235, 235, 235)))
        size = max(6, min(g.font_size, inner.w // 8))
        font = load_font(layout.font, size, "Bold")
        for k, line in enumerate((cell.panel, "not rendered")):
            items.append(Text(inner.x + (inner.w - font.getlength(line)) / 2,
                              inner.y + inner.h // 2 + (k - 1) * line_height(size)
                              + _ascent(font), line, size, "Bold", grey))
    if cell.balloons:
        items += balloon_items(cell.balloons, inner, layout.font, g.font_size, ink)
    if layout.panel_numbers:
        # As large as the captions' numbers, but never more than a quarter of the panel.
        size = max(6, min(int(g.font_size * 0.7), inner.w // 4, inner.h // 4))
        font = load_font(layout.font, size, "Bold")
        label = str(cell.number)
        m = max(2, size // 3)
        items.append(Fill(Box(inner.x, inner.y, int(font.getlength(label)) + 2 * m,
                              line_height(size) + m), _rgb(layout.background)))
        items.append(Text(inner.x + m, inner.y + m // 2 + _ascent(font), label, size,
                          "Bold", ink))
    return items


def rasterize(page: Page) -> Image.Image:
    """The page as a PIL image."""
    image = Image.new("RGB", (page.width, page.height), page.background)
    draw = ImageDraw.Draw(image)
    for item in page.items:
        if isinstance(item, Picture):
            image.paste(item.image, (item.box.x, item.box.y))
        elif isinstance(item, Fill):
            b = item.box
            draw.rectangle([b.x, b.y, b.x + b.w - 1, b.y + b.h - 1], fill=item.color)
        elif isinstance(item, Shape):
            b = item.box
            corners = [b.x, b.y, b.x + b.w - 1, b.y + b.h - 1]
            style = {"fill": item.fill, "outline": item.outline, "width": item.width}
            if item.kind == "line":
                draw.line(list(item.points), fill=item.outline, width=item.width)
            elif item.kind in ("oval", "bubble"):
                draw.ellipse(corners, **style)
            elif item.kind == "box":
                draw.rectangle(corners, **style)
            else:
                draw.polygon(list(item.points), **style)
        else:
            fonts = (load_font(page.font, item.size, item.weight),
                     load_font(page.font, item.size * SUPERSAMPLE, item.weight))
            if item.rotate:
                draw_turned(image, item.x, item.y, item.text, *fonts, item.color)
            else:
                draw_text(image, item.x, item.y, item.text, *fonts, item.color)
    return image


def caption_lines(caption: str, font_size: int, font: str | None, width: int) -> int:
    """How many lines ``caption`` takes in a cell ``width`` pixels wide (for
    ``geometry.layout_problems``)."""
    return len(wrap_text(caption, load_font(font, font_size), width))


def page_png(page: Image.Image, mark: str, dpi: int | None = None) -> bytes:
    """A page (or contact sheet) as PNG bytes, with storyboard's mark in it (and, for a page,
    its pixels per inch, so it prints at the size the PDF's page has)."""
    if channels(page.mode) is not None:
        # Deflated on every core (``pngenc``): after the last panel, a build waits for this.
        return encode_png(page, {PAGE_MARK: mark}, dpi)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PAGE_MARK, mark)
    buf = io.BytesIO()
    page.save(buf, format="PNG", optimize=False, pnginfo=info, compress_level=LEVEL,
              **({"dpi": (dpi, dpi)} if dpi else {}))
    return buf.getvalue()


def contact_sheet(images: list[tuple[str, Image.Image]], columns: int = 4,
                  thumb: int = 256) -> Image.Image:
    """A numbered grid of candidate images (for rerolls): each labelled underneath."""
    layout = LayoutSpec(columns=columns, cell_width=thumb - thumb % 8, gutter=12, margin=16,
                        font_size=18, title=False, border=1, panel_numbers=True)
    cells = [Cell(panel=f"c{i}", number=i + 1, image=im, caption=label)
             for i, (label, im) in enumerate(images)]
    return rasterize(plan_page(cells, layout, "", 0, 1))
