"""The story's PDF, made for print: ``story.pdf`` from the planned pages.

In: the ``pages.Page`` plans (pictures, fills and text lines in pixels at the layout's ``dpi``),
the story's title, the reading direction. Out: PDF bytes (fpdf2) where
- every page is the same physical size: the ``page_size`` sheet, else the pages' pixels at
  ``dpi`` (points = pixels x 72 / dpi);
- panels are embedded losslessly (Flate with PNG's "Up" predictor, deflated on every core:
  ``pdfimages``; the pixels the PNG page shows, at print resolution);
  speech balloons and narration boxes are vector shapes;
- the title, captions and panel numbers are real text in the page font, embedded (a subset of
  just the glyphs used), so they can be selected, searched and read aloud; characters it
  lacks that the emoji font has are text in that one, embedded too;
- a ``bleed`` makes each page that much bigger on every side, with a ``/TrimBox`` of the
  sheet and a ``/BleedBox`` of the whole page; ``trim_marks`` are vector lines in it;
- ``direction: rtl`` sets ``/ViewerPreferences /Direction /R2L``;
- the same pages give the same bytes: fixed dates (1980-01-01, or ``SOURCE_DATE_EPOCH``) and a
  file id that is a hash of the content, never random;
- ``/Creator`` is storyboard's mark (``ownership``).

The built-in font (Noto Sans CJK) is a variable CFF2 collection, which PDF viewers cannot take
as it is: the glyphs a story uses are cut out of it (fontTools), fixed at the weight drawn
(Regular, Bold) and turned into TrueType outlines; a story's own font goes the same way when it
has CFF outlines. Each subset is made once and kept in the cache (``fonts/``): a story's
next build writes its PDF without the seconds subsetting takes.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from ..paths import atomic_write_bytes, cache_root, read_bounded, sha256_of
from .glyphs import CJK_FACE, builtin_font, emoji_font, fallback_chars
from .ownership import PDF_CREATOR
from .pdfimages import embed
from .pngenc import LEVEL

# The date a PDF says it was made, unless SOURCE_DATE_EPOCH says otherwise: 1980-01-01, as
# reproducible zips and wheels use. The pages' content decides their bytes, not the clock.
REPRODUCIBLE_EPOCH = 315532800
_WEIGHTS = {"Regular": 400, "Bold": 700}


def build_date() -> datetime.datetime:
    seconds = int(os.environ.get("SOURCE_DATE_EPOCH", REPRODUCIBLE_EPOCH))
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


@contextmanager
def _quiet() -> Iterator[None]:
    """fontTools and fpdf2 log, on the console, what `validate` already told the writer (a
    character the font has no glyph for) or what does not matter (a font table the subsetter
    drops); a build prints only storyboard's own words."""
    loggers = [logging.getLogger(name) for name in ("fontTools", "fpdf")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def write_pdf(pages: Sequence, title: str, rtl: bool = False, chars: str = "") -> bytearray:
    """The PDF of ``pages`` (``pages.Page``), one PDF page each. ``chars``: characters the
    embedded fonts carry besides the pages' own (``story_chars``): a build passes the
    story's, so the subsets ``warm_fonts`` made while panels rendered are the ones used."""
    writer = PdfWriter(pages[0].font if pages else None, title, rtl, font_chars(pages, chars))
    for page in pages:
        writer.add(page)
    return writer.finish()


def font_chars(pages: Sequence, chars: str = "") -> dict[str, str]:
    """The characters each weight's embedded font carries: those the pages draw in it, and
    ``chars`` (with ``chars`` covering the pages', exactly the subset ``warm_fonts`` made)."""
    texts = [item for page in pages for item in page.items if hasattr(item, "text")]
    return {weight: "".join(sorted({ch for t in texts if t.weight == weight for ch in t.text}
                                   | set(chars)))
            for weight in sorted({t.weight for t in texts})}


class PdfWriter:
    """A PDF built a page at a time, so a build can add each page as soon as its panels are
    in (``compose.PageComposer``); ``write_pdf`` adds them all at once. The same pages give
    the same bytes either way. ``fonts``: each weight's characters (``font_chars``)."""

    def __init__(self, font: str | None, title: str, rtl: bool, fonts: dict[str, str]):
        from fpdf import FPDF
        from fpdf.prefs import ViewerPreferences
        from fpdf.syntax import Name

        class Preferences(ViewerPreferences):
            # fpdf2 writes its TextDirection value ("RTL"); the PDF name is /R2L (ISO 32000
            # 12.2).
            @property
            def direction(self):
                return Name("R2L") if rtl else None

            @direction.setter
            def direction(self, value):
                pass

        pdf = self.pdf = FPDF(unit="pt")
        # What the page font lacks and the emoji font has, in any weight: embedded as one
        # face, added with the first page (``_add_emoji``).
        self._emoji: str | None = fallback_chars("".join(fonts.values()), font)
        pdf.set_creation_date(build_date())
        pdf.set_creator(PDF_CREATOR)
        pdf.set_producer(PDF_CREATOR)  # not fpdf2's version: the bytes follow the pages alone
        if title:
            pdf.set_title(title)
        pdf.set_margin(0)
        pdf.set_auto_page_break(False)
        pdf.set_image_filter("FlateDecode")  # lossless: never JPEG
        if rtl:
            pdf.viewer_preferences = Preferences()
        self._tmp = tempfile.TemporaryDirectory(prefix="storyboard-pdf-")
        subsets = truetype_subsets(font, fonts)
        with _quiet():
            for weight in sorted(fonts):
                path = Path(self._tmp.name) / f"{weight}.ttf"
                path.write_bytes(subsets[weight])
                pdf.add_font("page", "B" if weight == "Bold" else "", str(path))

    def add(self, page, ready: dict[str, dict] | None = None) -> None:
        """Add ``page``; ``ready``: its pictures already deflated (``pdfimages.describe``),
        by name; those used are taken out of it."""
        from fpdf.image_parsing import SETTINGS

        if self._emoji:
            self._add_emoji()

        level = SETTINGS.compression_level
        # A picture fpdf2 deflates itself (not RGB or grey: ``pdfimages``) at the level
        # ``pdfimages`` uses (``pngenc.LEVEL``). Set for this call only: the setting is global.
        SETTINGS.compression_level = LEVEL
        try:
            with _quiet():
                _page(self.pdf, page, ready)
        finally:
            SETTINGS.compression_level = level

    def _add_emoji(self) -> None:
        path = Path(self._tmp.name) / "Emoji.ttf"
        with _quiet():
            path.write_bytes(truetype_subset(emoji_font(), "Regular", self._emoji))
            self.pdf.add_font("emoji", "", str(path))
        self._emoji = None

    def finish(self) -> bytearray:
        try:
            with _quiet():
                return self.pdf.output()  # not copied into ``bytes``: 13 MB a page
        finally:
            self.close()

    def close(self) -> None:
        """Remove the fonts' scratch folder (``finish`` does; a PDF not finished needs it)."""
        self._tmp.cleanup()


def story_chars(texts: Iterable[str]) -> str:
    """Every character a story's pages can show: its title, captions, balloons and panel ids
    (``texts``), the vertical forms of their punctuation (vertical balloons draw those), the
    placeholder's words, digits and the "(n/N)" suffix's."""
    from .vertical import FORMS

    chars = set("".join(texts))
    return "".join(sorted(chars | {FORMS[ch] for ch in chars if ch in FORMS}
                          | set("0123456789 ()/not rendered")))


def warm_fonts(font: str | None, chars: str) -> None:
    """Subset the page font's weights for ``chars`` now (``truetype_subset`` keeps them), so
    that writing the PDF after the last panel does not: seconds for the built-in CJK font.
    A build's ``PdfWriter`` does the same for its pages' weights while panels render."""
    truetype_subsets(font, {weight: chars for weight in _WEIGHTS})
    emoji = fallback_chars(chars, font)
    if emoji:
        truetype_subset(emoji_font(), "Regular", emoji)


def subset_key(font: str | None, weight: str, chars: str) -> str | None:
    """The key ``truetype_subset`` keeps a subset under (None: an unreadable font)."""
    return _subset_key(font, weight, chars)


def _page(pdf, page, ready: dict[str, dict] | None = None) -> None:
    # Points per pixel: the sheet's exact size (its pixels are rounded) or the dpi's. A bleed
    # is pixels around the sheet: the sheet keeps its exact size and the bleed is added to it.
    b = page.bleed
    pt = page.inches[0] * 72 / (page.width - 2 * b) if page.inches else 72 / page.dpi
    trim = (page.inches[0] * 72, page.inches[1] * 72) if page.inches else \
        ((page.width - 2 * b) * pt, (page.height - 2 * b) * pt)
    size = (trim[0] + 2 * b * pt, trim[1] + 2 * b * pt)
    pdf.add_page(format=size)
    if b:
        _page_boxes(pdf, trim=(b * pt, b * pt, b * pt + trim[0], b * pt + trim[1]), size=size)
    if page.background != (255, 255, 255):
        pdf.set_fill_color(*page.background)
        pdf.rect(0, 0, *size, style="F")
    for item in page.items:
        if hasattr(item, "text"):
            pdf.set_text_color(*item.color)
            if item.rotate:  # on its side in a column of vertical text
                with pdf.rotation(-item.rotate, item.x * pt, item.y * pt):
                    _text(pdf, page, item, pt)
            else:
                _text(pdf, page, item, pt)
        elif hasattr(item, "image"):
            b = item.box
            pdf.image(embed(pdf, item.image, ready), b.x * pt, b.y * pt, b.w * pt, b.h * pt)
        elif hasattr(item, "outline"):  # a balloon's shape, as vector paths
            b = item.box
            pdf.set_fill_color(*item.fill)
            pdf.set_draw_color(*item.outline)
            pdf.set_line_width(item.width * pt)
            if item.kind == "line":
                (x1, y1), (x2, y2) = item.points
                pdf.line(x1 * pt, y1 * pt, x2 * pt, y2 * pt)
            elif item.kind in ("oval", "bubble"):
                pdf.ellipse(b.x * pt, b.y * pt, b.w * pt, b.h * pt, style="DF")
            elif item.kind == "box":
                pdf.rect(b.x * pt, b.y * pt, b.w * pt, b.h * pt, style="DF")
            else:
                pdf.polygon([(x * pt, y * pt) for x, y in item.points], style="DF")
        else:
            b = item.box
            pdf.set_fill_color(*item.color)
            pdf.rect(b.x * pt, b.y * pt, b.w * pt, b.h * pt, style="F")


def _text(pdf, page, item, pt: float) -> None:
    """A line of text, in runs: the page font's, and the emoji font's for what it lacks."""
    from .pages import load_font

    face = load_font(page.font, item.size, item.weight)
    x, run = item.x, ""
    for k, ch in enumerate(item.text):
        run += ch
        if k + 1 < len(item.text) and face.falls_back(item.text[k + 1]) == face.falls_back(ch):
            continue
        if face.falls_back(ch):
            pdf.set_font("emoji", "", item.size * pt)
        else:
            pdf.set_font("page", "B" if item.weight == "Bold" else "", item.size * pt)
        # The page was laid out with fonts.PageFont's advances, which the embedded font has
        # too (up to rounding to font units); should a font's differ (a font whose hmtx
        # fontTools and fpdf2 read differently), a run must still keep to its box: it is
        # stretched to the width it was given.
        given = face.getlength(run) * pt
        pdf.set_stretching(100)  # fpdf2 measures with the stretching in force
        own = pdf.get_string_width(run)
        pdf.set_stretching(100 * given / own if own and abs(given - own) > own / 200 else 100)
        pdf.text(x * pt, item.y * pt, run)
        x += given / pt
        run = ""


def _page_boxes(pdf, trim: tuple[float, float, float, float],
                size: tuple[float, float]) -> None:
    """Give the page just added a /TrimBox (where the printer cuts) and a /BleedBox (all of
    it, as its /MediaBox). fpdf2 2.8 has no call for page boxes; it writes a page object's
    attributes as its keys (``trim_box`` -> ``/TrimBox``), and ``PDFPage`` has fixed slots, so
    the page is swapped, before anything is drawn on it, for one that has these two too."""
    from fpdf.output import PDFPage

    class BoxedPage(PDFPage):
        __slots__ = ("trim_box", "bleed_box")

    old = pdf.pages[pdf.page]
    page = BoxedPage(duration=None, transition=None, contents=old.contents, index=old.index())
    page.set_dimensions(*old.dimensions())
    page.trim_box = "[" + " ".join(f"{v:.2f}" for v in trim) + "]"
    page.bleed_box = f"[0 0 {size[0]:.2f} {size[1]:.2f}]"
    pdf.pages[pdf.page] = page


# Part of every cached subset's key: bump it when _make_subset's output changes.
SUBSET_RECIPE = 1
MAX_SUBSET_BYTES = 64 << 20  # a cached subset bigger than this is not one we wrote


@lru_cache(maxsize=8)
def truetype_subset(font: str | None, weight: str, chars: str) -> bytes:
    """A TrueType font with just the glyphs for ``chars``, from the page font (``None``: the
    built-in one, at ``weight``; a story's font as it is). Making one takes seconds (4-5 for
    the 65,000-glyph CJK collection), so it is kept in the cache
    (``fonts/<key>.ttf``, the key a hash of the font's identity, weight, characters,
    fontTools' version and ``SUBSET_RECIPE``) and read back the next time, if it is whole:
    an entry that does not parse, or whose tables fail their checksums, is made again."""
    path = _subset_path(font, weight, chars)
    if path is not None:
        cached = _read_subset(path)
        if cached is not None:
            return cached
    data = _make_subset(font, weight, chars)
    if path is not None:
        try:
            atomic_write_bytes(path, data)
        except OSError:
            pass  # a cache that cannot be written costs time on the next build, nothing more
    return data


def truetype_subsets(font: str | None, wanted: dict[str, str]) -> dict[str, bytes]:
    """``truetype_subset`` for each weight of ``wanted`` (weight -> characters). Those not in
    the cache are made at the same time, each in a process of its own: fontTools holds the
    interpreter for the seconds the CJK font takes, and while a build's panels render that
    would be taken from the model loading and the render loop in this process. Where no
    process can be started, they are made here, one after the other."""
    found: dict[str, bytes] = {}
    paths: dict[str, Path | None] = {}
    for weight, chars in wanted.items():
        paths[weight] = path = _subset_path(font, weight, chars)
        cached = _read_subset(path) if path is not None else None
        if cached is not None:
            found[weight] = cached
    missing = {w: c for w, c in wanted.items() if w not in found and paths[w] is not None}
    if len(missing) > 1 or (missing and (os.cpu_count() or 1) > 1):
        found.update(_subsets_in_processes(font, missing))
    for weight, chars in wanted.items():
        if weight not in found:
            found[weight] = truetype_subset(font, weight, chars)  # and its error, if any
        elif weight in missing:
            try:
                atomic_write_bytes(paths[weight], found[weight])
            except OSError:
                pass  # as in truetype_subset: the next build makes it again
    return found


def _subset_path(font: str | None, weight: str, chars: str) -> Path | None:
    """Where the cache keeps a subset (None: a font that cannot be read)."""
    key = _subset_key(font, weight, chars)
    return cache_root() / "fonts" / f"{key}.ttf" if key else None


def _subsets_in_processes(font: str | None, missing: dict[str, str]) -> dict[str, bytes]:
    """The subsets of ``missing`` made at the same time, each by a new interpreter running
    this module (``children``); those that failed are left out, to be made (or to raise their
    error) in this process."""
    from .children import run_in_children

    weights = list(missing)
    outs = run_in_children(__name__, [[font, w, missing[w]] for w in weights])
    # Checked like a cache entry before it is embedded or kept: a child's output is bytes on a
    # pipe, which anything printed there would spoil.
    return {w: out for w, out in zip(weights, outs) if out and _whole(out)}


def _make_subset_quietly(font: str | None, weight: str, chars: str) -> bytes:
    """``_make_subset`` in a process of its own, its fontTools chatter kept off the terminal
    as in this one (``_quiet``)."""
    with _quiet():
        return _make_subset(font, weight, chars)


def _subset_key(font: str | None, weight: str, chars: str) -> str | None:
    """The cache key of a subset; None for a font that cannot be read (``_make_subset`` then
    says why, as it always has)."""
    import fontTools

    if font is None:
        path = Path(builtin_font())
        try:
            stat = path.stat()  # a reinstalled package: a new entry
            identity = f"builtin:{path.name}:{CJK_FACE}:{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            return None
    else:
        digest = sha256_of(Path(font))
        if digest is None:
            return None
        identity = f"file:{digest}"
    blob = json.dumps([identity, weight, chars, fontTools.version, SUBSET_RECIPE],
                      ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _read_subset(path: Path) -> bytes | None:
    """A cached subset's bytes, or None when there is none or it is damaged (cut short,
    overwritten, too big): every table is read and its checksum checked."""
    try:
        data = read_bounded(path, MAX_SUBSET_BYTES)
    except OSError:
        return None
    return data if _whole(data) else None


def _whole(data: bytes) -> bool:
    """Whether ``data`` is a whole subset: not too big, every table read and its checksum
    checked (a cache entry, or what a child printed)."""
    from fontTools.ttLib import TTFont

    if len(data) > MAX_SUBSET_BYTES:
        return False
    try:
        tt = TTFont(io.BytesIO(data), checkChecksums=2, lazy=False)
        if "glyf" not in tt or "cmap" not in tt:
            return False
        tt.ensureDecompiled()
    except Exception:  # fontTools raises many kinds on a damaged file: all mean "make it again"
        return False
    return True


def _make_subset(font: str | None, weight: str, chars: str) -> bytes:
    """Subsetting first keeps this to a few seconds for a 65,000-glyph CJK collection."""
    from fontTools import subset
    from fontTools.ttLib import TTFont

    path = font or builtin_font()
    face = CJK_FACE if font is None else 0
    kwargs = {"fontNumber": face} if path.lower().endswith((".ttc", ".otc")) else {}
    # Saved with the font's own "modified" date, not the clock's: the same story, the same bytes.
    tt = TTFont(path, recalcTimestamp=False, **kwargs)
    options = subset.Options()
    options.layout_features = []  # fpdf2 places glyphs one by one: no shaping tables needed
    options.name_IDs = ["*"]
    options.notdef_outline = True
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=chars)
    subsetter.subset(tt)
    if "fvar" in tt:
        from fontTools.varLib import instancer

        axes = {a.axisTag for a in tt["fvar"].axes}
        tt = instancer.instantiateVariableFont(
            tt, {"wght": _WEIGHTS[weight]} if "wght" in axes else {})
    if "glyf" not in tt:
        _to_truetype(tt)
    buf = io.BytesIO()
    tt.save(buf)
    return buf.getvalue()


def _to_truetype(tt) -> None:
    """CFF/CFF2 (cubic) outlines -> glyf (quadratic), in place: fpdf2 embeds TrueType fonts."""
    from fontTools.pens.cu2quPen import Cu2QuPen
    from fontTools.pens.ttGlyphPen import TTGlyphPen
    from fontTools.ttLib import newTable

    order = tt.getGlyphOrder()
    glyphs = tt.getGlyphSet()
    glyf = newTable("glyf")
    glyf.glyphOrder = order
    glyf.glyphs = {}
    for name in order:
        pen = TTGlyphPen(None)
        # 1 font unit of error; reversed: TrueType contours run the other way from CFF's.
        glyphs[name].draw(Cu2QuPen(pen, 1.0, reverse_direction=True))
        glyf[name] = pen.glyph()
    tt["glyf"] = glyf
    tt["loca"] = newTable("loca")
    maxp = tt["maxp"]
    maxp.tableVersion = 0x00010000
    for field in ("maxZones", "maxTwilightPoints", "maxStorage", "maxFunctionDefs",
                  "maxInstructionDefs", "maxStackElements", "maxSizeOfInstructions",
                  "maxComponentElements"):
        setattr(maxp, field, 0)
    maxp.maxZones = 1
    for table in ("CFF ", "CFF2", "VORG"):
        if table in tt:
            del tt[table]
    post = tt["post"]
    post.formatType, post.extraNames, post.mapping = 2.0, [], {}
    tt["head"].glyphDataFormat = 0
    tt.sfntVersion = "\x00\x01\x00\x00"


if __name__ == "__main__":
    # A subset made for ``_subsets_in_processes``: its order (font, weight, characters) in the
    # JSON file named, the font's bytes on stdout.
    import sys

    _font, _weight, _chars = json.loads(Path(sys.argv[1]).read_text("utf-8"))
    sys.stdout.buffer.write(_make_subset_quietly(_font, _weight, _chars))
