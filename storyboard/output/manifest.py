"""``manifest.json``: what a build did, written last, and read back to skip composing pages.

In: the story, each panel's outcome, the files written, and how the render ran. Out:
``OUT/manifest.json`` (``MANIFEST_SCHEMA_VERSION``; golden file tests/golden/manifest/), and
``pages_key`` / ``previous_pages``: a hash of everything a page shows, so a build whose pages
would come out the same leaves them alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..options import RuntimeOptions
from ..paths import atomic_write_text, read_bounded, sha256_of
from ..story.records import ManifestRecord, RecordError, parse_json, validated

MANIFEST = "manifest.json"
PDF = "story.pdf"
MANIFEST_SCHEMA_VERSION = 2  # 2: "digests", the sha256 of every file the build wrote
MAX_MANIFEST_BYTES = 64 << 20
# How pages are drawn, in pages_key: a storyboard that draws them differently (not only a new
# layout key) recomposes pages an older one wrote. 2: captions attached to their panels, no
# upscaling, titles that fit.
PAGES_FORMAT = 2


def pages_key(story, outcomes: Sequence[Any]) -> str:
    """Everything a page shows: layout, title, and each panel's image, caption and balloons."""
    font = story.spec.layout.font
    font_stamp = None
    if font:
        st = story.resolve(font).stat()
        font_stamp = [st.st_size, st.st_mtime_ns]
    layout = story.spec.layout
    blob = json.dumps({"v": __version__, "format": PAGES_FORMAT, "layout": layout.model_dump(),
                       # A dpi given, even the default's, keeps small pages at it (print_dpi).
                       "dpi_given": "dpi" in layout.model_fields_set,
                       "font": font_stamp, "title": story.spec.title,
                       "panels": [[o.job.panel, o.job.hash if o.path else None, o.job.caption,
                                   [b.model_dump() for b in story.spec.panels[o.job.index]
                                    .balloons]]
                                  for o in outcomes]}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(folder: Path) -> ManifestRecord | None:
    """The folder's manifest, validated like any record read back; None when there is none or
    it is not storyboard's."""
    path = folder / MANIFEST
    try:
        data = read_bounded(path, MAX_MANIFEST_BYTES)
        return validated(ManifestRecord, parse_json(data, str(path), MAX_MANIFEST_BYTES),
                         str(path))
    except (OSError, RecordError):
        return None


def previous_pages(out: Path, key: str) -> list[Path] | None:
    """The pages the last build composed, if they show exactly this and are all still there
    with the bytes it wrote (another process, or a person, may have changed them since)."""
    manifest = read_manifest(out)
    if manifest is None or manifest.pages_key != key or not manifest.pages:
        return None
    files = [out / name for name in manifest.pages]
    if all(manifest.digests.get(name) == sha256_of(out / name) for name in manifest.pages):
        return files
    return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def manifest_record(*, story, story_path: Path, out_dir: Path, outcomes: Sequence[Any],
                    files: Sequence[Path], seconds: float, model_loaded: bool,
                    speedups: Sequence[str], options: RuntimeOptions,
                    pages_key: str | None, digests: dict[str, str]) -> dict[str, Any]:
    """The manifest's content. ``outcomes``: one per panel (job, status, seconds, error,
    path) in story order."""
    def count(status: str) -> int:
        return sum(o.status == status for o in outcomes)

    model = outcomes[0].job.model if outcomes else None
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "story": str(story_path.resolve()),
        "title": story.spec.title,
        "versions": {"storyboard": __version__, "torch": _version("torch"),
                     "diffusers": _version("diffusers")},
        "model": None if model is None else {
            "kind": model.kind, "ref": model.ref, "revision": model.revision,
            "variant": model.variant, "family": model.family, "dtype": model.dtype},
        "runtime": {"device": options.device, "dtype": options.dtype,
                    "speedups": [str(s) for s in speedups]},
        "summary": {s: count(s) for s in ("rendered", "cached", "failed", "missing")}
        | {"seconds": round(seconds, 3), "model_loaded": model_loaded},
        "panels": [{
            "panel": o.job.panel,
            "status": o.status,
            "hash": o.job.hash,
            "seed": o.job.seed,
            "prompt": o.job.prompt,
            "negative_prompt": o.job.negative_prompt,
            "width": o.job.width, "height": o.job.height, "steps": o.job.steps,
            "guidance": o.job.guidance, "scheduler": o.job.scheduler,
            "loras": [{"character": l.character, "path": l.path, "sha256": l.sha256,
                       "weight": l.weight} for l in o.job.loras],
            "caption": o.job.caption,
            "seconds": round(o.seconds, 3),
            "error": o.error,
            "file": str(o.path.relative_to(out_dir)) if o.path else None,
        } for o in outcomes],
        "files": [str(p.relative_to(out_dir)) for p in files],
        "pages": [str(p.relative_to(out_dir)) for p in files if p.name != MANIFEST],
        "pages_key": pages_key,
        "digests": dict(sorted(digests.items())),
    }


def write_manifest(out_dir: Path, record: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return path
