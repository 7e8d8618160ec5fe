"""Compose rendered panels into captioned comic pages.

In: the panels in story order (image, number, caption; an image may be missing), the story's
``LayoutSpec`` and title. Out: PIL page images, and ``write_pages`` saving them as
``page-1.png``, ``page-2.png``, ... plus ``story.pdf``, each written atomically.

A page is a grid: ``columns`` cells per row, each ``cell_width`` wide; a panel is scaled to the
cell's width and centred in its row without distortion; captions wrap to the cell width (CJK
text breaks between characters, Latin text between words, with the usual rules that keep closing
punctuation off the start of a line) and are never cut: a row grows to fit its longest caption.
The default font is Noto Sans CJK (from the ``manimgx-fonts-cjk`` package, SIL OFL 1.1), so
Chinese, Japanese and Korean captions always render.
"""

from __future__ import annotations

import io
import os
import time
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..paths import atomic_write_bytes
from ..story.schema import LayoutSpec
from .geometry import cell_width, measure
from .manifest import PDF
from .ownership import PAGE_MARK, PDF_CREATOR, page_mark

# Noto Sans CJK's collection: 0 JP, 1 KR, 2 SC, 3 TC, 4 HK. SC covers the course's captions;
# every face has the full CJK repertoire with its own regional glyph shapes.
_CJK_FACE = 2
# The date a PDF says it was made, unless SOURCE_DATE_EPOCH says otherwise: 1980-01-01, as
# reproducible zips and wheels use. The pages' content decides their bytes, not the clock.
REPRODUCIBLE_EPOCH = 315532800
_NO_LINE_START = set("，。、！？；：”’）》」』】〕〉…‥・ー—―-~～%）)]}.,!?;:'\"·")
_NO_LINE_END = set("“‘（《「『【〔〈([{")


@dataclass
class Cell:
    panel: str
    number: int
    image: Image.Image | None  # None: not rendered (yet)
    caption: str = ""


@lru_cache(maxsize=16)
def load_font(path: str | None, size: int, weight: str = "Regular") -> ImageFont.FreeTypeFont:
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError as exc:
            from ..errors import UserError

            raise UserError(f"layout.font: cannot read {path} as a font ({exc}); give a "
                            ".ttf, .otf or .ttc file, or leave `font` out for the built-in "
                            "Noto Sans CJK") from None
    font_file = resources.files("manimgx_fonts_cjk") / "NotoSansCJK-VF.otf.ttc"
    font = ImageFont.truetype(str(font_file), size, index=_CJK_FACE)
    font.set_variation_by_name(weight)
    return font


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
    return lines


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


def compose_pages(cells: list[Cell], layout: LayoutSpec, title: str) -> list[Image.Image]:
    per_page = layout.panels_per_page or max(len(cells), 1)
    pages = [cells[i:i + per_page] for i in range(0, len(cells), per_page)] or [[]]
    return [_page(page_cells, layout, title, n, len(pages))
            for n, page_cells in enumerate(pages)]


def _page(cells: list[Cell], layout: LayoutSpec, title: str, index: int,
          count: int) -> Image.Image:
    font = load_font(layout.font, layout.font_size)
    title_font = load_font(layout.font, int(layout.font_size * 1.6), "Bold")
    number_font = load_font(layout.font, max(10, int(layout.font_size * 0.7)), "Bold")
    sizes = [c.image.size if c.image else None for c in cells]
    captions = {c.panel: (wrap_text(c.caption, font, cell_width(sizes, layout))
                          if c.caption and layout.caption != "none" else []) for c in cells}
    title_text = (title if layout.title is True else layout.title or "") \
        if layout.title is not False else ""
    if title_text and count > 1:
        title_text = f"{title_text} ({index + 1}/{count})"
    g = measure(sizes, [len(captions[c.panel]) for c in cells], layout, bool(title_text))
    columns, cell_w, line_h, pad, width = g.columns, g.cell_width, g.line_height, g.pad, g.width
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    heights = g.rows
    background = _rgb(layout.background)
    ink = _rgb(layout.text_color)

    page = Image.new("RGB", (width, g.height), background)
    draw = ImageDraw.Draw(page)
    if title_text:
        w = draw.textlength(title_text, font=title_font)
        draw.text(((width - w) / 2, layout.margin), title_text, font=title_font, fill=ink)

    y = layout.margin + g.title_height
    for row, (image_h, text_h) in zip(rows, heights):
        for col, cell in enumerate(row):
            x = layout.margin + col * (cell_w + layout.gutter)
            image_y = y + (text_h if layout.caption == "above" else 0)
            text_y = y if layout.caption == "above" else y + image_h + pad
            _draw_panel(page, draw, cell, x, image_y, cell_w, image_h, layout, number_font, ink)
            for k, line in enumerate(captions[cell.panel]):
                w = draw.textlength(line, font=font)
                draw.text((x + (cell_w - w) / 2, text_y + k * line_h), line, font=font,
                          fill=ink)
        y += image_h + text_h + layout.gutter
    return page


def caption_lines(caption: str, font_size: int, font: str | None, width: int) -> int:
    """How many lines ``caption`` takes in a cell ``width`` pixels wide (for
    ``geometry.layout_problems``)."""
    return len(wrap_text(caption, load_font(font, font_size), width))


def _scaled(image: Image.Image, width: int) -> tuple[int, int]:
    return width, max(1, round(image.height * width / image.width))


def _draw_panel(page, draw, cell: Cell, x: int, y: int, cell_w: int, row_h: int,
                layout: LayoutSpec, number_font, ink) -> None:
    b = layout.border
    inner_w = cell_w - 2 * b
    if cell.image is not None:
        w, h = _scaled(cell.image, inner_w)
        image = cell.image.convert("RGB").resize((w, h), Image.LANCZOS)
    else:
        w = h = inner_w
        image = Image.new("RGB", (w, h), (235, 235, 235))
        ImageDraw.Draw(image).text((w / 2, h / 2), f"{cell.panel}\nnot rendered",
                                   font=number_font, fill=(120, 120, 120), anchor="mm",
                                   align="center")
    top = y + (row_h - h - 2 * b) // 2
    if b:
        draw.rectangle([x, top, x + w + 2 * b - 1, top + h + 2 * b - 1],
                       fill=_rgb(layout.border_color))
    page.paste(image, (x + b, top + b))
    if layout.panel_numbers:
        label = str(cell.number)
        box = draw.textbbox((0, 0), label, font=number_font)
        lw, lh = box[2] - box[0], box[3] - box[1]
        m = max(4, layout.font_size // 4)
        draw.rectangle([x + b, top + b, x + b + lw + 2 * m, top + b + lh + 2 * m],
                       fill=_rgb(layout.background))
        draw.text((x + b + m - box[0], top + b + m - box[1]), label, font=number_font, fill=ink)


def write_pages(pages: list[Image.Image], out_dir: Path, story: str) -> list[Path]:
    """page-N.png for each page and story.pdf with all of them; returns the paths written.
    Each carries storyboard's mark (``ownership``), so a later build knows it may replace it
    even when this one was killed before its manifest was written."""
    written = []
    for n, page in enumerate(pages, 1):
        path = out_dir / f"page-{n}.png"
        atomic_write_bytes(path, page_png(page, page_mark(story, n, len(pages))))
        written.append(path)
    buf = io.BytesIO()
    # Fixed dates (SOURCE_DATE_EPOCH where set): the same pages give the same PDF bytes.
    when = time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", REPRODUCIBLE_EPOCH)))
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:], resolution=150,
                  creationDate=when, modDate=when, creator=PDF_CREATOR)
    atomic_write_bytes(out_dir / PDF, buf.getvalue())
    written.append(out_dir / PDF)
    return written


def page_png(page: Image.Image, mark: str) -> bytes:
    """A page (or contact sheet) as PNG bytes, with storyboard's mark in it."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PAGE_MARK, mark)
    buf = io.BytesIO()
    page.save(buf, format="PNG", optimize=False, pnginfo=info)
    return buf.getvalue()


def contact_sheet(images: list[tuple[str, Image.Image]], columns: int = 4,
                  thumb: int = 256) -> Image.Image:
    """A numbered grid of candidate images (for rerolls): each labelled underneath."""
    layout = LayoutSpec(columns=columns, cell_width=thumb - thumb % 8, gutter=12, margin=16,
                        font_size=18, title=False, border=1, panel_numbers=True)
    cells = [Cell(panel=f"c{i}", number=i + 1, image=im, caption=label)
             for i, (label, im) in enumerate(images)]
    return _page(cells, layout, "", 0, 1)
