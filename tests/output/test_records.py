"""Records read back are input: a panel PNG's record, a manifest and a cache root are validated
like a story before anything uses them, within bounds, and never end in a traceback.

Each attack is a PNG from someone else: a forged record, a damaged one, or a PNG built to make
the reader do too much work. `render --from-png` and `inspect` must refuse it with one line and
exit 2, before any model is loaded.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from pathlib import Path

import pytest
from conftest import TWO_PANELS, run_cli
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from storyboard.output.pnginfo import (
    MAX_TEXT_BYTES, PARAMETERS, STORYBOARD, job_from_record, png_text, read_panel_png,
    storyboard_record,
)
from storyboard.plan import compile_story
from storyboard.story import load_story
from storyboard.story.records import RecordError, parse_json


@pytest.fixture
def record(tmp_path) -> dict:
    """A genuine record of panel `a` of the two-panel story."""
    path = tmp_path / "story.yaml"
    path.write_text(TWO_PANELS, encoding="utf-8")
    job = compile_story(load_story(path))[0]
    return storyboard_record(job, story=str(path), sampler="Euler", device="cpu", dtype="fp32")


def png_with(tmp_path: Path, text: dict[str, str], name: str = "forged.png",
             size: tuple[int, int] = (64, 64)) -> Path:
    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    path = tmp_path / name
    Image.new("RGB", size, (10, 20, 30)).save(path, pnginfo=info)
    return path


def forged(tmp_path: Path, record: dict, **job_changes) -> Path:
    data = json.loads(json.dumps(record))
    for key, value in job_changes.items():
        if key in ("panel",):
            data[key] = value
        data["job"][key] = value
    return png_with(tmp_path, {STORYBOARD: json.dumps(data)})


def refused(*args: str) -> str:
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_a_genuine_record_reads_back_as_the_same_job(tmp_path, record):
    path = png_with(tmp_path, {STORYBOARD: json.dumps(record)})
    _, back = read_panel_png(path)
    assert job_from_record(back).hash == record["hash"]


@pytest.mark.parametrize("change, words", [
    ({"panel": "../../escaped"}, "panel"),
    ({"panel": "a/b"}, "panel"),
    ({"width": 65536, "height": 65536}, "width"),
    ({"width": 100}, "multiple of 8"),
    ({"steps": 10**9}, "steps"),
    ({"steps": 0}, "steps"),
    ({"guidance": -5.0}, "guidance"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**70}, "seed"),
    ({"prompt": "x" * 800_000}, "characters"),
    ({"scheduler": "os.system"}, "scheduler"),
    ({"characters": ["../x"]}, "characters"),
    ({"loras": [{"character": "a", "path": "/x.safetensors", "sha256": "zz", "weight": 1.0}]},
     "sha256"),
    ({"loras": [{"character": "a", "path": "/x", "sha256": "0" * 64, "weight": 1e9}]},
     "weight"),
    ({"model": {"kind": "pickle", "ref": "x"}}, "kind"),
    ({"extra_field": 1}, "extra"),
])
def test_a_forged_record_is_refused_before_any_render(tmp_path, record, change, words):
    png = forged(tmp_path, record, **change)
    message = refused("render", "--from-png", str(png), "-o", str(tmp_path / "out"))
    assert words in message
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "escaped.png").exists()


@pytest.mark.parametrize("text, words", [
    ('{"metadata_version": 1, "job": {"guidance": NaN}}', "NaN"),
    ('{"metadata_version": 1, "job": {"guidance": Infinity}}', "Infinity"),
    ("[" * 50_000 + "]" * 50_000, "nested"),
    ('{"a":' * 50 + "1" + "}" * 50, "nested"),
    ("{not json", "not valid JSON"),
    ('"just a string"', "record"),
])
def test_a_damaged_record_is_one_line_from_render_and_from_inspect(tmp_path, text, words):
    png = png_with(tmp_path, {STORYBOARD: text})
    assert words in refused("render", "--from-png", str(png))
    assert words in refused("inspect", str(png))


def test_a_huge_record_is_refused_without_parsing_it(tmp_path, record):
    record = dict(record, padding="x" * 600_000)
    with pytest.raises(RecordError, match="more than any storyboard record"):
        read_panel_png(png_with(tmp_path, {STORYBOARD: json.dumps(record)}))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (len(data).to_bytes(4, "big") + kind + data
            + zlib.crc32(kind + data).to_bytes(4, "big"))


def _png_bytes_with_chunks(chunks: list[bytes]) -> bytes:
    """A 1x1 PNG with ``chunks`` inserted before its pixels."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    raw = buf.getvalue()
    at = raw.index(b"IDAT") - 4
    return raw[:at] + b"".join(chunks) + raw[at:]


def test_a_compressed_text_bomb_is_not_inflated(tmp_path):
    # 1 GB of spaces compresses to about 1 MB; ten times the limit is plenty to show the cap.
    z = zlib.compressobj(9)
    body = b"".join(z.compress(b" " * (1 << 20)) for _ in range(10 * MAX_TEXT_BYTES >> 20))
    body += z.flush()
    itxt = STORYBOARD.encode() + b"\0\x01\x00\0\0" + body
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes_with_chunks([_chunk(b"iTXt", itxt)]))
    assert png_text(path) == {}  # ignored, never inflated past the cap
    assert "no generation parameters" in refused("inspect", str(path))


def test_chunk_lengths_are_not_trusted(tmp_path):
    # A chunk claiming 2 GB, then the end of the file: skipped by seeking, not read.
    lying = (0x7FFFFFFF).to_bytes(4, "big") + b"tEXt" + b"parameters\0short"
    path = tmp_path / "lying.png"
    path.write_bytes(_png_bytes_with_chunks([])[:33] + lying)
    assert png_text(path) == {}
    # Thousands of tiny chunks before the pixels: the reader stops counting.
    many = _png_bytes_with_chunks([_chunk(b"tEXt", b"k\0v")] * 20_000)
    path.write_bytes(many)
    assert png_text(path) == {}


def test_a_checksum_failure_hides_the_chunk(tmp_path):
    chunk = bytearray(_chunk(b"tEXt", PARAMETERS.encode() + b"\0a cat"))
    chunk[-1] ^= 0xFF
    path = tmp_path / "crc.png"
    path.write_bytes(_png_bytes_with_chunks([bytes(chunk)]))
    assert png_text(path) == {}


@pytest.mark.parametrize("make", ["fifo", "directory", "not a png", "empty"])
def test_what_is_not_a_png_is_refused_quickly(tmp_path, make):
    path = tmp_path / "thing.png"
    if make == "fifo":
        os.mkfifo(path)
    elif make == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"GIF89a..." if make == "not a png" else b"")
    for command in (["inspect"], ["render", "--from-png"]):
        assert "Traceback" not in refused(*command, str(path))


def test_inspect_prints_another_tools_text_without_terminal_escapes(tmp_path):
    png = png_with(tmp_path, {PARAMETERS: "a cat\x1b[2J\x1b]0;owned\x07 \u202eevil"})
    result = run_cli("inspect", str(png))
    assert result.exit_code == 0
    assert "\x1b" not in result.output and "\u202e" not in result.output
    assert "\\x1b[2J" in result.output and "\\u202e" in result.output


def test_parse_json_limits():
    assert parse_json('{"a": [1, {"b": 2}]}', "x") == {"a": [1, {"b": 2}]}
    with pytest.raises(RecordError, match="more than any"):
        parse_json("1" * 20, "x", max_chars=10)
