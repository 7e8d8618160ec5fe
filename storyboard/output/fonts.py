"""The page font: Pillow draws its glyphs, the font's own metrics at the weight drawn say how
far apart.

In: the layout's font file (None: the built-in Noto Sans CJK, face ``glyphs.CJK_FACE``), a size
in pixels and a weight (Regular, Bold). Out: ``PageFont``, a Pillow font whose ``getlength`` is
the sum of the characters' advances at that weight, and ``draw_text``, which puts each glyph at
those advances.

Why not Pillow's own layout: Noto Sans CJK is a variable font, and Pillow applies the weight to
the outlines but not to the advances (its HVAR table): every weight was spaced like Thin, so
Regular text was cramped by about 5% and Bold by 10%, and the PDF (whose embedded instance has
the real advances) came out wider than the PNG. The advances here are read with fontTools at
the weight (``getGlyphSet(location=...)`` applies HVAR), as the PDF's font is instanced, so a
line has the same width in the PNG and the PDF. Like the PDF (fpdf2 places glyphs one by one),
no kerning is applied. A character the font lacks and the emoji font has
(``glyphs.emoji_font``) is measured and drawn in that one.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import ImageFont

from .glyphs import CJK_FACE, builtin_font, emoji_font

WEIGHTS = {"Regular": 400, "Bold": 700}


class PageFont(ImageFont.FreeTypeFont):
    """A Pillow font measured by the font's own advances at its weight."""

    advances: dict[str, float]  # character -> advance in pixels, filled as characters come
    _glyph_widths: object  # the fontTools glyph set at the weight, and the font's cmap
    _cmap: dict[int, str]
    _per_unit: float

    _fallback: PageFont | None  # the fallback font (emoji) at the same size, if any

    def getlength(self, text, *args, **kwargs) -> float:  # noqa: D401 - Pillow's signature
        return sum(self.advance(ch) for ch in text)

    def advance(self, ch: str) -> float:
        width = self.advances.get(ch)
        if width is None:
            name = self._cmap.get(ord(ch))
            if name is not None:
                width = self._glyph_widths[name].width * self._per_unit
            elif self.falls_back(ch):
                width = self._fallback.advance(ch)
            else:  # a character no font has is drawn as Pillow draws it (its .notdef box)
                width = super().getlength(ch)
            self.advances[ch] = width
        return width

    def falls_back(self, ch: str) -> bool:
        """Whether ``ch`` is drawn in the fallback font: this one lacks it, that one has it."""
        return self._fallback is not None and ord(ch) not in self._cmap \
            and ord(ch) in self._fallback._cmap

    def face_for(self, ch: str) -> PageFont:
        return self._fallback if self.falls_back(ch) else self  # type: ignore[return-value]


@lru_cache(maxsize=8)  # two weights of the page font, the emoji font, a story's own
def _metrics(path: str, face: int, weight: str):
    """The font's cmap and its glyph set at ``weight`` (read lazily: only the glyphs asked
    about are decoded)."""
    from fontTools.ttLib import TTFont

    kwargs = {"fontNumber": face} if path.lower().endswith((".ttc", ".otc")) else {}
    tt = TTFont(path, lazy=True, **kwargs)
    axes = {a.axisTag for a in tt["fvar"].axes} if "fvar" in tt else set()
    location = {"wght": WEIGHTS[weight]} if "wght" in axes else None
    return tt.getBestCmap() or {}, tt.getGlyphSet(location=location), tt["head"].unitsPerEm


def page_font(path: str | None, size: int, weight: str = "Regular",
              fallback: bool = True) -> PageFont:
    """The page font (``path``; None: the built-in one at ``weight``), falling back to the
    emoji font (``glyphs.emoji_font``, at its default weight, as the PDF embeds it) for the
    characters it lacks."""
    file, face = (path, 0) if path else (builtin_font(), CJK_FACE)
    font = PageFont(file, size, index=face)
    if path is None:
        font.set_variation_by_name(weight)
    cmap, glyphs, units = _metrics(file, face, weight if path is None else "Regular")
    font.advances, font._cmap, font._glyph_widths = {}, cmap, glyphs
    font._per_unit = size / units
    emoji = emoji_font() if fallback else None
    font._fallback = page_font(emoji, size, fallback=False) if emoji else None
    return font


SUPERSAMPLE = 4  # text is drawn this many times larger, then reduced: glyphs land between pixels


def draw_text(image, x: float, baseline: float, text: str, font: PageFont, big: PageFont,
              fill) -> None:
    """``text`` onto ``image`` with its left end at ``x`` on ``baseline``, each glyph at
    ``font``'s advances. Glyph by glyph at whole pixels, a small caption's letters would
    jitter by up to half a pixel each; so the line is drawn with ``big`` (the same font
    ``SUPERSAMPLE`` times larger) into a mask that is then reduced, which keeps every glyph at
    its fractional place."""
    from PIL import Image, ImageDraw

    if not text.strip():
        return
    ascent, descent = font.getmetrics()
    left, top = int(x) - 1, int(baseline) - ascent - 1
    width = int(font.getlength(text) + (x - left)) + font.size // 2 + 2
    height = ascent + descent + 2
    n = SUPERSAMPLE
    mask = Image.new("L", (width * n, height * n), 0)
    draw = ImageDraw.Draw(mask)
    pen = (x - left) * n
    for ch in text:
        if not ch.isspace():
            draw.text((pen, (baseline - top) * n), ch, font=big.face_for(ch), fill=255,
                      anchor="ls")
        pen += font.advance(ch) * n
    mask = mask.resize((width, height), Image.Resampling.BOX)
    image.paste(Image.new("RGB", (width, height), fill), (left, top), mask)


def draw_turned(image, x: float, y: float, text: str, font: PageFont, big: PageFont,
                fill) -> None:
    """``text`` turned a quarter turn clockwise about (``x``, ``y``), its baseline running
    down from there (a character on its side in vertical text): drawn level into a mask of
    its own with ``draw_text``, the mask turned, then pasted."""
    from PIL import Image

    size = font.size
    w, h = int(font.getlength(text)) + 2 * size, 3 * size
    level = Image.new("RGB", (w, h), (0, 0, 0))
    ox, oy = size, 2 * size  # where (x, y) is in the level mask
    draw_text(level, ox, oy, text, font, big, (255, 255, 255))
    # Clockwise: the level mask's (a, b) goes to (h - 1 - b, a).
    turned = level.convert("L").transpose(Image.Transpose.ROTATE_270)
    image.paste(Image.new("RGB", turned.size, fill), (round(x - (h - 1 - oy)), round(y - ox)),
                turned)
