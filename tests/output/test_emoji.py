"""The emoji fallback font (issue 16): characters the page font lacks that Noto Emoji has are
measured and drawn in it, in the PNG and, embedded, in the PDF (as text), and `validate`
does not warn about them."""

from __future__ import annotations

import numpy as np
from pagegold import check_page, panel
from pypdf import PdfReader

from storyboard.output.compose import write_pages
from storyboard.output.glyphs import emoji_font, fallback_chars, missing_glyphs
from storyboard.output.pages import Cell, Text, compose_pages, load_font, plan_pages
from storyboard.story.layout import BalloonSpec
from storyboard.story.schema import LayoutSpec


def cells() -> list[Cell]:
    return [Cell("a", 1, panel(256, 256, 0), "Rain again 🌧 and 😀 雨",
                 (BalloonSpec(text="Hi 😀!"),)),
            Cell("b", 2, panel(256, 256, 90), "🎉 The end 🎉",
                 (BalloonSpec(text="雨🌂", vertical=True, at="top-right"),))]


def test_the_fallback_is_noto_emoji_and_covers_what_the_page_font_lacks():
    assert emoji_font() is not None and emoji_font().endswith("NotoEmoji[wght].ttf")
    assert fallback_chars("Hi 😀 雨 🌧", None) == "🌧😀"
    assert missing_glyphs("Hi 😀 雨 🌧", None) == []
    assert missing_glyphs("Hi 😀 ᚠ", None) == ["ᚠ"]  # in no bundled font


def test_emoji_are_measured_and_drawn_in_the_fallback():
    font = load_font(None, 28)
    assert font.falls_back("😀") and not font.falls_back("雨")
    notdef = load_font(None, 28).getlength("ᚠ")
    assert font.getlength("😀") != notdef and font.getlength("😀") > 20
    # Drawn: the emoji's ink is there, where the caption line has it.
    (page,) = plan_pages([Cell("a", 1, panel(96, 96, 0), "😀")],
                         LayoutSpec(columns=1, title=False, font_size=28), "")
    (line,) = [i for i in page.items if isinstance(i, Text)]
    ink = np.asarray(page.image().convert("L")) < 128
    x, y = int(line.x), line.y
    assert ink[y - 24:y + 4, x:x + 28].sum() > 50


def test_the_pdf_embeds_the_emoji_font_and_the_emoji_are_text(tmp_path):
    pages = plan_pages(cells(), LayoutSpec(columns=2, dpi=150, title="Emoji 🎉"), "")
    write_pages(pages, tmp_path, "s")
    page = PdfReader(tmp_path / "story.pdf").pages[0]
    fonts = [f.get_object()["/BaseFont"] for f in page["/Resources"]["/Font"].values()]
    assert any("NotoEmoji" in name for name in fonts)
    text = "".join(page.extract_text().split())
    for words in ("Emoji🎉", "Hi😀!", "Rainagain🌧and😀雨", "🎉Theend🎉"):
        assert words in text


def test_clean_keeps_the_emoji_subset_a_story_needs():
    from storyboard.commands.clean import subset_keys

    assert len(subset_keys(None, "Hi 😀")) == 3 and len(subset_keys(None, "Hi")) == 2


def test_golden_emoji():
    (page,) = compose_pages(cells(), LayoutSpec(columns=2), "Emoji 🎉")
    check_page("emoji", page)
