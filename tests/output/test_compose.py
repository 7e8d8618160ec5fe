"""Pages composed as their panels arrive (``output.compose``): a page is drawn, and put in the
PDF, before the panels of later pages are in; the files are byte for byte what composing
them all at the end writes, also when a panel never came or came at another size."""

from __future__ import annotations

from pathlib import Path

import pytest
from pagegold import panel

from storyboard.output.compose import PageComposer, Slot
from storyboard.output.pages import Cell, plan_pages
from storyboard.output.compose import write_pages
from storyboard.output.pdf import story_chars
from storyboard.story.schema import LayoutSpec

SIZES = [(160, 160), (120, 160), (160, 96), (96, 96), (160, 160)]
CAPTIONS = ["The storm.", "Ada climbed.", "A boat at sea.", "她的眼睛里有了光。", "Morning."]
TITLE = "The Lighthouse Keeper"
LAYOUT = LayoutSpec(columns=2, panels_per_page=2)


@pytest.fixture
def panels(tmp_path) -> list[Path]:
    folder = tmp_path / "cache"
    folder.mkdir()
    paths = []
    for i, (w, h) in enumerate(SIZES):
        path = folder / f"{i}.png"
        panel(w, h, 50 * i).save(path)
        paths.append(path)
    return paths


def slots(sizes=SIZES) -> list[Slot]:
    return [Slot(f"p{i}", i + 1, c, (), s) for i, (s, c) in enumerate(zip(sizes, CAPTIONS))]


CHARS = story_chars([TITLE, *CAPTIONS, *(f"p{i}" for i in range(len(SIZES)))])


def at_the_end(out: Path, paths: list[Path | None]) -> dict[str, bytes]:
    """What composing every page after the last panel writes (the reference)."""
    from PIL import Image

    out.mkdir()
    cells = []
    for i, (s, path) in enumerate(zip(slots(), paths)):
        image = None
        if path is not None:
            with Image.open(path) as im:
                image = im.convert("RGB")
        cells.append(Cell(s.panel, s.number, image, s.caption, ()))
    written = write_pages(plan_pages(cells, LAYOUT, TITLE), out, "story", CHARS)
    return {p.name: p.read_bytes() for p in written}


def idle(composer: PageComposer) -> None:
    composer.worker.submit(lambda: None).result()  # everything queued before is done


def test_a_page_is_drawn_and_in_the_pdf_before_later_panels_arrive(tmp_path, panels):
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(slots(), LAYOUT, TITLE, "story", out, CHARS) as composer:
        composer.arrived(1, panels[1])
        composer.arrived(0, panels[0])
        idle(composer)
        assert set(composer.pages) == {0} and composer.added == 1  # page 1, before panel 3
        composer.pngs[0].result()
        # Written and synced as soon as it is encoded, put in place only when all is done.
        assert not (out / "page-1.png").exists() and len(list(out.glob(".page-1.png.*.tmp"))) == 1
        composer.arrived(3, panels[3])  # page 2 waits for panel 3; the PDF waits in order
        composer.arrived(4, panels[4])
        idle(composer)
        assert set(composer.pages) == {0, 2} and composer.added == 1
        composer.arrived(2, panels[2])
        written = composer.finish(lambda i: True)
    assert composer.added == 3
    assert {p.name: p.read_bytes() for p in written} == at_the_end(tmp_path / "ref", panels)
    assert not list(out.glob(".*.tmp"))


def test_a_build_stopped_before_the_end_leaves_the_last_good_pages(tmp_path, panels):
    out = tmp_path / "out"
    out.mkdir()
    (out / "page-1.png").write_bytes(b"the last good page")
    with PageComposer(slots(), LAYOUT, TITLE, "story", out, CHARS) as composer:
        composer.arrived(0, panels[0])
        composer.arrived(1, panels[1])
        idle(composer)
        composer.pngs[0].result()  # page 1 is written beside it, not over it
    assert (out / "page-1.png").read_bytes() == b"the last good page"
    assert not list(out.glob(".*.tmp")), "the unfinished page is removed on leaving"


def test_a_deferred_composer_draws_nothing_until_begun_then_catches_up(tmp_path, panels):
    """A build begins its composer once the model is loaded (the first pages load fonts and
    libraries, which would slow the loading): panels that arrived before are drawn then, and
    the bytes are the same."""
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(slots(), LAYOUT, TITLE, "story", out, CHARS, defer=True) as composer:
        composer.arrived(0, panels[0])
        composer.arrived(1, panels[1])
        assert composer.started is None and not composer.queued
        composer.begin()
        idle(composer)
        assert set(composer.pages) == {0} and composer.added == 1
        composer.begin()  # once only
        for i in (2, 3, 4):
            composer.arrived(i, panels[i])
        written = composer.finish(lambda i: True)
    assert {p.name: p.read_bytes() for p in written} == at_the_end(tmp_path / "ref", panels)


def test_finish_begins_a_composer_never_begun(tmp_path, panels):
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(slots(), LAYOUT, TITLE, "story", out, CHARS, defer=True) as composer:
        for i, path in enumerate(panels):
            composer.arrived(i, path)
        written = composer.finish(lambda i: True)
    assert {p.name: p.read_bytes() for p in written} == at_the_end(tmp_path / "ref", panels)
    assert set(composer.timings) == {"composing", "pdf", "png", "writing"}


def test_a_panel_that_never_came_gives_the_pages_a_final_compose_gives(tmp_path, panels):
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(slots(), LAYOUT, TITLE, "story", out, CHARS) as composer:
        for i in (0, 1, 3, 4):  # panel 2 failed
            composer.arrived(i, panels[i])
        written = composer.finish(lambda i: i != 2)
    expected = at_the_end(tmp_path / "ref", [p if i != 2 else None
                                             for i, p in enumerate(panels)])
    assert {p.name: p.read_bytes() for p in written} == expected


def test_a_panel_of_another_size_than_planned_is_composed_again(tmp_path, panels):
    out = tmp_path / "out"
    out.mkdir()
    planned = list(SIZES)
    planned[0] = (128, 128)  # the job said so; the file is 160x160
    with PageComposer(slots(planned), LAYOUT, TITLE, "story", out, CHARS) as composer:
        for i, path in enumerate(panels):
            composer.arrived(i, path)
        written = composer.finish(lambda i: True)
    assert {p.name: p.read_bytes() for p in written} == at_the_end(tmp_path / "ref", panels)


def test_a_bleed_and_trim_marks_come_out_as_composing_at_the_end_gives(tmp_path, panels,
                                                                        monkeypatch):
    """The composer draws each page as plan_pages does: grown by the bleed (the PDF's
    /TrimBox, the marks in it), at the dpi it is printed at."""
    layout = LayoutSpec(columns=2, panels_per_page=2, bleed="3mm", trim_marks=True)
    monkeypatch.setitem(globals(), "LAYOUT", layout)  # at_the_end's too
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(slots(), layout, TITLE, "story", out, CHARS) as composer:
        for i, path in enumerate(panels):
            composer.arrived(i, path)
        written = composer.finish(lambda i: True)
    got = {p.name: p.read_bytes() for p in written}
    assert got == at_the_end(tmp_path / "ref", panels)
    assert b"/TrimBox" in got["story.pdf"]


def test_panels_are_deflated_for_the_pdf_as_they_land_with_the_same_bytes(tmp_path,
                                                                           monkeypatch):
    """A panel that needs no scaling to fit its box is deflated for the PDF when it is read,
    on the encoders, not when its page is added; the PDF is byte for byte the same."""
    import storyboard.output.pdfimages as pdfimages

    folder = tmp_path / "cache"
    folder.mkdir()
    paths = []
    for i in range(4):
        paths.append(folder / f"{i}.png")
        panel(160, 160, 40 * i).save(paths[-1])
    layout = LayoutSpec(columns=2, panels_per_page=2, cell_width=160, border=0)
    sizes = [Slot(f"p{i}", i + 1, CAPTIONS[i], (), (160, 160)) for i in range(4)]
    late = []  # pictures ``embed`` had to deflate itself, when the page was added
    real = pdfimages.describe
    monkeypatch.setattr(pdfimages, "describe", lambda image: late.append(1) or real(image))
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(sizes, layout, TITLE, "story", out, CHARS) as composer:
        for i, path in enumerate(paths):
            composer.arrived(i, path)
        written = composer.finish(lambda i: True)
    assert late == [] and composer.pictures == {}
    ref = tmp_path / "ref"
    ref.mkdir()
    from PIL import Image

    cells = [Cell(s.panel, s.number, Image.open(p).convert("RGB"), s.caption, ())
             for s, p in zip(sizes, paths)]
    reference = write_pages(plan_pages(cells, layout, TITLE), ref, "story", CHARS)
    assert len(late) == 4  # composing at the end deflates each picture as it adds it
    assert {p.name: p.read_bytes() for p in written} == {
        p.name: p.read_bytes() for p in reference}


def test_the_composer_reads_no_font_tables_on_its_thread(tmp_path, panels, monkeypatch):
    """Planning the pages runs on a thread while the first batch renders: the fonts are
    measured in processes of their own (``fonts.warm_metrics``), never with fontTools in this
    interpreter, whose lock the render loop needs (issue 17: 2 s of an SDXL first batch). The
    pages are the same bytes as composing at the end."""
    from storyboard.output import fonts, pages

    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache-of-its-own"))
    measurer = fonts._measurer
    for cached in (measurer, fonts._font, pages.load_font):
        cached.cache_clear()
    monkeypatch.setattr(fonts, "_KNOWN", {})
    read: list = []

    def watched(*args):
        read.append(args)
        return measurer(*args)

    monkeypatch.setattr(fonts, "_measurer", watched)
    out = tmp_path / "out"
    out.mkdir()
    with PageComposer(slots(), LAYOUT, TITLE, "story", out, CHARS) as composer:
        composer.started.result()
        assert read == []  # planned from measurements made elsewhere
        for i, path in enumerate(panels):
            composer.arrived(i, path)
        written = composer.finish(lambda i: True)
    assert {p.name: p.read_bytes() for p in written} == at_the_end(tmp_path / "ref", panels)
    for cached in (measurer, fonts._font, pages.load_font):
        cached.cache_clear()
