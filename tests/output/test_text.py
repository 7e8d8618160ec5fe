"""Text that belongs (issue 16, 1): titles fit the page, each caption is attached to its own
panel, caption size follows the cell, panels are never blown up past their pixels, CJK lines
leave no lone character behind, and `validate` warns about characters the font cannot draw."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from pagegold import check_page, panel

from storyboard.output.geometry import font_size
from storyboard.output.pages import (
    Cell, Text, _units, compose_pages, load_font, plan_page, plan_pages, wrap_text,
)
from storyboard.story.schema import LayoutSpec

LONG_TITLE = ("The Lighthouse Keeper and the Storm That Would Not End, "
              "Being the True Account of Three Nights at Sea")
CAPTIONS = ["The storm had raged for three days.", "Ada climbed the stairs one more time.",
            "Out at sea, a boat was looking for home.",
            "第一次看演唱会，舞台上的歌星闪闪发光，观众席上人山人海，她的眼睛里有了光。"]


def mixed_cells() -> list[Cell]:
    sizes = [(160, 160), (120, 160), (160, 96), (80, 80)]
    return [Cell(f"p{i}", i + 1, panel(w, h, 60 * i), c)
            for i, ((w, h), c) in enumerate(zip(sizes, CAPTIONS))]


@pytest.mark.parametrize("columns, panels", [(1, 1), (2, 4), (3, 7)])
def test_a_long_title_and_its_page_suffix_fit_on_the_page(columns, panels):
    layout = LayoutSpec(columns=columns, panels_per_page=max(1, panels // 2), border=0)
    cells = [Cell(f"p{i}", i + 1, panel(96, 96, 10 * i)) for i in range(panels)]
    for page in plan_pages(cells, layout, LONG_TITLE):
        lines = [t for t in page.items if isinstance(t, Text) and t.weight == "Bold"
                 and t.size == page.geometry.title_size]
        assert lines, "the title is drawn"
        font = load_font(None, lines[0].size, "Bold")
        for line in lines:
            assert line.x >= layout.margin - 1
            assert line.x + font.getlength(line.text) <= page.width - layout.margin + 1
        shown = " ".join(t.text for t in lines)
        assert shown.replace(" ", "").startswith(LONG_TITLE.replace(" ", ""))
        if len(cells) > layout.panels_per_page:
            assert shown.endswith(")") and "/" in lines[-1].text, "(n/N) on the page"
        # Nothing is cut at the page's edges: the outermost columns stay blank.
        ink = np.asarray(page.image().convert("L")) < 128
        assert not ink[:, :layout.margin // 2].any() and not ink[:, -layout.margin // 2:].any()


@pytest.mark.parametrize("where", ["below", "above", "inside"])
@pytest.mark.parametrize("tall", [{}, {"p0": 2}, {"p1": 3}])  # panels across rows too
def test_every_caption_touches_its_own_panel(where, tall):
    page = plan_page(mixed_cells(), LayoutSpec(columns=2, caption=where, row_span=tall),
                     "Title", 0, 1)
    for i, cell in enumerate(page.geometry.cells):
        assert cell.caption is not None
        assert cell.panel.touches(cell.caption), f"panel {i}'s caption is away from it"
        others = [c.panel for k, c in enumerate(page.geometry.cells) if k != i]
        # And closer to its own panel than to any other.
        assert all(_distance(cell.caption, o) > _distance(cell.caption, cell.panel)
                   for o in others)
    # The drawn ink of each caption lies in its box.
    ink = np.asarray(page.image().convert("L")) < 100
    for cell in page.geometry.cells:
        c = cell.caption
        if where == "inside" and c.y < cell.panel.y + cell.panel.h:
            continue  # drawn over the picture: the gradient has dark pixels of its own
        box = ink[c.y:c.y + c.h, c.x:c.x + c.w]
        assert box.any()


def _distance(a, b) -> int:
    dx = max(0, max(a.x, b.x) - min(a.x + a.w, b.x + b.w))
    dy = max(0, max(a.y, b.y) - min(a.y + a.h, b.y + b.h))
    return dx + dy


def test_shorter_panels_keep_their_captions_close():
    """In a row with a tall and a short panel, the short one's caption sits right under it,
    not at the foot of the row."""
    cells = [Cell("tall", 1, panel(100, 200, 0), "tall one"),
             Cell("short", 2, panel(100, 50, 90), "short one")]
    g = plan_page(cells, LayoutSpec(columns=2, border=0), "", 0, 1).geometry
    short = g.cells[1]
    assert short.caption.y == short.panel.y + short.panel.h
    assert short.text_top - short.caption.y == g.pad


def test_caption_size_follows_the_cell_unless_given():
    small = LayoutSpec(cell_width=256)
    large = LayoutSpec(cell_width=1024)
    assert font_size(small, 256) == 14 and abs(font_size(large, 1024) - 4 * 14) <= 2
    assert font_size(LayoutSpec(), 512) == 28  # the old fixed size, in the usual cell
    assert font_size(LayoutSpec(font_size=20), 1024) == 20
    page = plan_page([Cell("a", 1, panel(256, 256, 0), "words")], small, "", 0, 1)
    assert {t.size for t in page.items if isinstance(t, Text)} == {14}


def test_panels_are_not_blown_up_past_their_pixels():
    big, small = panel(200, 120, 0), panel(64, 64, 200)
    layout = LayoutSpec(columns=2, border=0, caption="none", title=False, margin=0, gutter=0)
    (page,) = compose_pages([Cell("big", 1, big), Cell("small", 2, small)], layout, "")
    arr = np.asarray(page)
    # The default cell is the widest panel's width: every panel at its own pixels, exactly.
    assert page.width == 400
    assert (arr[:120, :200] == np.asarray(big)).all()
    left = 200 + (200 - 64) // 2
    assert (arr[:64, left:left + 64] == np.asarray(small)).all()
    # A wider cell than a panel leaves it as it is, centred; upscale: true fills the cell.
    wide = LayoutSpec(columns=1, cell_width=400, border=0, caption="none", title=False)
    (g,) = [p.geometry for p in plan_pages([Cell("s", 1, small)], wide, "")]
    assert (g.cells[0].panel.w, g.cells[0].panel.h) == (64, 64)
    up = wide.model_copy(update={"upscale": True})
    (g,) = [p.geometry for p in plan_pages([Cell("s", 1, small)], up, "")]
    assert (g.cells[0].panel.w, g.cells[0].panel.h) == (400, 400)


def test_cjk_lines_leave_no_lone_character_at_the_end():
    font = load_font(None, 16)
    text = CAPTIONS[3]
    seen = 0
    for width in range(60, 400, 3):
        lines = wrap_text(text, font, width)
        assert "".join(lines) == text
        assert all(font.getlength(line) <= width for line in lines)
        if len(lines) > 1:
            seen += 1
            assert len(_units(lines[-1])) > 1, f"lone {lines[-1]!r} at width {width}"
    assert seen > 20
    # Latin text is left as it was: a short last word is no orphan in English.
    latin = wrap_text("seven eight c", font, int(font.getlength("seven eight")) + 1)
    assert latin == ["seven eight", "c"]


def test_validate_warns_about_characters_the_font_cannot_draw(story_file):
    """Emoji are drawn in the fallback font (Noto Emoji): only what no font has is warned
    about (a runic letter here)."""
    story = story_file("version: 1\ntitle: Cats\nmodel: tiny-sdxl\npanels:\n"
                       "  - id: p1\n    prompt: a cat\n    caption: 'Hello 😀ᚠ, café 猫'\n"
                       "  - id: p2\n    prompt: a dog\n    caption: plain words 😀\n")
    result = run_cli("validate", str(story))
    assert result.exit_code == 0, result.output
    assert f"{story.name}:7:14: warning: panels[0].caption: panel 'p1': the caption has " \
           "characters the built-in font (Noto Sans CJK) and the emoji font (Noto Emoji) " \
           "cannot draw: 'ᚠ' (U+16A0 RUNIC LETTER FEHU FEOH FE F)" in result.output
    assert "p2" not in result.output and "café" not in result.output.split("cannot draw")[1]
    assert "😀" not in result.output.split("cannot draw")[1]


@pytest.mark.parametrize("where", ["below", "above", "inside"])
def test_golden_captions(where):
    (page,) = compose_pages(mixed_cells(), LayoutSpec(columns=2, caption=where,
                                                      panel_numbers=True), LONG_TITLE)
    check_page(f"captions-{where}", page)
