"""PNG rows deflated on every core: what Pillow reads back is the image, whatever the bands."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from storyboard.output import pngenc
from storyboard.output.ownership import PAGE_MARK
from storyboard.output.pnginfo import png_text


def noise(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    depth = pngenc.channels(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, depth), np.uint8)
    return Image.fromarray(pixels[..., 0] if depth == 1 else pixels, mode)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("height", [1, 2, pngenc.BAND_ROWS - 1, pngenc.BAND_ROWS,
                                    pngenc.BAND_ROWS + 1, 3 * pngenc.BAND_ROWS + 7])
def test_pillow_reads_back_every_pixel(mode, height):
    image = noise(mode, 37, height)
    back = Image.open(io.BytesIO(pngenc.encode_png(image)))
    back.load()
    assert back.mode == mode and back.size == image.size
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_text_and_dpi_are_read_as_pillows_own(tmp_path):
    mark = '{"page": 1, "story": "灯塔"}'  # not Latin-1: an iTXt chunk
    data = pngenc.encode_png(noise("RGB", 20, 10), {PAGE_MARK: mark, "plain": "café"}, 300)
    back = Image.open(io.BytesIO(data))
    assert back.text == {PAGE_MARK: mark, "plain": "café"}
    assert [round(d) for d in back.info["dpi"]] == [300, 300]
    path = tmp_path / "page.png"
    path.write_bytes(data)
    assert png_text(path, keys=(PAGE_MARK,)) == {PAGE_MARK: mark}  # storyboard's own reader


def test_the_bytes_do_not_depend_on_the_number_of_threads(monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    image = noise("RGB", 64, 5 * pngenc.BAND_ROWS + 3)
    many = pngenc.encode_png(image)
    with ThreadPoolExecutor(max_workers=1) as one:
        monkeypatch.setattr(pngenc, "_threads", lambda: one)
        assert pngenc.encode_png(image) == many


def test_the_stream_is_one_valid_zlib_stream_of_up_filtered_rows():
    image = noise("L", 9, 2 * pngenc.BAND_ROWS + 1)
    rows = zlib.decompress(pngenc.deflate_rows(image))  # checks the joined checksum too
    table = np.frombuffer(rows, np.uint8).reshape(image.height, image.width + 1)
    assert (table[:, 0] == 2).all()
    pixels = np.asarray(image)
    assert np.array_equal(np.cumsum(table[:, 1:], axis=0, dtype=np.uint8), pixels)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=70000))
def test_adler32_combines_as_zlibs(first, second):
    assert pngenc.adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second)) \
        == zlib.adler32(first + second)


def test_modes_it_cannot_write_are_refused():
    with pytest.raises(ValueError):
        pngenc.encode_png(Image.new("P", (4, 4)))
