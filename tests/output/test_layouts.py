"""Layout as data (issue 16, 4): panels spanning columns, an explicit rows form, named presets,
and how a panel fills a cell of fixed height (contain or cover); a golden page for each."""

from __future__ import annotations

import numpy as np
import pytest
from pagegold import check_page, panel

from storyboard.output.geometry import arrange, page_count, spans
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
