"""Layout as data (issue 16, 4): panels spanning columns, an explicit rows form, named presets,
and how a panel fills a cell of fixed height (contain or cover); a golden page for each."""

from __future__ import annotations

import numpy as np
import pytest
from pagegold import check_page, panel

from storyboard.output.geometry import arrange, page_count, row_spans, spans
from storyboard.output.pages import Cell, Picture, compose_pages, plan_pages
from storyboard.story.layout import PRESETS
from storyboard.story.schema import LayoutSpec

WORDS = ["The storm had raged for three days.", "Ada climbed the stairs.",
         "A boat was looking for home.", "By morning, everyone was safe.", "The end.",
         "Or was it?", "小紫一个人在家。", "Rain."]


def cells(count: int = 8, size=(96, 96), wide: dict[int, tuple[int, int]] | None = None):
    wide = wide or {}
    return [Cell(f"p{i}", i + 1, panel(*wide.get(i, size), 30 * i), WORDS[i % len(WORDS)])
            for i in range(count)]


def test_a_spanning_panel_takes_both_columns_and_the_gutter_between():
    layout = LayoutSpec(columns=2, span={"p0": 2}, border=0, caption="none", title=False)
    (page,) = plan_pages(cells(3, wide={0: (208, 96)}), layout, "")
    g = page.geometry
    first, left, right = (c.panel for c in g.cells)
    assert first.x == left.x and first.x + first.w == right.x + right.w  # across the row
    assert first.w == 208 == 2 * g.cell_width + layout.gutter  # at its own pixels
    assert left.y == right.y > first.y + first.h


def test_a_span_that_does_not_fit_the_rest_of_a_row_starts_the_next():
    layout = LayoutSpec(columns=3, span={"p1": 2, "p2": 3})
    rows = arrange(spans(["p0", "p1", "p2", "p3"], layout), layout)
    assert rows == [[(0, 0, 1), (1, 1, 2)], [(2, 0, 3)], [(3, 0, 1)]]


def test_rows_are_a_page_pattern_that_repeats():
    layout = LayoutSpec(columns=2, rows=[[2], [1, 1]])
    ids = [f"p{i}" for i in range(7)]
    assert spans(ids[:3], layout) == [2, 1, 1]
    assert page_count(7, layout) == 3  # three panels a page: the pattern's
    assert arrange([2, 1, 1], layout) == [[(0, 0, 2)], [(1, 0, 1), (2, 1, 1)]]
    pages = plan_pages(cells(7, wide={0: (208, 96), 3: (208, 96), 6: (208, 96)}),
                       layout.model_copy(update={"border": 0}), "")
    assert len(pages) == 3
    assert pages[0].geometry.cells[0].panel.w == 208


def test_rtl_mirrors_spans_too():
    layout = LayoutSpec(columns=3, span={"p0": 2}, direction="rtl", border=0)
    (page,) = plan_pages(cells(2), layout, "")
    a, b = (c.panel for c in page.geometry.cells)
    assert a.x > b.x  # the first panel is on the right, its two columns the right two


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_sets_what_the_layout_leaves_out(name):
    preset = LayoutSpec(preset=name)
    for key, value in PRESETS[name].items():
        assert getattr(preset, key) == value
    mine = LayoutSpec(preset=name, gutter=40, caption="above")
    assert (mine.gutter, mine.caption) == (40, "above")


def test_fit_contain_shows_the_whole_panel_and_cover_fills_the_cell():
    wide = panel(192, 96, 0)  # 2:1 into square cells
    base = dict(columns=1, cell_width=96, cell_height=96, border=0, caption="none", title=False)
    (contain,) = plan_pages([Cell("w", 1, wide)], LayoutSpec(**base, upscale=True), "")
    (cover,) = plan_pages([Cell("w", 1, wide)], LayoutSpec(**base, fit="cover"), "")
    box = contain.geometry.cells[0].panel
    assert (box.w, box.h) == (96, 48)
    box = cover.geometry.cells[0].panel
    assert (box.w, box.h) == (96, 96)
    (picture,) = [i for i in cover.items if isinstance(i, Picture)]
    # Cover crops the overflow evenly: the middle half of the panel, at its own pixels.
    assert np.array_equal(np.asarray(picture.image), np.asarray(wide)[:, 48:144])


@pytest.mark.parametrize("name, count, wide", [
    ("grid-2x2", 5, {}), ("strip-3", 3, {}), ("splash", 1, {}), ("manga-4koma", 4, {}),
    ("wide-top", 5, {0: (208, 96)}),
])
def test_golden_presets(name, count, wide):
    pages = compose_pages(cells(count, wide=wide), LayoutSpec(preset=name), "Presets")
    check_page(f"preset-{name}", pages[0])


def test_golden_cover_with_spans():
    layout = LayoutSpec(columns=3, cell_width=64, cell_height=64, fit="cover",
                        span={"p0": 2, "p3": 3}, caption="below")
    (page,) = compose_pages(cells(5, size=(96, 128), wide={3: (256, 96)}), layout, "Cover")
    check_page("cover-spans", page)


def test_a_tall_panel_stands_beside_two_stacked_ones():
    layout = LayoutSpec(columns=2, row_span={"p0": 2}, border=0, title=False)
    (page,) = plan_pages(cells(4, wide={0: (96, 240)}), layout, "")
    g = page.geometry
    tall, top, under, next_row = (c.panel for c in g.cells)
    assert arrange([1] * 4, layout, [2, 1, 1, 1]) == [[(0, 0, 1), (1, 1, 1)], [(2, 1, 1)],
                                                       [(3, 0, 1)]]
    assert tall.x < top.x == under.x and tall.y == top.y  # beside them, from the same top
    assert top.y + top.h < under.y
    assert (tall.w, tall.h) == (96, 240)  # at its own pixels, across both rows
    # Its caption touches it; the two rows grew, under the stacked pair, to make room for it.
    caption = g.cells[0].caption
    assert caption.y == tall.y + tall.h and tall.touches(caption)
    assert g.cells[2].caption.y + g.cells[2].caption.h <= caption.y + caption.h
    assert next_row.y > caption.y + caption.h  # the next row starts under all of it


def test_a_block_of_columns_and_rows_and_rtl():
    layout = LayoutSpec(columns=3, span={"p1": 2}, row_span={"p1": 2}, border=0,
                        caption="none", title=False)
    ids = [f"p{i}" for i in range(5)]
    assert arrange(spans(ids, layout), layout, row_spans(ids, layout)) == \
        [[(0, 0, 1), (1, 1, 2)], [(2, 0, 1)], [(3, 0, 1), (4, 1, 1)]]
    (page,) = plan_pages(cells(5, wide={1: (208, 208)}), layout, "")
    block = page.geometry.cells[1].panel
    assert (block.w, block.h) == (208, 208) == (2 * 96 + 16, 2 * 96 + 16)
    (rtl,) = plan_pages(cells(5, wide={1: (208, 208)}),
                        layout.model_copy(update={"direction": "rtl"}), "")
    assert rtl.geometry.cells[1].panel.x == page.geometry.cells[0].panel.x  # mirrored


def test_row_spans_with_a_fixed_cell_height_take_the_rows_and_gutters():
    layout = LayoutSpec(columns=2, cell_width=64, cell_height=64, fit="cover", border=2,
                        row_span={"p0": 2}, caption="none", title=False)
    (page,) = plan_pages(cells(3, wide={0: (96, 256)}), layout, "")
    tall, a, b = (c.panel for c in page.geometry.cells)
    assert tall.y == a.y and tall.y + tall.h == b.y + b.h  # flush with the pair


def test_row_span_is_validated_like_span(story_file):
    from conftest import run_cli

    text = ("version: 1\nmodel: tiny-sdxl\npanels:\n  - {id: ship, prompt: a boat}\n"
            "  - {id: sea, prompt: waves}\nlayout:\n  ")
    bad = story_file(text + "row_span: {shp: 2, sea: 40}\n")
    result = run_cli("validate", str(bad))
    assert result.exit_code == 2
    assert "story.yaml:7:14: layout.row_span.shp: layout.row_span names no panel 'shp'" in \
        result.output and "did you mean 'ship'?" in result.output
    assert "layout.row_span.sea: must be <= 16, got 40" in result.output
    both = story_file(text + "{preset: wide-top, row_span: {ship: 2}}\n", "both.yaml")
    result = run_cli("validate", str(both))
    assert result.exit_code == 2 and "give `rows` or `row_span`, not both" in result.output
    assert "the preset wide-top sets `rows`" in result.output


def test_the_page_hash_covers_row_spans(story_file):
    from types import SimpleNamespace

    from storyboard.output.manifest import pages_key
    from storyboard.plan import compile_story
    from storyboard.story import load_story

    text = ("version: 1\nmodel: tiny-sdxl\npanels:\n  - {id: a, prompt: a cat}\n"
            "  - {id: b, prompt: a dog}\nlayout: ")
    one = load_story(story_file(text + "{columns: 2}\n", "one.yaml"))
    two = load_story(story_file(text + "{columns: 2, row_span: {a: 2}}\n", "two.yaml"))
    jobs = compile_story(one), compile_story(two)
    assert [j.hash for j in jobs[0]] == [j.hash for j in jobs[1]], "no panel renders again"
    keys = [pages_key(s, [SimpleNamespace(job=j, path=None) for j in js])
            for s, js in zip((one, two), jobs)]
    assert keys[0] != keys[1]


def test_golden_row_spans():
    layout = LayoutSpec(columns=3, row_span={"p0": 2, "p4": 2}, span={"p4": 2})
    (page,) = compose_pages(cells(7, wide={0: (96, 208), 4: (208, 208)}), layout, "Row spans")
    check_page("row-spans", page)
