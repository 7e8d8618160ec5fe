"""The page font: Pillow draws its glyphs, the font's own metrics at the weight drawn say how
far apart.

In: the layout's font file (None: the built-in Noto Sans CJK, face ``glyphs.CJK_FACE``), a size
in pixels and a weight (Regular, Bold). Out: ``PageFont``, a Pillow font whose ``getlength`` is
the sum of the characters' advances at that weight, and ``draw_text``, which puts each glyph at
those advances.

Why not Pillow's own layout: Noto Sans CJK is a variable font, and Pillow applies the weight to
the outlines but not to the advances (its HVAR table): every weight was spaced like Thin, so
Regular text was cramped by about 5% and Bold by 10%, and the PDF (whose embedded instance has
the real advances) came out wider than the PNG. The advances here are read with fontTools at
the weight (``getGlyphSet(location=...)`` applies HVAR), as the PDF's font is instanced, so a
line has the same width in the PNG and the PDF. Like the PDF (fpdf2 places glyphs one by one),
no kerning is applied. A character the font lacks and the emoji font has
(``glyphs.emoji_font``) is measured and drawn in that one.

Measuring is kept (``FontMetrics``): reading a CJK font's cmap and its variations with fontTools
is seconds of pure Python, and a build composes pages on a thread while its first batch renders,
where that would hold the interpreter lock from the render loop (an 8-panel SDXL batch took 2.5 s
longer). So what a process measured is kept in the cache (``fonts/<key>.metrics.json``) and a
build measures what its story's characters still lack before composing, in a process of its own
(``warm_metrics``); pages come out the same either way.
"""

from __future__ import annotations

import json
import math
import os
import threading
from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

from ..paths import atomic_write_text, cache_root, read_bounded
from .glyphs import CJK_FACE, builtin_font, emoji_font

WEIGHTS = {"Regular": 400, "Bold": 700}


class PageFont(ImageFont.FreeTypeFont):
    """A Pillow font measured by the font's own advances at its weight."""

    advances: dict[str, float]  # character -> advance in pixels, filled as characters come
    _metrics: FontMetrics  # the font's, at the weight
    _per_unit: float

    _fallback: PageFont | None  # the fallback font (emoji) at the same size, if any

    def getlength(self, text, *args, **kwargs) -> float:  # noqa: D401 - Pillow's signature
        return sum(self.advance(ch) for ch in text)

    def advance(self, ch: str) -> float:
        width = self.advances.get(ch)
        if width is None:
            units = self._metrics.width(ord(ch))
            if units is not None:
                width = units * self._per_unit
            elif self.falls_back(ch):
                width = self._fallback.advance(ch)
            else:  # a character no font has is drawn as Pillow draws it (its .notdef box)
                width = super().getlength(ch)
            self.advances[ch] = width
        return width

    def falls_back(self, ch: str) -> bool:
        """Whether ``ch`` is drawn in the fallback font: this one lacks it, that one has it."""
        return self._fallback is not None and self._metrics.width(ord(ch)) is None \
            and self._fallback._metrics.width(ord(ch)) is not None

    def face_for(self, ch: str) -> PageFont:
        return self._fallback if self.falls_back(ch) else self  # type: ignore[return-value]


# Part of every kept measurement's key: bump it when what FontMetrics records changes.
METRICS_RECIPE = 1
MAX_METRICS_BYTES = 16 << 20  # a kept file bigger than this is not one we wrote
ALWAYS = "".join(chr(c) for c in range(0x20, 0x7F))  # measured for every story: page marks...


class FontMetrics:
    """One face of a font file at one weight: its units per em and each character's advance in
    font units (None: the font has no glyph for it). What an earlier process measured is read
    from the cache (``fonts/<key>.metrics.json``; the key: the file's path, size and time, the
    face, the weight, fontTools' version, ``METRICS_RECIPE``); the rest is measured with
    fontTools as it is asked for, and kept by ``save``."""

    def __init__(self, path: str, face: int, weight: str, file: Path | None = None) -> None:
        self.path, self.face, self.weight = path, face, weight
        # The font file as this object's key names it: what is measured here is read from that
        # file, not from one a long-lived process read before the font changed.
        self.stamp = file_stamp(path)
        self.file = file or _metrics_file(path, face, weight)
        kept = _read_metrics(self.file) if self.file is not None else None
        self.units, self.widths = kept if kept is not None else (None, {})
        self.dirty = False

    def width(self, code: int) -> float | None:
        if code not in self.widths:
            cmap, glyphs, _ = _measurer(self.path, self.face, self.weight, self.stamp)
            name = cmap.get(code)
            self.widths[code] = None if name is None else glyphs[name].width
            self.dirty = True
        return self.widths[code]

    def units_per_em(self) -> int:
        if self.units is None:
            self.units = _measurer(self.path, self.face, self.weight, self.stamp)[2]
            self.dirty = True
        return self.units

    def lacks(self, chars: str) -> bool:
        return self.units is None or any(ord(ch) not in self.widths for ch in chars)

    def measure(self, chars: str) -> None:
        self.units_per_em()
        for ch in chars:
            self.width(ord(ch))

    def save(self) -> None:
        """Keep what was measured (a cache that cannot be written costs time, nothing more)."""
        if not self.dirty or self.file is None:
            return
        widths = dict(self.widths)  # a copy: another thread may be measuring
        record = {"units": self.units_per_em(),
                  "widths": {str(code): widths[code] for code in sorted(widths)}}
        try:
            atomic_write_text(self.file, json.dumps(record, separators=(",", ":")))
        except OSError:
            return
        self.dirty = False

    def reload(self) -> None:
        """Take in what another process measured and kept."""
        kept = _read_metrics(self.file) if self.file is not None else None
        if kept is not None:
            self.units = kept[0]
            self.widths = {**kept[1], **self.widths}


def file_stamp(path: str) -> tuple[int, int] | None:
    """The font file's size and modification time (None: it cannot be read)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _metrics_file(path: str, face: int, weight: str) -> Path | None:
    import hashlib

    import fontTools

    stamp = file_stamp(path)
    if stamp is None:
        return None
    blob = json.dumps([os.path.realpath(path), *stamp, face, weight, fontTools.version,
                       METRICS_RECIPE], ensure_ascii=False)
    # surrogatepass: a path that is not valid UTF-8 (a Latin-1 folder name) keeps its own key.
    digest = hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()
    return cache_root() / "fonts" / f"{digest}.metrics.json"


def _read_metrics(file: Path) -> tuple[int, dict[int, float | None]] | None:
    """A kept measurement, checked like any record read back; None when there is none or it
    is not one FontMetrics wrote (then everything is measured again)."""
    try:
        data = read_bounded(file, MAX_METRICS_BYTES)
        if len(data) > MAX_METRICS_BYTES:
            return None
        record = json.loads(data)
    except (OSError, ValueError, RecursionError):  # RecursionError: nesting a JSON too deep
        return None
    if not isinstance(record, dict) or not isinstance(record.get("widths"), dict):
        return None
    units = record.get("units")
    if type(units) is not int or not 16 <= units <= 16384:
        return None
    widths: dict[int, float | None] = {}
    for key, value in record["widths"].items():
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
        if not (key.isascii() and key.isdigit() and len(key) <= 7) or int(key) > 0x10FFFF:
            return None
        # The range first: math.isfinite() of an int of hundreds of digits overflows.
        if value is not None and (type(value) not in (int, float) or not 0 <= value <= 64 * units
                                  or not math.isfinite(value)):
            return None
        widths[int(key)] = value
    return units, widths


_KNOWN: dict[tuple, FontMetrics] = {}  # this process's, by font file, face, weight, cache file
_KNOWN_LOCK = threading.Lock()


def _metrics(path: str, face: int, weight: str) -> FontMetrics:
    """The one ``FontMetrics`` of this process for a face at a weight (and a cache: a process
    that moves to another keeps its measurements there too)."""
    file = _metrics_file(path, face, weight)
    with _KNOWN_LOCK:
        key = (path, face, weight, file)
        if key not in _KNOWN:
            _KNOWN[key] = FontMetrics(path, face, weight, file)
        return _KNOWN[key]


@lru_cache(maxsize=4)  # the page font, the emoji font, a story's own
def _font(path: str, face: int, stamp: tuple | None):
    """The font file's face, and its cmap: one for all weights (reading the cmap and naming a
    CJK font's 65,535 glyphs is most of a second of pure Python). ``stamp``: the file's size and
    time, so a font changed on disk is read again."""
    from fontTools.ttLib import TTFont

    kwargs = {"fontNumber": face} if path.lower().endswith((".ttc", ".otc")) else {}
    tt = TTFont(path, lazy=True, **kwargs)
    return tt, tt.getBestCmap() or {}


@lru_cache(maxsize=8)
def _measurer(path: str, face: int, weight: str, stamp: tuple | None):
    """The font's cmap and its glyph set at ``weight`` (read lazily: only the glyphs asked
    about are decoded), and its units per em."""
    tt, cmap = _font(path, face, stamp)
    axes = {a.axisTag for a in tt["fvar"].axes} if "fvar" in tt else set()
    location = {"wght": WEIGHTS[weight]} if "wght" in axes else None
    return cmap, tt.getGlyphSet(location=location), tt["head"].unitsPerEm


def _faces(font: str | None) -> list[tuple[str, int, str]]:
    """The (file, face, weight)s a story with page font ``font`` (None: the built-in one)
    measures: the page font at each weight, the emoji font it falls back to."""
    faces = [(builtin_font(), CJK_FACE, weight) for weight in WEIGHTS] if font is None \
        else [(font, 0, "Regular")]
    emoji = emoji_font()
    if emoji:
        faces.append((emoji, 0, "Regular"))
    return faces


def metrics_names(font: str | None) -> set[str]:
    """The names of the kept measurements a story with page font ``font`` reads (``clean``
    keeps those)."""
    names = set()
    for face in _faces(font):
        file = _metrics_file(*face)
        if file is not None:
            names.add(file.name)
    return names


def warm_metrics(font: str | None, chars: str) -> None:
    """Measure, for every face a story's pages use, the characters in ``chars`` (and
    ``ALWAYS``) not measured before: each face in a process of its own, at the same time, so
    this process's interpreter stays free for the render; here where no process can be
    started. Then this process's measurements include them."""
    from .children import run_in_children

    chars = "".join(sorted(set(chars) | set(ALWAYS)))
    try:
        lacking = [m for m in (_metrics(*face) for face in _faces(font)) if m.lacks(chars)]
    except OSError:
        return  # a font that cannot be read: pages.load_font says so
    if not lacking:
        return
    run_in_children(__name__, [[m.path, m.face, m.weight, chars] for m in lacking])
    for m in lacking:
        m.reload()
    for m in lacking:
        if m.lacks(chars):
            try:
                m.measure(chars)
            except Exception:  # noqa: BLE001 - not a font: pages.load_font tells the writer
                continue
            m.save()


def save_metrics() -> None:
    """Keep what this process measured for the next one."""
    with _KNOWN_LOCK:
        known = list(_KNOWN.values())
    for metrics in known:
        metrics.save()


def page_font(path: str | None, size: int, weight: str = "Regular",
              fallback: bool = True) -> PageFont:
    """The page font (``path``; None: the built-in one at ``weight``), falling back to the
    emoji font (``glyphs.emoji_font``, at its default weight, as the PDF embeds it) for the
    characters it lacks."""
    file, face = (path, 0) if path else (builtin_font(), CJK_FACE)
    font = PageFont(file, size, index=face)
    if path is None:
        font.set_variation_by_name(weight)
    metrics = _metrics(file, face, weight if path is None else "Regular")
    font.advances, font._metrics = {}, metrics
    font._per_unit = size / metrics.units_per_em()
    emoji = emoji_font() if fallback else None
    font._fallback = page_font(emoji, size, fallback=False) if emoji else None
    return font


SUPERSAMPLE = 4  # text is drawn this many times larger, then reduced: glyphs land between pixels


def draw_text(image, x: float, baseline: float, text: str, font: PageFont, big: PageFont,
              fill) -> None:
    """``text`` onto ``image`` with its left end at ``x`` on ``baseline``, each glyph at
    ``font``'s advances. Glyph by glyph at whole pixels, a small caption's letters would
    jitter by up to half a pixel each; so the line is drawn with ``big`` (the same font
    ``SUPERSAMPLE`` times larger) into a mask that is then reduced, which keeps every glyph at
    its fractional place."""
    from PIL import Image, ImageDraw

    if not text.strip():
        return
    ascent, descent = font.getmetrics()
    left, top = int(x) - 1, int(baseline) - ascent - 1
    width = int(font.getlength(text) + (x - left)) + font.size // 2 + 2
    height = ascent + descent + 2
    n = SUPERSAMPLE
    mask = Image.new("L", (width * n, height * n), 0)
    draw = ImageDraw.Draw(mask)
    pen = (x - left) * n
    for ch in text:
        if not ch.isspace():
            draw.text((pen, (baseline - top) * n), ch, font=big.face_for(ch), fill=255,
                      anchor="ls")
        pen += font.advance(ch) * n
    mask = mask.resize((width, height), Image.Resampling.BOX)
    image.paste(Image.new("RGB", (width, height), fill), (left, top), mask)


def draw_turned(image, x: float, y: float, text: str, font: PageFont, big: PageFont,
                fill) -> None:
    """``text`` turned a quarter turn clockwise about (``x``, ``y``), its baseline running
    down from there (a character on its side in vertical text): drawn level into a mask of
    its own with ``draw_text``, the mask turned, then pasted."""
    from PIL import Image

    size = font.size
    w, h = int(font.getlength(text)) + 2 * size, 3 * size
    level = Image.new("RGB", (w, h), (0, 0, 0))
    ox, oy = size, 2 * size  # where (x, y) is in the level mask
    draw_text(level, ox, oy, text, font, big, (255, 255, 255))
    # Clockwise: the level mask's (a, b) goes to (h - 1 - b, a).
    turned = level.convert("L").transpose(Image.Transpose.ROTATE_270)
    image.paste(Image.new("RGB", turned.size, fill), (round(x - (h - 1 - oy)), round(y - ox)),
                turned)


if __name__ == "__main__":
    # Measured for ``warm_metrics``: its order (file, face, weight, characters) in the JSON file
    # named; the result kept in the cache.
    import sys

    _path, _face, _weight, _chars = json.loads(Path(sys.argv[1]).read_text("utf-8"))
    _kept = FontMetrics(_path, _face, _weight)
    _kept.measure(_chars)
    _kept.save()
