"""Composing pages from panels (output/pages.py): captions wrap inside their cells, CJK glyphs
are real, aspect ratios are kept, long stories flow onto more pages."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pypdf import PdfReader

from storyboard.output.pages import Cell, compose_pages, load_font, plan_pages, wrap_text
from storyboard.output.compose import write_pages
from storyboard.story.schema import LayoutSpec

CAPTIONS = ["小紫一个人在家，百无聊赖。窗外的雨一直下，她托着腮望着天花板发呆。",
            "第一次看演唱会，舞台上的歌星闪闪发光，观众席上人山人海，她的眼睛里有了光。",
            "Mixed 中文 and English words in one caption, 一起换行。",
            "日本語のキャプションも、ちゃんと折り返されるはずです。"]


def test_captions_wrap_inside_their_cells():
    layout = LayoutSpec(columns=2, cell_width=160, gutter=24, margin=20, font_size=16,
                        border=0, title=False)
    cells = [Cell(f"p{i}", i + 1, Image.new("RGB", (160, 160), (0, 0, 0)), text)
             for i, text in enumerate(CAPTIONS)]
    (page,) = compose_pages(cells, layout, "")
    ink = np.asarray(page.convert("L")) < 128
    font = load_font(None, 16)
    cell_lefts = [20, 20 + 160 + 24]
    y = 20
    for row in range(2):
        lines = max(len(wrap_text(CAPTIONS[row * 2 + k], font, 160)) for k in range(2))
        band = ink[y + 160:y + 160 + lines * int(16 * 1.45) + 10]
        assert band.any(), "captions were drawn"
        cols = np.where(band.any(axis=0))[0]
        for x in cols:
            assert any(left <= x < left + 160 for left in cell_lefts), f"ink at x={x} outside"
        y += 160 + 5 + lines * int(16 * 1.45) + 24
    for text in CAPTIONS:
        lines = wrap_text(text, font, 160)
        assert "".join(lines).replace(" ", "") == text.replace(" ", ""), "nothing dropped"
        assert all(font.getlength(line) <= 160 for line in lines)
        assert not any(line[:1] in "，。、！？" for line in lines)


def test_cjk_font_draws_real_glyphs():
    """Different characters give different pixels (a missing glyph draws the same box)."""
    font = load_font(None, 32)
    shapes = []
    for ch in "紫发の한":
        im = Image.new("L", (40, 40), 0)
        from PIL import ImageDraw

        ImageDraw.Draw(im).text((2, 2), ch, font=font, fill=255)
        shapes.append(np.asarray(im))
    assert all(s.sum() > 0 for s in shapes)
    assert len({s.tobytes() for s in shapes}) == 4


def test_mixed_aspect_ratios_fit_without_distortion():
    layout = LayoutSpec(columns=2, cell_width=200, border=0, title=False, caption="none")
    wide = Image.new("RGB", (400, 200), (255, 0, 0))
    tall = Image.new("RGB", (200, 400), (0, 0, 255))
    (page,) = compose_pages([Cell("w", 1, wide), Cell("t", 2, tall)], layout, "")
    arr = np.asarray(page)
    red = np.argwhere((arr[..., 0] > 200) & (arr[..., 2] < 50))
    blue = np.argwhere((arr[..., 2] > 200) & (arr[..., 0] < 50))
    red_h, red_w = red.max(0) - red.min(0) + 1
    blue_h, blue_w = blue.max(0) - blue.min(0) + 1
    assert (red_w, red_h) == (200, 100) and (blue_w, blue_h) == (200, 400)


def test_panels_flow_onto_more_pages(tmp_path):
    layout = LayoutSpec(columns=2, panels_per_page=4, cell_width=64, title=True)
    cells = [Cell(f"p{i}", i + 1, Image.new("RGB", (64, 64)), "") for i in range(9)]
    pages = plan_pages(cells, layout, "Long story")
    assert len(pages) == 3
    # All the same size, a short last page included (its content at the top).
    assert len({(p.width, p.height) for p in pages}) == 1
    written = write_pages(pages, tmp_path, "s")
    assert [p.name for p in written] == ["page-1.png", "page-2.png", "page-3.png", "story.pdf",
                                        "story.cbz"]
    assert len(PdfReader(tmp_path / "story.pdf").pages) == 3


def test_the_same_pages_give_the_same_pdf_bytes(tmp_path, monkeypatch):
    """The PDF's dates are fixed (SOURCE_DATE_EPOCH where set) and its id is a hash of its
    content, so the clock cannot change its bytes: here the clock moves a day between the two
    writes."""
    import time

    real = time.time
    clock = iter(range(0, 10**9, 86400))
    monkeypatch.setattr(time, "time", lambda: real() + next(clock))
    layout = LayoutSpec(columns=2, cell_width=64, title=True)
    cells = [Cell(f"p{i}", i + 1, Image.new("RGB", (64, 64)), f"caption {i}") for i in range(3)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_pages(plan_pages(cells, layout, "Same bytes"), tmp_path / "a", "s")
    write_pages(plan_pages(cells, layout, "Same bytes"), tmp_path / "b", "s")
    for name in ("story.pdf", "page-1.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    write_pages(plan_pages(cells, layout, "Same bytes"), tmp_path / "b", "s")
    assert b"D:20231114" in (tmp_path / "b" / "story.pdf").read_bytes()
