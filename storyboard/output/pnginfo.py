"""Panel PNGs that carry their own recipe.

In: a rendered image, its ``PanelJob`` and what rendered it. Out: the bytes of a PNG (which the
cache and the build write atomically) with two text chunks:
- ``parameters``: the exact AUTOMATIC1111 format, so WebUI's PNG Info, ComfyUI and image
  browsers read prompt, negative prompt, steps, sampler, CFG, seed, size, model and LoRA hashes;
- ``storyboard``: the job as JSON (story file, panel id, hash, every resolved setting), which
  `storyboard inspect` prints and `storyboard render --from-png` renders again.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from .. import __version__
from ..paths import open_regular
from ..plan.jobs import LoraRef, ModelRef, PanelJob, with_hash
from ..story.records import PanelRecord, parse_json, validated

PARAMETERS = "parameters"
STORYBOARD = "storyboard"
METADATA_VERSION = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Per text chunk, read or inflated: a record is at most 128 K characters; A1111's parameters
# are a few KB. ComfyUI's workflow chunks are bigger, and skipped unread (other keywords).
MAX_TEXT_BYTES = 1 << 20
MAX_CHUNKS = 10_000  # before the pixels; a real PNG has a handful


def _a1111_value(value: str) -> str:
    """A1111 quotes a value that contains its separators, JSON-style."""
    if any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def model_name(ref: ModelRef) -> str:
    if ref.kind in ("folder", "file"):
        return Path(ref.ref).stem if ref.kind == "file" else Path(ref.ref).name
    return ref.ref


def a1111_parameters(job: PanelJob, sampler: str) -> str:
    """``parameters`` text exactly as AUTOMATIC1111 writes it."""
    fields = [
        ("Steps", str(job.steps)),
        ("Sampler", sampler),
        ("CFG scale", f"{job.guidance:g}"),
        ("Seed", str(job.seed)),
        ("Size", f"{job.width}x{job.height}"),
        ("Model", model_name(job.model)),
    ]
    if job.loras:
        hashes = ", ".join(f"{lora.character}: {lora.sha256[:12]}" for lora in job.loras)
        fields.append(("Lora hashes", hashes))
    fields.append(("Version", f"storyboard {__version__}"))
    tail = ", ".join(f"{k}: {_a1111_value(v)}" for k, v in fields)
    lines = [job.prompt]
    if job.negative_prompt:
        lines.append(f"Negative prompt: {job.negative_prompt}")
    lines.append(tail)
    return "\n".join(lines)


def storyboard_record(job: PanelJob, *, story: str | None, sampler: str, device: str,
                      dtype: str, cache_key: str | None = None) -> dict[str, Any]:
    record = {
        "metadata_version": METADATA_VERSION,
        "storyboard": __version__,
        "story": story,
        "panel": job.panel,
        "hash": job.hash,
        "sampler_used": sampler,
        "device": device,
        "dtype": dtype,
        "job": job.to_dict(),
    }
    if cache_key is not None and cache_key != job.hash:
        # Rendered under a --dtype: its cache entry is not named by the job's hash alone, and
        # `clean` must know the entry a reroll candidate came from.
        record["cache_key"] = cache_key
    return record


def panel_png_bytes(image, job: PanelJob, *, story: str | None, sampler: str, device: str,
                    dtype: str, cache_key: str | None = None) -> bytes:
    """The PNG of a panel, its parameters inside."""
    return _png(image, a1111_parameters(job, sampler),
                storyboard_record(job, story=story, sampler=sampler, device=device, dtype=dtype,
                                  cache_key=cache_key))


def _png(image, parameters: str, record: dict) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(PARAMETERS, parameters)
    info.add_text(STORYBOARD, json.dumps(record, ensure_ascii=False, sort_keys=True))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def relabel(source: Path, job: PanelJob, story: str | None) -> bytes:
    """A cached panel's PNG, re-labelled for another panel id or story with the same job.
    Pixels, sampler, device and dtype stay as rendered."""
    from PIL import Image

    parameters, record = read_panel_png(source)  # a verified cache entry: its record is sound
    with Image.open(source) as im:
        im.load()
        image = im.copy()
    fresh = storyboard_record(job, story=story, sampler=record.sampler_used if record else "",
                              device=record.device if record else "",
                              dtype=record.dtype if record else "",
                              cache_key=record.cache_key if record else None)
    return _png(image, a1111_parameters(job, fresh["sampler_used"]) if fresh["sampler_used"]
                else parameters or "", fresh)


def read_panel_png(path: Path) -> tuple[str | None, PanelRecord | None]:
    """(A1111 parameters, validated storyboard record) of a PNG; either may be None. A record
    that is there but damaged or forged raises ``RecordError``; a file that is not a PNG (or
    not a regular file) raises ``OSError``."""
    text = png_text(path)
    raw = text.get(STORYBOARD)
    if raw is None:
        return text.get(PARAMETERS), None
    what = f"{path}: its storyboard record"
    return text.get(PARAMETERS), validated(PanelRecord, parse_json(raw, what), what)


def png_text(path: Path, keys: tuple[str, ...] = (PARAMETERS, STORYBOARD)) -> dict[str, str]:
    """The text chunks named ``keys`` that come before a PNG's pixels, read chunk by chunk with
    every length bounded: whatever the file says, at most ``MAX_TEXT_BYTES`` per chunk is read
    or inflated, other chunks are skipped unread, and a chunk whose checksum fails is ignored."""
    with open_regular(path) as fh:
        if fh.read(8) != PNG_SIGNATURE:
            raise OSError(errno.EINVAL, "not a PNG file", str(path))
        found: dict[str, str] = {}
        for _ in range(MAX_CHUNKS):
            head = fh.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind in (b"IDAT", b"IEND"):
                break
            if kind not in (b"tEXt", b"iTXt", b"zTXt") or length > MAX_TEXT_BYTES:
                fh.seek(length + 4, os.SEEK_CUR)
                continue
            data, crc = fh.read(length), fh.read(4)
            if len(crc) < 4 or zlib.crc32(kind + data) != struct.unpack(">I", crc)[0]:
                continue
            key, _, body = data.partition(b"\0")
            name = key.decode("latin-1")
            if name in keys and name not in found:
                value = _chunk_text(kind, body)
                if value is not None:
                    found[name] = value
        return found


def _chunk_text(kind: bytes, body: bytes) -> str | None:
    """A text chunk's value (after its keyword), or None when it cannot be read within bounds."""
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":
        return _inflate(body[1:], "latin-1")
    # iTXt: compression flag, method, language tag\0, translated keyword\0, text (UTF-8)
    if len(body) < 2:
        return None
    compressed = body[0] == 1
    rest = body[2:].split(b"\0", 2)
    if len(rest) < 3:
        return None
    return _inflate(rest[2], "utf-8") if compressed else rest[2].decode("utf-8", "replace")


def _inflate(data: bytes, encoding: str) -> str | None:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error:
        return None
    if inflater.unconsumed_tail:  # more than MAX_TEXT_BYTES once inflated: a bomb, not a record
        return None
    return out.decode(encoding, "replace")


def job_from_record(record: PanelRecord) -> PanelJob:
    """Rebuild the ``PanelJob`` a validated record names; its hash is computed, not trusted."""
    data = record.job.model_dump()
    model = ModelRef(**data.pop("model"))
    loras = tuple(LoraRef(**lora) for lora in data.pop("loras"))
    data.pop("hash")
    return with_hash(PanelJob(index=0, model=model, loras=loras,
                              characters=tuple(data.pop("characters")), **data))
