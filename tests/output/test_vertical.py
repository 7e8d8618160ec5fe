"""Vertical CJK text in balloons (issue 16): top to bottom, columns right to left, punctuation
in its vertical forms, ー and Latin on their side, the same in the PNG and the PDF (text that
extracts), and `validate` refusing what cannot be set vertically."""

from __future__ import annotations

import unicodedata

import pytest
from conftest import run_cli
from pagegold import check_page, panel
from pypdf import PdfReader

from storyboard.output.compose import write_pages
from storyboard.output.pages import Cell, Text, compose_pages, plan_pages
from storyboard.story.layout import BalloonSpec
from storyboard.story.schema import LayoutSpec

RAIN = "雨はまだ止まない。ちょっと待って！"


def cells() -> list[Cell]:
    return [
        Cell("a", 1, panel(256, 320, 0), "縦書き。", (
            BalloonSpec(text=RAIN, vertical=True, at="top-right"),
            BalloonSpec(text="「ラーメン」OK？", vertical=True, kind="thought",
                        at="bottom-left"))),
        Cell("b", 2, panel(256, 320, 120), "叫ぶ。", (
            BalloonSpec(text="危ない、逃げろ！", vertical=True, kind="shout", at="top-left"),
            BalloonSpec(text="その夜、灯台守は眠らなかった。", vertical=True,
                        kind="narration", at="bottom-right"))),
    ]


def balloon_text(page, first: str) -> list[Text]:
    """The Text items of the balloon whose first character is ``first``, in order."""
    texts = [i for i in page.items if isinstance(i, Text) and i.weight == "Regular"]
    start = next(k for k, t in enumerate(texts) if t.text == first)
    return texts[start:]


def test_columns_run_down_then_right_to_left():
    layout = LayoutSpec(columns=1, font_size=40, title=False, caption="none")
    cell = Cell("a", 1, panel(512, 512, 0), "", (
        BalloonSpec(text=RAIN, vertical=True, kind="narration", at="top-right"),))
    (page,) = plan_pages([cell], layout, "")
    chars = balloon_text(page, "雨")[:len(RAIN)]
    assert "".join(unicodedata.normalize("NFKC", t.text) for t in chars) == \
        unicodedata.normalize("NFKC", RAIN)
    columns: list[list[Text]] = []
    for t in chars:  # a new column where the text goes back up
        if not columns or t.y < columns[-1][-1].y:
            columns.append([])
        columns[-1].append(t)
    assert len(columns) > 1
    for column in columns:
        assert [t.y for t in column] == sorted(t.y for t in column)
        # Every upright character centred on the column's line.
        centres = {round(t.x + page_font(t).getlength(t.text) / 2) for t in column}
        assert max(centres) - min(centres) <= 1
    lefts = [min(t.x for t in column) for column in columns]
    assert lefts == sorted(lefts, reverse=True)  # the first column is the rightmost
    assert any(t.text == "︒" for t in chars), "。 in its vertical form"
    small = next(t for t in chars if t.text == "ょ")
    assert small.x > min(t.x for t in columns[[small in c for c in columns].index(True)]
                         if t.text != "ょ") - 1, "small kana move right"


def page_font(t: Text):
    from storyboard.output.pages import load_font

    return load_font(None, t.size)


def test_the_long_vowel_mark_and_latin_lie_on_their_side():
    cell = Cell("a", 1, panel(512, 512, 0), "", (
        BalloonSpec(text="「ラーメン」OK？", vertical=True, kind="narration"),))
    (page,) = plan_pages([cell], LayoutSpec(columns=1, font_size=40, title=False), "")
    chars = {t.text: t for t in balloon_text(page, "﹁")}
    assert chars["ー"].rotate == 90 and chars["OK"[0]].rotate == 90
    assert chars["ラ"].rotate == 0 and "︖" in chars and "﹂" in chars
    # Drawn on its side: the long vowel mark's ink is a vertical stroke in the PNG.
    import numpy as np

    ink = np.asarray(page.image().convert("L")) < 100
    bar = chars["ー"]
    box = ink[bar.y - 2:bar.y + 42, int(bar.x) - 10:int(bar.x) + 40]
    rows, cols = np.nonzero(box)
    assert rows.max() - rows.min() > 2 * (cols.max() - cols.min())


def test_vertical_text_is_text_in_the_pdf(tmp_path):
    pages = plan_pages(cells(), LayoutSpec(columns=2, dpi=150), "縦書き")
    write_pages(pages, tmp_path, "s")
    text = PdfReader(tmp_path / "story.pdf").pages[0].extract_text()
    flat = unicodedata.normalize("NFKC", "".join(text.split()))
    for words in (RAIN, "危ない、逃げろ！", "その夜、灯台守は眠らなかった。"):
        assert unicodedata.normalize("NFKC", words) in flat


def test_golden_vertical_balloons():
    (page,) = compose_pages(cells(), LayoutSpec(columns=2), "縦書き")
    check_page("vertical-balloons", page)


def no_vertical_font(path) -> None:
    """A TrueType font with the letters a-z and CJK 雨, and no vertical metrics."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    chars = "abcdefghijklmnopqrstuvwxyz雨"
    names = [".notdef"] + [f"g{ord(c)}" for c in chars]
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder(names)
    fb.setupCharacterMap({ord(c): f"g{ord(c)}" for c in chars})
    pen = TTGlyphPen(None)
    pen.moveTo((100, 0)), pen.lineTo((100, 700)), pen.lineTo((500, 700)), pen.closePath()
    box = pen.glyph()
    fb.setupGlyf({n: box for n in names})
    fb.setupHorizontalMetrics({n: (600, 100) for n in names})
    fb.setupHorizontalHeader(ascent=880, descent=-120)
    fb.setupNameTable({"familyName": "Flat", "styleName": "Regular"})
    fb.setupOS2(sTypoAscender=880, sTypoDescender=-120, usWinAscent=880, usWinDescent=120)
    fb.setupPost()
    fb.save(str(path))


@pytest.mark.parametrize("font, text, says, hint", [
    (None, "Hello there", "vertical text is for Chinese, Japanese or Korean, and this text "
     "has none", "leave `vertical` out: such text is set across"),
    ("flat.ttf", "雨", "the font has no vertical metrics (no vmtx table or vert feature)",
     "leave `vertical` out, or `layout.font` for the built-in Noto Sans CJK"),
])
def test_validate_refuses_what_cannot_be_set_vertically(story_file, tmp_path, font, text,
                                                         says, hint):
    layout = ""
    if font:
        no_vertical_font(tmp_path / font)
        layout = f"layout: {{font: {font}}}\n"
    story = story_file("version: 1\nmodel: tiny-sdxl\npanels:\n  - id: p1\n    prompt: rain\n"
                       f"    balloons:\n      - {{text: {text}, vertical: true}}\n" + layout)
    result = run_cli("validate", str(story))
    assert result.exit_code == 2, result.output
    assert "story.yaml:7:" in result.output and "panels[0].balloons[0].vertical: panel " \
        f"'p1': balloon 1 cannot be set vertically: {says}" in result.output
    assert f"hint: {hint}" in result.output and "Traceback" not in result.output
    good = story_file("version: 1\nmodel: tiny-sdxl\npanels:\n  - id: p1\n    prompt: rain\n"
                      "    balloons:\n      - {text: 雨が降る, vertical: true}\n", "ok.yaml")
    assert run_cli("validate", str(good)).exit_code == 0
