"""`storyboard plan` suggests the native render size that fits each panel's box on the page
(issue 16): SDXL's buckets, scaled for the family, chosen by the box's shape."""

from __future__ import annotations

import json

from conftest import run_cli

from storyboard.output.sizes import (
    SDXL_BUCKETS, best_size, native_sizes, panel_boxes, size_suggestions,
)
from storyboard.story.schema import LayoutSpec


def test_native_sizes_are_sdxls_buckets_scaled_to_the_family():
    assert native_sizes(1024) == list(SDXL_BUCKETS)
    sd15 = native_sizes(512)
    assert sd15[0] == (512, 512) and (768, 320) in sd15 and (320, 768) in sd15
    assert all(w % 8 == 0 and h % 8 == 0 for w, h in native_sizes(128) + sd15)


def test_the_best_size_has_the_boxs_shape():
    sizes = native_sizes(1024)
    assert best_size((1200, 500), sizes) == (1536, 640)
    assert best_size((1000, 500), sizes) == (1344, 768), "2:1 is nearer 1.75:1 than 2.4:1"
    assert best_size((500, 1200), sizes) == (640, 1536)
    assert best_size((300, 300), sizes) == (1024, 1024)
    assert best_size((400, 300), sizes) == (1152, 896)
    assert best_size((300, 400), sizes) == (896, 1152)


def test_boxes_follow_the_layout():
    panels = [("wide", 1024, 1024), ("a", 1024, 1024), ("b", 1024, 1024)]
    # wide-top without cell_height: one-column panels take their own shape; the spanning one
    # is two columns wide and as tall as they are drawn.
    boxes = dict(panel_boxes(panels, LayoutSpec(preset="wide-top", gutter=16, border=2)))
    assert boxes["a"] is None and boxes["b"] is None
    assert boxes["wide"] == (2 * 1028 + 16 - 4, 1024)
    # With cell_height every box is the cell's picture area.
    boxes = dict(panel_boxes(panels, LayoutSpec(preset="wide-top", cell_width=512,
                                                cell_height=384, border=0, gutter=0)))
    assert boxes == {"wide": (1024, 384), "a": (512, 384), "b": (512, 384)}


def test_only_panels_off_their_best_size_are_suggested():
    panels = [("wide", 1536, 640), ("a", 1024, 1024), ("b", 1152, 896)]
    layout = LayoutSpec(preset="wide-top", cell_width=512, cell_height=400, border=0, gutter=0)
    (only,) = size_suggestions(panels, layout, 1024)
    assert only.panel == "a" and only.best == (1152, 896) and only.now == (1024, 1024)
    assert only.line() == "panel a: box 1.3:1 fits 1152x896 best (now 1024x1024)"
    assert size_suggestions(panels[:1], LayoutSpec(columns=1), 1024) == [], \
        "a one-column panel without cell_height: the page takes its shape"


def test_plan_prints_and_json_has_the_suggestions(story_file):
    story = story_file("version: 1\nmodel: tiny-sdxl\npanels:\n  - {id: wide, prompt: a ship}\n"
                       "  - {id: a, prompt: a cat}\n  - {id: b, prompt: a dog}\n"
                       "layout:\n  preset: wide-top\n")
    result = run_cli("plan", str(story))
    assert result.exit_code == 0, result.output
    assert "panel wide: box 2.2:1 fits 192x80 best (now 128x128)" in result.output
    assert "panel a:" not in result.output
    result = run_cli("plan", "--json", str(story))
    sizes = json.loads(result.output)["sizes"]
    assert sizes == [{"panel": "wide", "box": [276, 128], "ratio": "2.2:1", "best": [192, 80],
                      "now": [128, 128]}]
