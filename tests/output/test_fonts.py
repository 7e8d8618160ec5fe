"""Font measurements kept between processes (output/fonts.py ``FontMetrics``).

A page drawn from kept measurements is the same, byte for byte, as one measured with fontTools;
a build measures its story's characters in processes of its own (``warm_metrics``) so that its
own interpreter reads no font tables; a kept file that is not one storyboard wrote is measured
again, never trusted.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from storyboard.output import fonts, pages
from storyboard.output.fonts import FontMetrics, warm_metrics
from storyboard.output.pages import Cell, plan_pages, rasterize
from storyboard.story.layout import LayoutSpec

TEXT = "Three days of rain, 她的眼睛里有了光。 ✨"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache, and nothing this process measured or loaded before."""
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))

    cached = (fonts._measurer, fonts._font, pages.load_font)  # the real ones, not stand-ins

    def forget():
        fonts._KNOWN.clear()
        for function in cached:
            function.cache_clear()

    forget()
    yield forget
    forget()


def _no_font_tables(monkeypatch):
    def refuse(*args):
        raise AssertionError("fontTools was asked to read the font in this process")

    monkeypatch.setattr(fonts, "_measurer", refuse)


def _page_bytes() -> bytes:
    from PIL import Image

    cell = Cell("p1", 1, Image.new("RGB", (96, 96), (90, 120, 150)), TEXT)
    (page,) = plan_pages([cell], LayoutSpec(columns=1, dpi=96), "Kept 測る")
    return rasterize(page).tobytes()


def test_kept_measurements_draw_the_same_page_without_reading_the_font(fresh, monkeypatch):
    measured = _page_bytes()  # fontTools, in this process
    fonts.save_metrics()
    fresh()
    _no_font_tables(monkeypatch)
    assert _page_bytes() == measured


def test_a_build_measures_its_characters_in_other_processes(fresh, monkeypatch):
    started = []
    real = subprocess.Popen

    def popen(cmd, *args, **kwargs):
        started.append(cmd)
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    chars = "她的眼睛✨" + "Kept 測る"
    warm_metrics(None, chars)
    # The page font's two weights and the emoji font, each in a process of its own.
    assert len(started) == len(fonts._faces(None)) == 3
    assert all(cmd[1:4] == ["-P", "-m", "storyboard.output.fonts"] for cmd in started)
    # Then this process has them, and reads no font to draw with them.
    _no_font_tables(monkeypatch)
    regular = pages.load_font(None, 40)
    assert regular.getlength("她的 rain") > 0 and regular.falls_back("✨")
    # Already measured: nothing is started again.
    started.clear()
    warm_metrics(None, chars)
    assert started == []


def test_where_no_process_starts_they_are_measured_here(fresh, monkeypatch):
    def no_processes(*args, **kwargs):
        raise OSError("process limit")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    warm_metrics(None, "漢字")
    fresh()
    _no_font_tables(monkeypatch)
    assert pages.load_font(None, 30, "Bold").getlength("漢字") > 0  # kept, read back


def test_the_measurements_match_fonttools(fresh):
    from fontTools.ttLib import TTFont

    from storyboard.output.glyphs import CJK_FACE, builtin_font

    warm_metrics(None, "Aé漢")
    fresh()
    kept = FontMetrics(builtin_font(), CJK_FACE, "Bold")
    tt = TTFont(builtin_font(), fontNumber=CJK_FACE, lazy=True)
    glyphs = tt.getGlyphSet(location={"wght": 700})
    cmap = tt.getBestCmap()
    assert kept.units == tt["head"].unitsPerEm
    for ch in "Aé漢":
        assert kept.widths[ord(ch)] == glyphs[cmap[ord(ch)]].width
    assert 0x10FFFD in cmap or kept.width(0x10FFFD) is None  # a character it lacks: None


@pytest.mark.parametrize("damage", [
    b"not json",
    b"[]",
    json.dumps({"units": 1000}).encode(),
    json.dumps({"units": "1000", "widths": {}}).encode(),
    json.dumps({"units": 1000, "widths": {"65": -5}}).encode(),
    json.dumps({"units": 1000, "widths": {"65": 1e9}}).encode(),
    json.dumps({"units": 1000, "widths": {"x": 500}}).encode(),
    json.dumps({"units": 1000, "widths": {"1114112": 500}}).encode(),
    json.dumps({"units": 1000, "widths": {"65": "wide"}}).encode(),
    b'{"units": 1000, "widths": {"65": NaN}}',
    json.dumps({"units": 1000, "widths": {"\u00b2": 500}}).encode(),  # a digit int() refuses
    json.dumps({"units": 1000, "widths": {"9" * 5000: 500}}).encode(),
    b"[" * 100_000 + b"]" * 100_000,  # nested past the parser's recursion limit
    b'{"units": 1000, "widths": {"65": 1' + b"0" * 400 + b"}}",  # too large for a float
    b"{" + b" " * (fonts.MAX_METRICS_BYTES + 1) + b"}",
])
def test_a_kept_file_storyboard_did_not_write_is_measured_again(fresh, damage):
    from storyboard.output.glyphs import CJK_FACE, builtin_font

    metrics = FontMetrics(builtin_font(), CJK_FACE, "Regular")
    honest = metrics.width(ord("A"))
    metrics.file.parent.mkdir(parents=True, exist_ok=True)
    metrics.file.write_bytes(damage)
    again = FontMetrics(builtin_font(), CJK_FACE, "Regular")
    assert again.widths == {} and again.units is None  # nothing taken from it
    assert again.width(ord("A")) == honest


def test_a_file_that_is_not_a_font_is_left_for_the_pages_to_report(fresh, tmp_path):
    # pages.load_font turns it into the writer's error (tests/commands/test_build.py).
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    warm_metrics(str(broken), "abc")
    assert not fonts._metrics_file(str(broken), 0, "Regular").exists()


def test_a_child_that_fails_is_measured_here(fresh, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")  # every child exits 1 at once
    warm_metrics(None, "漢字")
    fresh()
    _no_font_tables(monkeypatch)
    assert pages.load_font(None, 30).getlength("漢字") > 0  # measured here, kept


def _tiny_font(path, advance: int) -> None:
    """A TrueType font of two glyphs: "W", ``advance`` units wide, and .notdef."""
    from fontTools.fontBuilder import FontBuilder
    from fontTools.pens.ttGlyphPen import TTGlyphPen

    pen = TTGlyphPen(None)
    pen.moveTo((0, 0)), pen.lineTo((0, 500)), pen.lineTo((advance, 500)), pen.closePath()
    box = pen.glyph()
    fb = FontBuilder(1000, isTTF=True)
    fb.setupGlyphOrder([".notdef", "W"])
    fb.setupCharacterMap({ord("W"): "W"})
    fb.setupGlyf({".notdef": box, "W": box})
    fb.setupHorizontalMetrics({".notdef": (advance, 0), "W": (advance, 0)})
    fb.setupHorizontalHeader(ascent=800, descent=-200)
    fb.setupNameTable({"familyName": "Tiny", "styleName": "Regular"})
    fb.setupOS2()
    fb.setupPost()
    fb.save(str(path))


def test_a_font_changed_on_disk_is_measured_from_its_new_bytes(fresh, tmp_path, monkeypatch):
    """A long-lived process (storyboard serve) that read a story's font before the writer
    replaced it: what it measures of the new font, kept under the new font's key, is the new
    font's."""
    import os
    import sys

    font = tmp_path / "story.ttf"
    _tiny_font(font, 500)
    assert pages.load_font(str(font), 30).getlength("W") == 15  # a first build
    fonts.save_metrics()
    _tiny_font(tmp_path / "new.ttf", 900)
    os.replace(tmp_path / "new.ttf", font)
    os.utime(font, ns=(1, 1))  # a time of its own, whatever the clock's resolution
    monkeypatch.setattr(sys, "executable", "/bin/false")  # measured here, in this process
    warm_metrics(str(font), "W")
    assert pages.load_font(str(font), 30).getlength("W") == 27  # the next build's pages
    fonts.save_metrics()
    fresh()
    assert FontMetrics(str(font), 0, "Regular").widths.get(ord("W")) == 900


def test_a_font_path_that_is_not_utf8_has_its_own_measurements(fresh, tmp_path):
    import os

    folder = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")  # a Latin-1 folder name
    os.mkdir(folder)
    font = os.path.join(folder, "story.ttf")
    _tiny_font(font, 700)
    assert len(fonts.metrics_names(font)) >= 1
    assert pages.load_font(font, 30).getlength("W") > 0
    fonts.save_metrics()
    assert fonts._metrics_file(font, 0, "Regular").is_file()
