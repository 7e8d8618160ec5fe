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
from ..paths import atomic_write_text

MANIFEST = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1


def pages_key(story, outcomes: Sequence[Any]) -> str:
    """Everything a page shows: layout, title, and each panel's image and caption."""
    font = story.spec.layout.font
    font_stamp = None
    if font:
        st = story.resolve(font).stat()
        font_stamp = [st.st_size, st.st_mtime_ns]
    blob = json.dumps({"v": __version__, "layout": story.spec.layout.model_dump(),
                       "font": font_stamp, "title": story.spec.title,
                       "panels": [[o.job.panel, o.job.hash if o.path else None, o.job.caption]
                                  for o in outcomes]}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def previous_pages(out: Path, key: str) -> list[Path] | None:
    """The pages the last build composed, if they show exactly this and are all still there."""
    try:
        manifest = json.loads((out / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("pages_key") != key:
        return None
    names = manifest.get("pages", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    files = [out / name for name in names]
    return files if files and all(f.is_file() for f in files) else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def manifest_record(*, story, story_path: Path, out_dir: Path, outcomes: Sequence[Any],
                    files: Sequence[Path], seconds: float, model_loaded: bool,
                    speedups: Sequence[str], options: RuntimeOptions,
                    pages_key: str | None) -> dict[str, Any]:
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
    }


def write_manifest(out_dir: Path, record: dict[str, Any]) -> Path:
    path = out_dir / MANIFEST
    atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=2) + "\n")
    return path
