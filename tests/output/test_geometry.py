"""Page geometry: measured before drawing, the same as what is drawn, and a layout whose pages
could not be composed or written is refused by `validate` with a hint (issue 14, class 6)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from storyboard.output.geometry import MAX_PAGE_SIDE, font_size, measure
from storyboard.output.pages import Cell, compose_pages, wrap_text, load_font
from storyboard.story.schema import LayoutSpec


def story_text(panels: int, width: int, height: int, layout: str, caption: str = "") -> str:
    lines = ["version: 1", "title: Limits", "model: tiny-sdxl", f"layout: {layout}",
             f"defaults: {{steps: 2, width: {width}, height: {height}}}", "panels:"]
    lines += [f"  - {{id: p{i}, prompt: a cat, caption: {caption!r}}}" for i in range(panels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("layout, sizes, captions", [
    (LayoutSpec(columns=2, background="#ffffff"), [(64, 64), (64, 128), None],
     ["", "a caption", "x " * 40]),
    (LayoutSpec(columns=3, cell_width=96, caption="above", border=0), [(128, 64)] * 4,
     ["one", "", "two words", "猫が好き。" * 5]),
    (LayoutSpec(columns=1, title="A title", gutter=0, margin=0), [(64, 64)], [""]),
    (LayoutSpec(columns=2, caption="none"), [(64, 96), (64, 64)], ["hidden", ""]),
])
def test_the_measured_page_is_the_drawn_page(layout, sizes, captions):
    cells = [Cell(f"p{i}", i + 1, Image.new("RGB", s) if s else None, c)
             for i, (s, c) in enumerate(zip(sizes, captions))]
    (page,) = compose_pages(cells, layout, "Title")
    width = layout.cell_width or max(s[0] + 2 * layout.border for s in sizes if s)
    font = load_font(None, font_size(layout, width))
    lines = [len(wrap_text(c, font, width)) if c and layout.caption != "none" else 0
             for c in captions]
    g = measure([c.image.size if c.image else None for c in cells], lines, layout, 1)
    assert page.size == (g.width, g.height)
    # Nothing drawn is cut off and no slack is left: the bottom margin is blank, and ink
    # (a caption's last line, or a panel's border) reaches down to just above it.
    rows = np.asarray(page.convert("L")) < 250
    ink_rows = np.nonzero(rows.any(axis=1))[0]
    bottom = page.height - layout.margin
    assert not rows[bottom:].any()
    assert ink_rows.max() >= bottom - g.line_height - g.pad


def test_a_page_past_the_side_limit_cannot_be_a_jpeg():
    """Why the limit is there: such a page cannot be exported to JPEG (Pillow's limit), which
    is what people and comic readers do with pages."""
    page = Image.new("RGB", (8, MAX_PAGE_SIDE + 8))
    with pytest.raises(Exception):  # noqa: B017 - whatever Pillow raises for it
        page.save(io.BytesIO(), format="JPEG")


def test_a_one_column_page_too_tall_is_refused_with_a_panels_per_page_hint(story_file):
    # 20 panels of 4096 pixels, all on one page: far past the limit.
    tall = story_file(story_text(20, 64, 4096, "{columns: 1, panels_per_page: 20}"))
    result = run_cli("validate", str(tall))
    assert result.exit_code == 2, result.output
    assert "more than 65,500 pixels a side" in result.output and "Traceback" not in result.output
    hint = result.output.split("panels_per_page: ")[1].split("`")[0]
    fixed = story_file(story_text(20, 64, 4096, f"{{columns: 1, panels_per_page: {hint}}}"),
                       "fixed.yaml")
    assert run_cli("validate", str(fixed)).exit_code == 0
    # By default a page holds 8 panels (32,768 pixels here): within it.
    assert run_cli("validate", str(story_file(story_text(20, 64, 4096, "{columns: 1}"),
                                              "default.yaml"))).exit_code == 0
    # The hinted pages compose and write (blank panels of the story's size stand in).
    cells = [Cell(f"p{i}", i + 1, Image.new("RGB", (64, 4096)), "") for i in range(int(hint))]
    (page,) = compose_pages(cells, LayoutSpec(columns=1, panels_per_page=int(hint)), "Limits")
    assert page.height <= MAX_PAGE_SIDE
    page.save(io.BytesIO(), format="JPEG")


@pytest.mark.parametrize("where", ["below", "inside"])  # inside: it would go below its panel
def test_a_huge_caption_at_a_huge_font_is_refused_before_composing(story_file, where):
    story = story_file(story_text(1, 64, 64, f"{{font_size: 256, caption: {where}}}",
                                  "word " * 1600))
    result = run_cli("plan", str(story))
    assert result.exit_code == 2, result.output
    assert "too big to compose" in result.output and "shorten the longest captions" in \
        result.output


def test_too_many_wide_columns_are_refused(story_file):
    wide = story_file(story_text(16, 4096, 64, "{columns: 16, gutter: 512}"))
    result = run_cli("validate", str(wide))
    assert result.exit_code == 2 and "fewer `columns`" in result.output


def test_long_captions_that_fit_need_no_font(story_file):
    """The upper bound (a character a line) clears ordinary stories without the imaging
    library; `validate` stays light (tests/cli checks no PIL import for the examples)."""
    from storyboard.output.geometry import layout_problems
    from storyboard.plan import compile_story
    from storyboard.story import load_story

    story = load_story(story_file(story_text(8, 512, 512, "{columns: 2}", "a caption " * 20)))

    def no_font(*args):
        raise AssertionError("measured with the font")

    assert layout_problems(story, compile_story(story), None, no_font) == []


def test_a_bleed_counts_toward_the_limits_at_validate_time(story_file):
    """A page just under the side limit goes over it with a one-inch bleed (300 pixels a side
    at 300 dpi): `validate` refuses it, naming the bleed, and the hint's fix validates."""
    fine = story_file(story_text(16, 64, 4040, "{columns: 1, title: false, "
                                 "panels_per_page: 16}"))
    assert run_cli("validate", str(fine)).exit_code == 0
    bled = story_file(story_text(16, 64, 4040, "{columns: 1, title: false, "
                                 "panels_per_page: 16, bleed: 1in}"), "bled.yaml")
    result = run_cli("validate", str(bled))
    assert result.exit_code == 2, result.output
    assert "bled.yaml:4:9: layout: page 1 would be 732 x 65,608 pixels with its bleed (300 " \
           "pixels on every side), more than 65,500 pixels a side" in result.output
    assert "hint: lower `bleed` (without it the page is 132 x 65,008 pixels), or set " \
           "`panels_per_page: 15`" in result.output and "Traceback" not in result.output
    fixed = story_file(story_text(16, 64, 4040, "{columns: 1, title: false, bleed: 1in, "
                                  "panels_per_page: 15}"), "fixed.yaml")
    assert run_cli("validate", str(fixed)).exit_code == 0


def test_a_sheet_with_its_bleed_is_checked_too(story_file):
    # A4 at 950 dpi is 87 million pixels, under the limit; a quarter inch on every side
    # takes it to 96 million, over.
    fine = story_file(story_text(1, 64, 64, "{page_size: A4, dpi: 950}"))
    assert run_cli("validate", str(fine)).exit_code == 0
    bled = story_file(story_text(1, 64, 64, "{page_size: A4, dpi: 950, bleed: 0.25in}"),
                      "bled.yaml")
    result = run_cli("validate", str(bled))
    assert result.exit_code == 2, result.output
    assert "with its bleed (238 pixels on every side), too big to compose or write" in \
        result.output and "hint: lower `dpi` or `bleed`" in result.output


def test_pages_each_fine_but_too_big_alike_are_refused(story_file):
    """Every page takes the widest page's width and the tallest page's height: a page with two
    wide panels (8,280 pixels across, 4,300 down) and one of six tall ones (12,400 down, 200
    across) are each fine, but two pages of 8,280 x 12,400 are over the pixel limit."""
    panels = [f"  - {{id: w{i}, prompt: sea, width: 4096, height: 64}}" for i in range(2)]
    panels += [f"  - {{id: s{i}, prompt: sun, width: 64, height: 64}}" for i in range(4)]
    panels += [f"  - {{id: t{i}, prompt: sky, width: 64, height: 4096}}" for i in range(6)]
    text = ("version: 1\ntitle: Limits\nmodel: tiny-sdxl\n"
            "layout: {columns: 2, panels_per_page: 6}\ndefaults: {steps: 2}\npanels:\n"
            + "\n".join(panels) + "\n")
    result = run_cli("validate", str(story_file(text)))
    assert result.exit_code == 2, result.output
    assert "story.yaml:4:9: layout: every page would be" in result.output
    assert "all pages take the widest page's width and the tallest page's height" in \
        result.output and "set `page_size`" in result.output
    sheet = story_file(text.replace("panels_per_page: 6", "panels_per_page: 6, page_size: A4"),
                       "sheet.yaml")
    assert run_cli("validate", str(sheet)).exit_code == 0
