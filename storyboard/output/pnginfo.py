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
import stat
from pathlib import Path
from typing import Any

from .. import __version__
from ..plan.jobs import LoraRef, ModelRef, PanelJob, with_hash

PARAMETERS = "parameters"
STORYBOARD = "storyboard"
METADATA_VERSION = 1


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

    parameters, record = read_panel_png(source)
    record = dict(record or {})
    with Image.open(source) as im:
        im.load()
        image = im.copy()
    fresh = storyboard_record(job, story=story, sampler=record.get("sampler_used", ""),
                              device=record.get("device", ""), dtype=record.get("dtype", ""),
                              cache_key=record.get("cache_key"))
    return _png(image, a1111_parameters(job, fresh["sampler_used"]) if fresh["sampler_used"]
                else parameters or "", fresh)


def read_panel_png(path: Path) -> tuple[str | None, dict | None]:
    """(A1111 parameters, storyboard record) of a PNG; either may be None."""
    from PIL import Image

    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block forever
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with Image.open(path) as im:  # text chunks precede the pixels: nothing is decoded
        text = dict(im.info)
    record = text.get(STORYBOARD)
    try:
        record = json.loads(record) if record else None
    except ValueError:
        record = None
    return text.get(PARAMETERS), record


def job_from_record(record: dict) -> PanelJob:
    """Rebuild the ``PanelJob`` a storyboard PNG records; its hash is checked, not trusted."""
    data = dict(record["job"])
    model = ModelRef(**data.pop("model"))
    loras = tuple(LoraRef(**lora) for lora in data.pop("loras"))
    data.pop("hash", None)
    job = with_hash(PanelJob(index=0, model=model, loras=loras,
                              characters=tuple(data.pop("characters")), **data))
    return job
