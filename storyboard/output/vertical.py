"""Vertical CJK text (tategaki) for balloons with ``vertical: true``: top to bottom, columns
right to left.

In: a balloon's text, the page font and a size. Out: the text's columns (wrapped with the same
line-breaking rules as horizontal text, by vertical advances) and ``pages.Text`` items, one
per character, each at its place in its column, which the PNG rasterizer and the PDF writer
draw alike; ``vertical_problem`` says why a font or a text cannot be set vertically.

How each character stands in a column, as the font's own vertical forms (its ``vert``
feature) set it:
- CJK ideographs, kana, Hangul and full-width forms stand upright, one em each;
- punctuation that sits elsewhere in a vertical em box (。、，：；！？ and the brackets) is
  drawn as its Unicode vertical presentation form (U+FE10-FE19, U+FE30-FE4F), which Noto Sans
  CJK draws the way its ``vert`` feature does;
- the long vowel mark, dashes and tildes (ー ～ —), and Latin letters, digits and other
  narrow characters, lie on their side: turned a quarter turn clockwise about the middle of
  their advance, as vertical typesetting turns them;
- small kana (ぁ っ ャ ...) move up and right in their em box by what the font's ``vert``
  substitution moves them (read from the font: the vertical glyph is the same outline,
  shifted).
Pillow (without a shaping engine) and fpdf2 can only place characters by code point, not the
font's substituted glyphs: hence presentation forms, rotation and shifts, each character
placed as text at its own position, so the PDF's text stays selectable (the presentation
forms extract as themselves; NFKC turns them back into the ordinary marks).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

# Punctuation -> its vertical presentation form.
FORMS = dict(zip("，、。：；！？〖〗…‥—–（）｛｝〔〕【】《》〈〉「」『』［］",
                 "︐︑︒︓︔︕︖︗︘︙︰︱︲︵︶︷︸︹︺︻︼︽︾︿﹀﹁﹂﹃﹄﹇﹈"))
# Wide characters that lie on their side in a column (no presentation form for them).
SIDEWAYS = set("ー～〜―‐－＝")
SMALL_KANA = set("ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶㇰㇱㇲㇳㇴㇵㇶㇷㇸㇹㇺㇻㇼㇽㇾㇿ")
ASCENT = 0.88  # the ideographic em box: from its top to the baseline, in ems (Noto Sans CJK)


def is_cjk(ch: str) -> bool:
    name = unicodedata.name(ch, "")
    return name.startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH", "HIRAGANA",
                            "KATAKANA", "HANGUL", "BOPOMOFO"))


def upright(ch: str) -> bool:
    """Whether ``ch`` stands upright in a column (else it lies on its side)."""
    return ch in FORMS or ch in SMALL_KANA or (
        unicodedata.east_asian_width(ch) in ("W", "F") and ch not in SIDEWAYS)


class VerticalMeasure:
    """A font measured down a column (for ``pages.wrap_text``): an upright character is an em
    tall, one on its side as long as its advance."""

    def __init__(self, font):
        self.font = font

    def getlength(self, text: str) -> float:
        size = self.font.size
        return sum(size if upright(ch) else self.font.advance(ch) for ch in text)


def vertical_problem(text: str, cmap: set[int], has_vertical: bool) -> str | None:
    """Why ``text`` cannot be set vertically in a font with ``cmap`` (``has_vertical``:
    whether it has vertical metrics or a ``vert`` feature), or None."""
    if not has_vertical:
        return "the font has no vertical metrics (no vmtx table or vert feature)"
    if not any(is_cjk(ch) for ch in text):
        return "vertical text is for Chinese, Japanese or Korean, and this text has none"
    lacking = sorted({ch for ch in text if ch in FORMS and ord(FORMS[ch]) not in cmap})
    if lacking:
        return "the font has no vertical form of " + ", ".join(repr(ch) for ch in lacking)
    return None


@lru_cache(maxsize=8)
def font_facts(path: str, face: int) -> tuple[frozenset[int], bool]:
    """The font's character map and whether it can set text vertically."""
    from fontTools.ttLib import TTFont

    kwargs = {"fontNumber": face} if path.lower().endswith((".ttc", ".otc")) else {}
    with TTFont(path, lazy=True, **kwargs) as tt:
        features = set()
        if "GSUB" in tt and tt["GSUB"].table.FeatureList is not None:
            features = {r.FeatureTag for r in tt["GSUB"].table.FeatureList.FeatureRecord}
        return frozenset(tt.getBestCmap() or {}), "vmtx" in tt or bool(features & {"vert",
                                                                                    "vrt2"})


@lru_cache(maxsize=256)
def _shift(path: str, face: int, ch: str) -> tuple[float, float]:
    """How far (in ems, x right and y up) the font's ``vert`` feature moves ``ch``'s outline,
    when its vertical glyph is the same outline moved (small kana); else (0, 0)."""
    from fontTools.pens.boundsPen import BoundsPen
    from fontTools.ttLib import TTFont

    kwargs = {"fontNumber": face} if path.lower().endswith((".ttc", ".otc")) else {}
    try:
        with TTFont(path, lazy=True, **kwargs) as tt:
            name = (tt.getBestCmap() or {}).get(ord(ch))
            if name is None or "GSUB" not in tt:
                return 0.0, 0.0
            gsub = tt["GSUB"].table
            lookups = [i for r in gsub.FeatureList.FeatureRecord if r.FeatureTag == "vert"
                       for i in r.Feature.LookupListIndex]
            vertical = None
            for i in lookups:
                for sub in gsub.LookupList.Lookup[i].SubTable:
                    sub = getattr(sub, "ExtSubTable", sub)
                    vertical = getattr(sub, "mapping", {}).get(name) or vertical
            if vertical is None:
                return 0.0, 0.0
            glyphs = tt.getGlyphSet()
            bounds = []
            for glyph in (name, vertical):
                pen = BoundsPen(glyphs)
                glyphs[glyph].draw(pen)
                bounds.append(pen.bounds)
            (a, b), units = bounds, tt["head"].unitsPerEm
    except Exception:  # noqa: BLE001 - a font we cannot read this way: no shift
        return 0.0, 0.0
    if a is None or b is None:
        return 0.0, 0.0
    same = abs((a[2] - a[0]) - (b[2] - b[0])) < 3 and abs((a[3] - a[1]) - (b[3] - b[1])) < 3
    return ((b[0] - a[0]) / units, (b[1] - a[1]) / units) if same else (0.0, 0.0)


def column_items(columns: list[str], right: float, top: float, size: int, pitch: float,
                 font, font_path: str | None, ink) -> list:
    """``pages.Text`` items, one per character: column k centred ``size / 2 + k * pitch``
    left of ``right``, each from ``top`` down."""
    from .glyphs import CJK_FACE, builtin_font
    from .pages import Text

    path, face = (font_path, 0) if font_path else (builtin_font(), CJK_FACE)
    items = []
    for k, column in enumerate(columns):
        centre = right - size / 2 - k * pitch
        pen = top
        for ch in column:
            if ch == " " and not column.strip():
                continue
            if upright(ch):
                drawn = FORMS.get(ch, ch)
                dx, dy = _shift(path, face, ch) if ch in SMALL_KANA else (0.0, 0.0)
                items.append(Text(centre - font.advance(drawn) / 2 + dx * size,
                                  round(pen + ASCENT * size - dy * size), drawn, size,
                                  "Regular", ink))
                pen += size
            else:
                # On its side: the baseline runs down the column, the glyph's top to the
                # right; the middle of its em box (ASCENT - 0.5 ems above the baseline) on
                # the column's centre line.
                advance = font.advance(ch)
                if not ch.isspace():
                    items.append(Text(centre - (ASCENT - 0.5) * size, round(pen), ch, size,
                                      "Regular", ink, rotate=90))
                pen += advance
    return items
