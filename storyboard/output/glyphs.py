"""Which characters of a story's captions, balloons and title the page font cannot draw.

In: the story, its compiled jobs, and the layout's font file (None: the built-in Noto Sans
CJK). Out: one warning per caption (and the title) that has such characters, at the caption's
file:line, naming them; the page would show them as empty boxes (emoji, most symbols), so the
writer hears it at `validate`, not from the printed page.

Characters the page font lacks that the fallback font has (Noto Emoji, monochrome, SIL OFL
1.1, from the ``manimgx-fonts`` package: ``emoji_font``) are drawn in it (``fallback_chars``),
so they are no warning.

Only the fonts' character maps are read (fontTools, lazily: no outlines, no imaging library),
and only when some text has a character outside printable ASCII, which every font draws, or
when the font is the story's own.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

from ..errors import WARNING, Problem
from ..story.fields import char_name

# Noto Sans CJK's collection: 0 JP, 1 KR, 2 SC, 3 TC, 4 HK. SC covers the course's captions;
# every face has the full CJK repertoire with its own regional glyph shapes.
CJK_FACE = 2


def builtin_font() -> str:
    return str(resources.files("manimgx_fonts_cjk") / "NotoSansCJK-VF.otf.ttc")


@lru_cache(maxsize=8)
def _charmap(path: str, face: int) -> frozenset[int]:
    from fontTools.ttLib import TTFont

    kwargs = {"fontNumber": face} if path.lower().endswith((".ttc", ".otc")) else {}
    with TTFont(path, lazy=True, **kwargs) as font:
        return frozenset(font.getBestCmap() or {})


EMOJI_FILE = "NotoEmoji[wght].ttf"


def emoji_font() -> str | None:
    """The fallback font for what the page font lacks: Noto Emoji (monochrome outlines, SIL
    OFL 1.1), from the ``manimgx-fonts`` package; None when that is not installed."""
    try:
        path = resources.files("manimgx_fonts") / EMOJI_FILE
    except ModuleNotFoundError:
        return None
    return str(path) if path.is_file() else None


def fallback_chars(text: str, font: str | None) -> str:
    """The distinct characters of ``text`` that the page font lacks and the fallback font
    draws (sorted): pages draw them, and the PDF embeds them, in the fallback font."""
    emoji = emoji_font()
    if emoji is None or all(" " <= ch <= "~" or ch == "\n" for ch in text):
        return ""
    main = _charmap(font, 0) if font else _charmap(builtin_font(), CJK_FACE)
    extra = _charmap(emoji, 0)
    return "".join(sorted({ch for ch in text if ord(ch) not in main and ord(ch) in extra}))


def _drawn_without_glyph(ch: str) -> bool:
    """Characters no font needs a glyph for: line breaks, spaces, and the invisible marks
    that only modify a neighbour (variation selectors, joiners)."""
    return ch in "\n\t " or unicodedata.category(ch) in ("Cc", "Cf", "Mn", "Zs") \
        or 0xFE00 <= ord(ch) <= 0xFE0F


def missing_glyphs(text: str, font: str | None) -> list[str]:
    """The distinct characters of ``text`` neither the font nor the fallback font (emoji) has
    a glyph for, in order of appearance."""
    if font is None and all(" " <= ch <= "~" or ch == "\n" for ch in text):
        return []
    try:
        cmap = _charmap(font, 0) if font else _charmap(builtin_font(), CJK_FACE)
        emoji = emoji_font()
        extra = _charmap(emoji, 0) if emoji else frozenset()
    except Exception:  # noqa: BLE001 - an unreadable font is reported when pages load it
        return []
    return list(dict.fromkeys(ch for ch in text if ord(ch) not in cmap
                              and ord(ch) not in extra and not _drawn_without_glyph(ch)))


def glyph_warnings(story, jobs: Sequence, font: str | None) -> list[Problem]:
    """A warning for each caption (and the title) with characters ``font`` cannot draw."""
    layout = story.spec.layout
    texts = []
    if layout.title is not False:
        title = story.spec.title if layout.title is True else layout.title
        texts.append((("layout", "title") if isinstance(layout.title, str) else ("title",),
                      "the title", title or ""))
    if layout.caption != "none":
        texts += [(("panels", job.index, "caption"), f"panel {job.panel!r}: the caption",
                   job.caption) for job in jobs]
    texts += [(("panels", job.index, "balloons", k, "text"), f"panel {job.panel!r}: balloon "
               f"{k + 1}", balloon.text)
              for job in jobs for k, balloon in enumerate(story.spec.panels[job.index].balloons)]
    problems = []
    which = "the layout's font" if font else "the built-in font (Noto Sans CJK)"
    if emoji_font():
        which += " and the emoji font (Noto Emoji)"
    for loc, what, text in texts:
        missing = missing_glyphs(text, font)
        if not missing:
            continue
        named = ", ".join(f"{ch!r} ({char_name(ch)})" for ch in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        problems.append(story.doc.problem(
            loc, f"{what} has characters {which} cannot draw: {named}{more}; the page "
            "would show empty boxes for them",
            "remove them, or set `layout.font` to a font that has them", severity=WARNING))
    return problems


def vertical_problems(story, jobs: Sequence, font: str | None) -> list[Problem]:
    """An error for each balloon with ``vertical: true`` that cannot be set vertically: a
    font without vertical metrics, a text with no CJK in it, punctuation whose vertical form
    the font lacks (``vertical.vertical_problem``)."""
    from .vertical import font_facts, vertical_problem

    problems = []
    for job in jobs:
        for k, balloon in enumerate(story.spec.panels[job.index].balloons):
            if not balloon.vertical:
                continue
            try:
                cmap, has_vertical = font_facts(font, 0) if font else \
                    font_facts(builtin_font(), CJK_FACE)
            except Exception:  # noqa: BLE001 - an unreadable font is reported when pages load it
                return []
            why = vertical_problem(balloon.text, cmap, has_vertical)
            if why is None:
                continue
            hint = ("leave `vertical` out, or `layout.font` for the built-in Noto Sans CJK"
                    if font and not has_vertical else "leave `vertical` out: such text is set "
                    "across" if "has none" in why else "leave `vertical` out, or use a font "
                    "with vertical forms (the built-in Noto Sans CJK has them)")
            problems.append(story.doc.problem(
                ("panels", job.index, "balloons", k, "vertical"),
                f"panel {job.panel!r}: balloon {k + 1} cannot be set vertically: {why}", hint))
    return problems
