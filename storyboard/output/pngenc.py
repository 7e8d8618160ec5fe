"""Deflate an image's rows on every core: PNG files and the PDF's pictures, written faster.

In: a Pillow image (RGB, L or RGBA), and for a PNG its text chunks and dpi. Out:
``deflate_rows`` (the rows, each led by PNG's "Up" filter byte, as one zlib stream: what a PNG's
IDAT holds and what a PDF image with ``/Predictor 15`` decodes) and ``encode_png`` (a whole PNG
file around it).

Why not Pillow's encoder: it deflates a picture as one stream on one core. A page of eight
1024-px panels is 30 MB of pixels; after the last panel a build waited about a second for it
and as long again for fpdf2 to deflate the same panels for the PDF, with the other cores idle.
Here the rows are cut into bands of ``BAND_ROWS``, each filtered and deflated on a thread of its
own (numpy and zlib let go of the interpreter), ended with a sync flush so that the pieces join
into one valid stream (pigz's method); the checksum is combined from the bands'. The bands do
not depend on the number of threads, so the bytes are the same on every machine. "Up" costs
numpy one subtraction and deflates 5-10% larger than Pillow's per-row choice; no filter at all
(what fpdf2 embeds) was 60% larger on rendered panels.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

from .pnginfo import PNG_SIGNATURE

BAND_ROWS = 128  # rows per piece: 0.4 MB of a 1024-px RGB panel
# zlib level of page PNGs and the PDF's pictures: a page of 40 1024-px panels encodes in a
# fifth of the time of level 6 (Pillow's and fpdf2's default), for files about a fifth larger
# (bench/pages_tail.py); a writer waits for this after the last panel, the disk does not mind.
LEVEL = 1
_COLOR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}  # mode -> (PNG colour type, bytes)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _threads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                       thread_name_prefix="storyboard-deflate")
        return _pool


def channels(mode: str) -> int | None:
    """Bytes per pixel of a mode this module writes, or None."""
    return _COLOR_TYPES[mode][1] if mode in _COLOR_TYPES else None


def deflate_rows(image, level: int = LEVEL) -> bytes:
    """``image``'s rows, each led by filter byte 2 ("Up": minus the row above), as one zlib
    stream. Bands are deflated side by side; the result does not depend on how many."""
    import numpy as np

    if channels(image.mode) is None:
        raise ValueError(f"cannot deflate a {image.mode} image")
    rows = np.asarray(image).reshape(image.height, -1)
    bands = range(0, image.height, BAND_ROWS)  # (a PNG has at least one row)
    last = bands[-1]

    def band(top: int) -> tuple[bytes, int, int]:
        part = rows[top:top + BAND_ROWS]
        above = rows[top - 1:top + len(part) - 1] if top else np.concatenate(
            [np.zeros_like(part[:1]), part[:-1]])
        filtered = np.empty((len(part), rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = 2
        np.subtract(part, above, out=filtered[:, 1:])  # wraps modulo 256, as PNG wants
        data = filtered.tobytes()
        deflate = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw: the pieces are joined
        body = deflate.compress(data) + deflate.flush(
            zlib.Z_FINISH if top == last else zlib.Z_SYNC_FLUSH)
        return body, zlib.adler32(data), len(data)

    pieces = list(_threads().map(band, bands)) if len(bands) > 1 else [band(0)]
    checksum = 1
    for _, adler, length in pieces:
        checksum = adler32_combine(checksum, adler, length)
    # 0x78: deflate with a 32 KB window; the second byte makes the header a multiple of 31
    # and states the level class (zlib's own choice for ``level``).
    header = bytes([0x78, {0: 0x01, 1: 0x01, 2: 0x5E, 3: 0x5E, 4: 0x5E, 5: 0x5E,
                           6: 0x9C}.get(level, 0xDA)])
    return header + b"".join(body for body, _, _ in pieces) + struct.pack(">I", checksum)


def adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two pieces joined, from each piece's (zlib's adler32_combine)."""
    base = 65521
    rem = second_length % base
    s1 = first & 0xFFFF
    s2 = (rem * s1) % base
    s1 = (s1 + (second & 0xFFFF) + base - 1) % base
    s2 = (s2 + (first >> 16) + (second >> 16) + base - rem) % base
    return (s2 << 16) | s1


def encode_png(image, text: dict[str, str] | None = None, dpi: int | None = None,
               level: int = LEVEL) -> bytes:
    """A PNG file of ``image`` (RGB, L or RGBA) with ``text`` chunks (tEXt, or iTXt for
    text Latin-1 cannot hold) and, with ``dpi``, its pixels per inch (pHYs)."""
    if channels(image.mode) is None:
        raise ValueError(f"cannot write a {image.mode} image")
    color_type = _COLOR_TYPES[image.mode][0]
    out = [PNG_SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", image.width, image.height,
                                                      8, color_type, 0, 0, 0))]
    if dpi:
        per_metre = int(dpi / 0.0254 + 0.5)  # as Pillow rounds it
        out.append(_chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)))
    for key, value in (text or {}).items():
        try:
            out.append(_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
        except UnicodeEncodeError:
            out.append(_chunk(b"iTXt", key.encode("latin-1") + b"\0\0\0\0\0"
                              + value.encode("utf-8")))
    out.append(_chunk(b"IDAT", deflate_rows(image, level)))
    out.append(_chunk(b"IEND", b""))
    return b"".join(out)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
