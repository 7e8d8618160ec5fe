"""The print-correct PDF (issue 16, 2): the sheet size asked for on every page, text that is
text, panels embedded losslessly, right-to-left reading, the same bytes for the same pages."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import run_cli
from pagegold import panel
from PIL import Image
from pypdf import PdfReader

from storyboard.output.ownership import Outputs
from storyboard.output.pages import Cell, Picture, plan_pages
from storyboard.output.compose import write_pages
from storyboard.story.schema import LayoutSpec

CAPTIONS = ["The storm had raged for three days.", "Ada climbed the stairs.",
            "Out at sea, a boat was looking for home.", "她的眼睛里有了光。"]


def cells() -> list[Cell]:
    sizes = [(160, 160), (120, 160), (160, 96), (96, 96)]
    return [Cell(f"p{i}", i + 1, panel(w, h, 60 * i), c)
            for i, ((w, h), c) in enumerate(zip(sizes, CAPTIONS))]


def write(tmp_path, layout: LayoutSpec, title: str = "The Lighthouse Keeper"):
    pages = plan_pages(cells(), layout, title)
    write_pages(pages, tmp_path, "story")
    return pages, PdfReader(tmp_path / "story.pdf")


@pytest.mark.parametrize("size, points", [
    ("A4", (595.28, 841.89)), ("us-comic", (477.0, 738.0)), ("Letter", (612.0, 792.0)),
    ("100mm x 150mm", (283.46, 425.2)),
])
def test_every_pdf_page_is_the_sheet_asked_for(tmp_path, size, points):
    pages, pdf = write(tmp_path, LayoutSpec(columns=2, page_size=size, dpi=100,
                                            panels_per_page=3))
    assert len(pdf.pages) == 2
    for page in pdf.pages:
        box = page.mediabox
        assert (round(float(box.width), 2), round(float(box.height), 2)) == pytest.approx(
            points, abs=0.01)
    # The PNG pages are the sheet at the dpi, and say so (pHYs).
    with Image.open(tmp_path / "page-1.png") as im:
        assert im.size == (round(points[0] / 72 * 100), round(points[1] / 72 * 100))
        assert round(im.info["dpi"][0]) == 100


def test_without_a_sheet_pages_are_their_pixels_at_the_dpi_and_all_alike(tmp_path):
    pages, pdf = write(tmp_path, LayoutSpec(columns=2, panels_per_page=3, dpi=200))
    assert len({(p.width, p.height) for p in pages}) == 1
    for page in pdf.pages:
        assert float(page.mediabox.width) == pytest.approx(pages[0].width * 72 / 200)
        assert float(page.mediabox.height) == pytest.approx(pages[0].height * 72 / 200)


def test_small_pages_without_a_sheet_or_dpi_print_at_a_readable_size(tmp_path):
    """The built-in models' 128-pixel panels make a page of a few hundred pixels: at 300 dpi a
    stamp of an inch. Without `page_size` or `dpi`, its longer side is A5's (210 mm) in the
    PDF and in the PNGs' pHYs alike; a `dpi` given, even 300, is kept."""
    small = [Cell(f"p{i}", i + 1, panel(128, 128, 60 * i), c) for i, c in enumerate(CAPTIONS)]
    pages = plan_pages(small, LayoutSpec(columns=2), "Small")
    write_pages(pages, tmp_path, "story")
    (page,) = PdfReader(tmp_path / "story.pdf").pages
    w, h = float(page.mediabox.width), float(page.mediabox.height)
    longer = max(pages[0].width, pages[0].height)
    dpi = int(longer / (210 / 25.4))
    assert pages[0].dpi == dpi < 100
    assert (w, h) == pytest.approx((pages[0].width * 72 / dpi, pages[0].height * 72 / dpi),
                                   abs=0.01)
    assert 210 / 25.4 * 72 <= max(w, h) < 210 / 25.4 * 72 * 1.02  # A5's longer side: 595 pt
    with Image.open(tmp_path / "page-1.png") as im:
        assert im.info["dpi"] == pytest.approx((dpi, dpi), abs=0.01)
    given = tmp_path / "given"
    write_pages(plan_pages(small, LayoutSpec(columns=2, dpi=300), "Small"), given, "story")
    (page,) = PdfReader(given / "story.pdf").pages
    assert float(page.mediabox.width) == pytest.approx(pages[0].width * 72 / 300)
    # Big pages are their pixels at 300 dpi, as before.
    big = plan_pages([Cell("p", 1, panel(1024, 2560, 0))], LayoutSpec(columns=1), "")
    assert big[0].dpi == 300


def test_the_page_hash_knows_a_dpi_given_from_the_default(story_file):
    from types import SimpleNamespace

    from storyboard.output.manifest import pages_key
    from storyboard.plan import compile_story
    from storyboard.story import load_story

    text = "version: 1\nmodel: tiny-sdxl\npanels:\n  - {id: a, prompt: a cat}\nlayout: "
    keys = []
    for n, layout in enumerate(("{columns: 2}", "{columns: 2, dpi: 300}")):
        story = load_story(story_file(text + layout + "\n", f"s{n}.yaml"))
        keys.append(pages_key(story, [SimpleNamespace(job=j, path=None)
                                      for j in compile_story(story)]))
    assert keys[0] != keys[1]


def test_captions_and_title_are_selectable_text_in_an_embedded_font(tmp_path):
    _, pdf = write(tmp_path, LayoutSpec(columns=2, panels_per_page=3, page_size="A5", dpi=150))
    text = "\n".join(page.extract_text() for page in pdf.pages)
    flat = "".join(text.split())
    for caption in CAPTIONS + ["The Lighthouse Keeper (1/2)", "(2/2)"]:
        assert "".join(caption.split()) in flat, caption
    fonts = pdf.pages[0]["/Resources"]["/Font"]
    for ref in fonts.values():
        descendant = ref.get_object()["/DescendantFonts"][0].get_object()
        assert "/FontFile2" in descendant["/FontDescriptor"], "the font is embedded"
    assert pdf.metadata["/Creator"] == "storyboard" and pdf.metadata["/Title"] == \
        "The Lighthouse Keeper"
    # storyboard knows the PDF as its own by its mark alone (no manifest in this folder).
    assert Outputs(tmp_path).owns("story.pdf")


def test_panels_are_embedded_losslessly_at_print_resolution(tmp_path):
    pages, pdf = write(tmp_path, LayoutSpec(columns=2, border=0))
    pictures = [item for item in pages[0].items if isinstance(item, Picture)]
    images = pdf.pages[0].images
    assert len(images) == len(pictures) == 4
    for image, picture in zip(images, pictures):
        assert image.image.size == picture.image.size  # the pixels the PNG shows, no more
        assert np.array_equal(np.asarray(image.image.convert("RGB")),
                              np.asarray(picture.image)), "lossless"
    raw = (tmp_path / "story.pdf").read_bytes()
    assert b"/DCTDecode" not in raw and b"/FlateDecode" in raw


def test_rtl_fills_rows_from_the_right_and_tells_the_reader(tmp_path):
    pages, pdf = write(tmp_path, LayoutSpec(columns=2, direction="rtl"))
    boxes = [c.panel for c in pages[0].geometry.cells]
    assert boxes[0].x > boxes[1].x and boxes[2].x > boxes[3].x
    assert pdf.trailer["/Root"]["/ViewerPreferences"]["/Direction"] == "/R2L"
    _, ltr = write(tmp_path, LayoutSpec(columns=2))
    assert "/ViewerPreferences" not in ltr.trailer["/Root"]


def test_the_same_story_gives_the_same_pdf_bytes(tmp_path, monkeypatch):
    """Even a day apart, in another process (the font subsets made again): fontTools would
    stamp each subset's "modified" date with the clock."""
    import time

    from storyboard.output.pdf import truetype_subset

    layout = LayoutSpec(columns=2, page_size="B5", dpi=96, direction="rtl")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write(tmp_path / "a", layout)
    truetype_subset.cache_clear()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86400)
    write(tmp_path / "b", layout)
    a, b = (tmp_path / "a" / "story.pdf").read_bytes(), (tmp_path / "b" / "story.pdf").read_bytes()
    assert a == b
    assert b"D:19800101" in a


def test_a_sheet_too_big_for_its_dpi_is_refused(story_file):
    story = story_file("version: 1\nmodel: tiny-sdxl\nlayout: {page_size: 100in x 100in, "
                       "dpi: 1200}\npanels:\n  - {id: p1, prompt: a cat}\n")
    result = run_cli("validate", str(story))
    assert result.exit_code == 2
    assert "a 100in x 100in page at 1200 dpi would be 120,000 x 120,000 pixels" in \
        result.output and "lower `dpi`" in result.output


def test_a_line_is_as_wide_in_the_pdf_as_in_the_png(tmp_path):
    """The PNG is measured by the font's own advances at the weight drawn (Pillow spaces every
    weight of the variable built-in font like Thin), the same the PDF's embedded instance has:
    no line of the PDF runs past the box the page gave it."""
    from fpdf import FPDF

    from storyboard.output.pages import load_font
    from storyboard.output.pdf import truetype_subset

    text = "Three days of rain, 她的眼睛里有了光。"
    regular, bold = load_font(None, 100), load_font(None, 100, "Bold")
    assert bold.getlength(text) > regular.getlength(text) * 1.02  # bold is wider
    for weight, font in (("Regular", regular), ("Bold", bold)):
        (tmp_path / f"{weight}.ttf").write_bytes(truetype_subset(None, weight, text))
        pdf = FPDF(unit="pt")
        pdf.add_font("f", "", str(tmp_path / f"{weight}.ttf"))
        pdf.set_font("f", "", 100)
        assert pdf.get_string_width(text) == pytest.approx(font.getlength(text), rel=0.002)


def test_the_layouts_font_is_embedded_and_the_libraries_stay_quiet(tmp_path, capfd, caplog):
    """A story's own TrueType font goes into the PDF; a character it lacks was `validate`'s
    to report (tests/output/test_text.py), so fontTools and fpdf2 print nothing about it."""
    from pathlib import Path

    dejavu = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if not dejavu.is_file():
        pytest.skip("no DejaVu Sans on this machine to stand for a story's font")
    cell = Cell("p", 1, panel(96, 96, 0), "By morning, everyone was safe. 完")
    caplog.set_level("DEBUG")
    write_pages(plan_pages([cell], LayoutSpec(font=str(dejavu)), "Own font"), tmp_path, "s")
    pdf = PdfReader(tmp_path / "story.pdf")
    fonts = [f.get_object()["/BaseFont"] for f in pdf.pages[0]["/Resources"]["/Font"].values()]
    assert all("DejaVuSans" in name for name in fonts)
    assert "everyone was safe." in pdf.pages[0].extract_text()
    assert not [r for r in caplog.records if r.name.startswith(("fontTools", "fpdf"))
                and r.levelno >= 30]
    assert "missing" not in capfd.readouterr().err


def test_a_margin_may_be_a_length_on_the_sheet(tmp_path):
    layout = LayoutSpec(page_size="A5", dpi=100, margin="15mm", columns=2)
    assert layout.margin == round(15 / 25.4 * 100)  # pixels at the dpi
    (page,) = plan_pages(cells(), layout, "The Lighthouse Keeper")
    ink = np.asarray(page.image().convert("L")) < 250
    rows, cols = np.nonzero(ink)
    assert cols.min() >= layout.margin and cols.max() < page.width - layout.margin
    assert rows.min() >= layout.margin and rows.max() < page.height - layout.margin


def test_fonts_cut_while_panels_render_are_the_ones_the_pdf_embeds(tmp_path):
    """A build cuts the fonts for the story's characters on a thread while its panels render
    (``warm_fonts``); writing the PDF after the last panel then cuts nothing, and its text is
    the same."""
    from storyboard.output import pdf as pdf_module

    title = "The Lighthouse Keeper"
    chars = pdf_module.story_chars([title, *CAPTIONS, *(f"p{i}" for i in range(4))])
    pages = plan_pages(cells(), LayoutSpec(columns=2, panels_per_page=3), title)
    pdf_module.truetype_subset.cache_clear()
    pdf_module.warm_fonts(None, chars)
    cut = pdf_module.truetype_subset.cache_info().misses
    write_pages(pages, tmp_path, "story", chars)
    assert pdf_module.truetype_subset.cache_info().misses == cut  # nothing cut after
    text = "".join("".join(p.extract_text() for p in PdfReader(tmp_path / "story.pdf").pages)
                   .split())
    assert all("".join(c.split()) in text for c in CAPTIONS)
    # The same pages give the same bytes whether the PNGs were encoded on threads or not.
    from storyboard.output.pages import page_png, rasterize

    assert (tmp_path / "page-1.png").read_bytes() == page_png(
        rasterize(pages[0]), _mark(tmp_path / "page-1.png"), pages[0].dpi)


def _mark(path) -> str:
    from storyboard.output.ownership import PAGE_MARK

    with Image.open(path) as im:
        return im.text[PAGE_MARK]


def test_a_bleed_grows_the_page_and_the_pdf_says_where_to_trim(tmp_path):
    # 3 mm at 100 dpi is 12 pixels: A5 (148 x 210 mm) plus 12 on every side.
    layout = LayoutSpec(columns=2, panels_per_page=4, page_size="A5", dpi=100, bleed="3mm",
                        trim_marks=True, background="#ffeecc")
    pages, pdf = write(tmp_path, layout)
    (page,) = pages
    assert (page.width, page.height) == (round(148 / 25.4 * 100) + 24,
                                         round(210 / 25.4 * 100) + 24)
    bleed = 12 * 72 / 100 * (148 / 25.4 * 100) / round(148 / 25.4 * 100)  # points
    a5 = (148 / 25.4 * 72, 210 / 25.4 * 72)
    box = pdf.pages[0]
    assert [float(v) for v in box.trimbox] == pytest.approx(
        [bleed, bleed, bleed + a5[0], bleed + a5[1]], abs=0.01)
    assert [float(v) for v in box.mediabox] == pytest.approx(
        [0, 0, a5[0] + 2 * bleed, a5[1] + 2 * bleed], abs=0.01)
    assert [float(v) for v in box.bleedbox] == [float(v) for v in box.mediabox]
    assert b" l S" in box.get_contents().get_data() or b" l\n" in box.get_contents().get_data()
    # The PNG: the background out to the edge, a dark mark at each corner in the bleed, on
    # the trim lines, and none inside the trimmed page's corners.
    with Image.open(tmp_path / "page-1.png") as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    h, w = a.shape[:2]
    dark = a.sum(axis=2) < 200
    for x, y in ((12, 0), (w - 12, 0), (12, h - 1), (w - 12, h - 1),
                 (0, 12), (w - 1, 12), (0, h - 12), (w - 1, h - 12)):
        assert dark[y, x], (x, y)
    assert not dark[12:40, 12:40].any() and not dark[h - 40:h - 12, w - 40:w - 12].any()
    assert tuple(a[h // 2, 2]) == (255, 238, 204), "the background runs into the bleed"


def test_without_a_bleed_there_are_no_page_boxes_and_marks_need_one(tmp_path):
    _, pdf = write(tmp_path, LayoutSpec(columns=2, page_size="A5", dpi=100))
    assert "/TrimBox" not in pdf.pages[0] and "/BleedBox" not in pdf.pages[0]
    with pytest.raises(ValueError, match="trim marks sit in the bleed, and the layout has none"):
        LayoutSpec(trim_marks=True)
    with pytest.raises(ValueError, match="a bleed of 2in is more than 1 in"):
        LayoutSpec(bleed="2in")


def test_font_subsets_are_cached_and_a_damaged_entry_is_made_again(tmp_path, monkeypatch):
    from storyboard.output import pdf as pdf_module

    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    subset = pdf_module.truetype_subset
    subset.cache_clear()  # the in-memory cache: every call below goes to disk
    first = subset(None, "Bold", "Ab猫")
    (entry,) = (tmp_path / "cache" / "fonts").glob("*.ttf")
    assert entry.read_bytes() == first

    made = []
    real = pdf_module._make_subset
    monkeypatch.setattr(pdf_module, "_make_subset", lambda *a: made.append(a) or real(*a))
    subset.cache_clear()
    assert subset(None, "Bold", "Ab猫") == first and made == [], "read back, not made again"
    # Another weight or other characters are other entries.
    subset.cache_clear()
    subset(None, "Regular", "Ab猫")
    assert len(made) == 1 and len(list(entry.parent.glob("*.ttf"))) == 2

    for damage in (first[: len(first) // 2], first[:-40] + bytes(40), b"not a font"):
        entry.write_bytes(damage)
        subset.cache_clear()
        made.clear()
        assert subset(None, "Bold", "Ab猫") == first
        assert len(made) == 1, "a damaged entry is made again"
        assert entry.read_bytes() == first, "... and replaced"
    subset.cache_clear()


def test_missing_subsets_are_made_in_other_processes_with_the_same_bytes(tmp_path, monkeypatch):
    """A build's fonts are cut in processes of their own (fontTools would hold this one's
    interpreter while its model loads): the same bytes as cut here, kept in the cache, and
    read back the next time without cutting anything."""
    from storyboard.output import pdf as pdf_module

    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    wanted = {"Regular": "Ab猫 (1/2)", "Bold": "Title猫"}
    here = {w: pdf_module._make_subset(None, w, c) for w, c in wanted.items()}
    spawned = []
    real = pdf_module._subsets_in_processes
    monkeypatch.setattr(pdf_module, "_subsets_in_processes",
                        lambda font, missing: spawned.append(sorted(missing)) or real(font, missing))
    assert pdf_module.truetype_subsets(None, wanted) == here
    assert spawned == [["Bold", "Regular"]]
    assert len(list((tmp_path / "cache" / "fonts").glob("*.ttf"))) == 2
    made = []
    monkeypatch.setattr(pdf_module, "_make_subset", lambda *a: made.append(a))
    assert pdf_module.truetype_subsets(None, wanted) == here
    assert made == [] and spawned == [["Bold", "Regular"]], "read back from the cache"


def test_a_childs_output_that_is_not_a_whole_font_is_cut_again_here(tmp_path, monkeypatch):
    """What a child printed is checked like a cache entry before it is embedded or kept."""
    from storyboard.output import children
    from storyboard.output import pdf as pdf_module

    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    wanted = {"Regular": "Ab", "Bold": "Cd"}
    here = {w: pdf_module._make_subset(None, w, c) for w, c in wanted.items()}
    monkeypatch.setattr(children, "run_in_children",
                        lambda module, orders: [b"warning: spoilt\n" + here["Regular"],
                                                here["Bold"][:-10]])
    assert pdf_module.truetype_subsets(None, wanted) == here
    for path in (tmp_path / "cache" / "fonts").glob("*.ttf"):
        assert path.read_bytes() in here.values()


def test_a_subset_that_fails_in_its_process_raises_its_error_here(tmp_path, monkeypatch):
    from storyboard.output import pdf as pdf_module

    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    font = tmp_path / "broken.ttf"
    font.write_bytes(b"not a font at all")
    with pytest.raises(Exception) as caught:
        pdf_module.truetype_subsets(str(font), {"Regular": "abc"})
    with pytest.raises(type(caught.value)):
        pdf_module._make_subset(str(font), "Regular", "abc")


def test_cutting_fonts_in_other_processes_never_runs_the_callers_script_again(tmp_path):
    """``multiprocessing`` would import an unguarded main script again in each child (and run
    its build again): the subsets are made by new interpreters running pdf.py alone."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text("from storyboard.output import pdf\n"
                      "print('ran', flush=True)\n"
                      "fonts = pdf.truetype_subsets(None, {'Regular': 'abc', 'Bold': 'T'})\n"
                      "print(sorted(fonts), flush=True)\n", "utf-8")
    env = dict(os.environ, STORYBOARD_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ran", "['Bold', 'Regular']"]
    assert len(list((tmp_path / "cache" / "fonts").glob("*.ttf"))) == 2


def test_a_picture_shown_twice_is_embedded_once_and_other_modes_still_embed(tmp_path):
    from fpdf import FPDF

    from storyboard.output.pdfimages import embed

    same = panel(300, 260, 40)
    twins = [Cell("a", 1, same, "one"), Cell("b", 2, same.copy(), "two")]
    write_pages(plan_pages(twins, LayoutSpec(columns=2, border=0), ""), tmp_path, "story")
    reader = PdfReader(tmp_path / "story.pdf")
    assert reader.pages[0].get_contents().get_data().count(b" Do") == 2  # drawn twice
    assert (tmp_path / "story.pdf").read_bytes().count(b"/Subtype /Image") == 1  # kept once
    # What ``embed`` does not deflate itself (an RGBA picture), fpdf2 still embeds.
    pdf = FPDF(unit="pt")
    pdf.add_page()
    rgba = panel(64, 48, 10).convert("RGBA")
    assert embed(pdf, rgba) is rgba
    grey = panel(64, 48, 10).convert("L")
    pdf.image(embed(pdf, grey), 0, 0, 64, 48)
    pdf.image(embed(pdf, rgba), 0, 100, 64, 48)
    path = tmp_path / "modes.pdf"
    path.write_bytes(bytes(pdf.output()))
    back = [obj.image for obj in PdfReader(path).pages[0].images]
    assert np.array_equal(np.asarray(back[0].convert("L")), np.asarray(grey))
    assert np.array_equal(np.asarray(back[1].convert("RGB")), np.asarray(rgba.convert("RGB")))
