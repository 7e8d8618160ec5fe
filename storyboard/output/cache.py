"""The panel cache: rendered PNGs stored by the hash of what made them.

In: a job's cache key (its content hash, plus any command-line option that changes pixels) and
the PNG bytes a render produced. Out: the PNG again, for any later build of any story whose job
has the same key, without loading a model.

An entry is checked before a build trusts it (``verified``): a regular file of a sane size, a
PNG whose chunks check out, and a storyboard record naming this key. A damaged one (truncated by
a full disk, emptied, overwritten by something else) is reported, removed and rendered again;
``get`` only asks whether an entry is there, for `storyboard plan`, which must stay cheap.

Layout under the cache root ($STORYBOARD_CACHE, else ~/.cache/storyboard):
  panels/<key[:2]>/<key>.png   one entry per distinct job; written atomically
  roots/<story-id>.json        the keys each story currently needs, so `storyboard clean` knows
                               what is garbage (an entry no root names); ``write_roots`` and
                               ``read_roots`` also keep the trained LoRAs' roots
                               (``training.store``)
  roots/class-pictures/<story-id>.json
                               the class pictures each story's last training rendered for
                               prior preservation (``set_class_roots``): ordinary entries,
                               kept apart so that a build, which records its own panels only,
                               does not let `clean` take them
  fonts/<key>.ttf              the PDF's font subsets (``pdf.truetype_subset``); `clean` keeps
                               those the stories named in roots/ (and those given) embed
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..paths import atomic_write_bytes, atomic_write_text, cache_root, read_bounded
from ..story.records import RecordError, RootsRecord, parse_json, validated

ROOTS_VERSION = 1
MAX_ROOT_BYTES = 70 * 64 * 1000  # a root of 64 keys per panel of the largest story
# Far above any panel (a 4096x4096 RGB PNG is at most about 50 MB): past it, not ours.
MAX_ENTRY_BYTES = 256 << 20
CLASS_ROOTS = "class-pictures"  # under roots/: the entries trainings need (module docstring)


def cache_key(job_hash: str, dtype_override: str | None = None) -> str:
    """The key of a job's image: its hash, plus a dtype forced on the command line (the only
    runtime option that changes what a panel should look like)."""
    if not dtype_override:
        return job_hash
    return hashlib.sha256(f"{job_hash}:dtype={dtype_override}".encode()).hexdigest()


@dataclass(frozen=True)
class PanelCache:
    root: Path

    @classmethod
    def default(cls) -> PanelCache:
        return cls(cache_root())

    def path(self, key: str) -> Path:
        return self.root / "panels" / key[:2] / f"{key}.png"

    def get(self, key: str) -> Path | None:
        """The entry's path if there is one (not checked: see ``verified``)."""
        path = self.path(key)
        return path if path.is_file() else None

    def verified(self, key: str, on_damage: Callable[[str], None] | None = None) -> Path | None:
        """The entry's path if it is there and sound. A damaged entry is reported to
        ``on_damage`` (with what is wrong), removed, and treated as missing."""
        path = self.path(key)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        problem = entry_problem(path, st, key)
        if problem is None:
            return path
        if on_damage is not None:
            on_damage(problem)
        path.unlink(missing_ok=True)  # storyboard's own file, and only in the way now
        return None

    def put(self, key: str, data: bytes) -> Path:
        path = self.path(key)
        atomic_write_bytes(path, data)
        return path

    def keys(self) -> set[str]:
        folder = self.root / "panels"
        if not folder.is_dir():
            return set()
        return {p.stem for p in folder.glob("*/*.png")}

    # -- roots: which stories need which entries -------------------------------------------

    def set_roots(self, story: Path, keys: set[str]) -> None:
        write_roots(self.root / "roots", story, keys)

    def set_class_roots(self, story: Path, keys: set[str]) -> None:
        """Record that ``story``'s training now needs the class pictures ``keys``."""
        write_roots(self.root / "roots" / CLASS_ROOTS, story, keys)

    def live_keys(self) -> tuple[set[str], list[Path]]:
        """Keys some existing story still needs (for its panels or its trainings' class
        pictures), and root files of stories that are gone."""
        live, stale = read_roots(self.root / "roots")
        classes, gone = read_roots(self.root / "roots" / CLASS_ROOTS)
        return live | classes, stale + gone

    def rooted_stories(self) -> list[Path]:
        """The stories that the roots name and that still exist (for the font subsets `clean`
        keeps: what those stories' PDFs embed)."""
        stories: set[Path] = set()
        for folder in (self.root / "roots", self.root / "roots" / CLASS_ROOTS):
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    record = validated(RootsRecord, parse_json(
                        read_bounded(path, MAX_ROOT_BYTES), str(path), MAX_ROOT_BYTES),
                        str(path))
                except (OSError, RecordError):
                    continue
                if Path(record.story).is_file():
                    stories.add(Path(record.story))
        return sorted(stories)

    def remove(self, key: str) -> int:
        path = self.path(key)
        try:
            size = path.stat().st_size
            os.unlink(path)
            return size
        except FileNotFoundError:
            return 0


def write_roots(folder: Path, story: Path, keys: set[str]) -> None:
    """Record in ``folder`` that ``story`` now needs ``keys`` (and no others)."""
    story_id = hashlib.sha256(str(story.resolve()).encode()).hexdigest()[:16]
    atomic_write_text(folder / f"{story_id}.json", json.dumps(
        {"version": ROOTS_VERSION, "story": str(story.resolve()), "keys": sorted(keys)},
        indent=1))


def read_roots(folder: Path) -> tuple[set[str], list[Path]]:
    """The keys the roots in ``folder`` name for stories that still exist, and the root files
    of stories that are gone (or damaged: the story's next run records it again)."""
    live: set[str] = set()
    stale: list[Path] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = validated(RootsRecord, parse_json(
                read_bounded(path, MAX_ROOT_BYTES), str(path), MAX_ROOT_BYTES), str(path))
        except (OSError, RecordError):
            stale.append(path)
            continue
        if not Path(record.story).is_file():
            stale.append(path)
            continue
        live.update(record.keys)
    return live, stale


def entry_problem(path: Path, st: os.stat_result, key: str) -> str | None:
    """What is wrong with a cache entry, or None when it is a sound panel PNG for ``key``."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size == 0:
        return "empty"
    if st.st_size > MAX_ENTRY_BYTES:
        return f"{st.st_size:,} bytes, far more than a panel"
    from PIL import Image

    from .pnginfo import read_panel_png

    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return f"a {im.format} file, not a PNG"
            size = im.size
            im.verify()  # every chunk, to the end: a truncated file fails here
        _, record = read_panel_png(path)
    except RecordError as exc:
        return exc.message.removeprefix(f"{path}: ")
    except Exception as exc:  # noqa: BLE001 - whatever Pillow makes of damaged bytes
        return f"unreadable: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}"
    if record is None:
        return "no storyboard record in it"
    if size != (record.job.width, record.job.height):
        return f"{size[0]}x{size[1]} pixels where its record says " \
               f"{record.job.width}x{record.job.height}"
    names = {record.cache_key, record.hash, cache_key(record.hash, record.dtype)}
    return None if key in names else "it holds another panel"

