"""Which installed distribution provides which top-level module, worked out once per environment.

In: the environment (``sys.path`` and the ``*.dist-info`` / ``*.egg-info`` / ``*.egg`` in it) and
storyboard's cache (``paths.cache_root()/env/distributions.json``). Out: ``remember()``, which
makes ``importlib.metadata.packages_distributions`` answer from memory within the process and
from the cache across processes, as long as no distribution was added, removed or reinstalled.

Why: diffusers calls ``packages_distributions()`` when it is imported and transformers calls it
again when it first checks a package. The function opens the metadata (``RECORD``) of every
installed distribution; on the H200 machine's environment (about 160 distributions, CUDA wheels
with large ``RECORD`` files) each call took 3.6 s of a build's start, 7.2 s in all (cProfile of a
build, bench/profile_build.py), longer than loading SDXL's weights. The answer changes only when
the installed distributions do, so it is cached under a key made of what the standard library
reads (``environment_key``): each ``sys.path`` folder's metadata folders by name and time, the
times of the files in them that name modules (pip writes a new folder for every install,
upgrade and reinstall; ``setup.py develop`` rewrites those files in place), and zip files on the
path by size and time. The key is worked out at every call, so a path that grows is seen. When
a finder other than the path finder also lists distributions, nothing is remembered. The
cached file is read like any record from disk: a regular file, bounded, every entry checked;
anything else is ignored and the answer worked out again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from ..paths import atomic_write_text, cache_root, read_bounded

MAX_CACHE_BYTES = 8 << 20  # thousands of modules' names; a real environment's is about 100 KB
CACHE_VERSION = 1
_METADATA_SUFFIXES = (".dist-info", ".egg-info", ".egg")
# The files packages_distributions() reads a distribution's modules and name from.
_NAMING_FILES = ("top_level.txt", "RECORD", "SOURCES.txt", "METADATA", "PKG-INFO")

_lock = threading.Lock()


def cache_file() -> Path:
    return cache_root() / "env" / "distributions.json"


def environment_key() -> str | None:
    """A digest of what ``packages_distributions()`` reads, or None when it cannot be known
    (a finder other than the path finder also lists distributions). For each ``sys.path``
    entry, in order: a file (a zip, a zipped egg) by its size and time; in a folder, each
    metadata folder (``*.dist-info``, ``*.egg-info``, ``*.egg``) by its name and time and the
    times of the files that name its modules (a ``setup.py develop`` rewrites those in
    place). Folders with none leave no trace, so where a command runs from does not matter."""
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder
           for finder in sys.meta_path):
        return None
    digest = hashlib.sha256(f"{CACHE_VERSION}\0{sys.version}\0".encode())
    for entry in sys.path:
        where = entry or os.getcwd()
        try:
            if os.path.isfile(where):
                info = os.stat(where)
                digest.update(f"file\0{where}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
                continue
            with os.scandir(where) as it:
                found = sorted((e.name, e.stat().st_mtime_ns) for e in it
                               if e.name.lower().endswith(_METADATA_SUFFIXES)
                               or e.name == "EGG-INFO")  # an egg on the path: its metadata
        except OSError:  # a folder that is not there
            continue
        if not found:
            continue
        digest.update(f"path\0{where}\0".encode())
        for name, mtime in found:
            digest.update(f"{name}\0{mtime}\0".encode())
            meta = os.path.join(where, name, "EGG-INFO") if name.lower().endswith(".egg") \
                else os.path.join(where, name)
            for inside in _NAMING_FILES:
                try:
                    digest.update(f"{inside}\0{os.stat(os.path.join(meta, inside)).st_mtime_ns}"
                                  "\0".encode())
                except OSError:
                    pass
    return digest.hexdigest()


def _read(key: str) -> dict[str, list[str]] | None:
    """The cached mapping for ``key``, or None (missing, another key, damaged, not a file)."""
    try:
        data = read_bounded(cache_file(), MAX_CACHE_BYTES)
        if len(data) > MAX_CACHE_BYTES:
            return None
        record = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    mapping = record.get("modules")
    # A distribution whose metadata has no Name is listed as None, as the standard library does.
    if not isinstance(mapping, dict) or not all(
            isinstance(module, str) and isinstance(names, list) and names
            and all(name is None or isinstance(name, str) for name in names)
            for module, names in mapping.items()):
        return None
    return mapping


def _write(key: str, mapping: Mapping[str, list[str]]) -> None:
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file(), json.dumps(
            {"key": key, "modules": mapping}, ensure_ascii=False, sort_keys=True))
    except OSError:
        pass  # a read-only cache: the next process works it out again, nothing is lost


def remember() -> None:
    """Make ``importlib.metadata.packages_distributions`` answer from memory and the cache.
    Idempotent; each call's answer is a fresh dict, as the original's is."""
    with _lock:
        current = importlib.metadata.packages_distributions
        if getattr(current, "storyboard_original", None) is not None:
            return
        importlib.metadata.packages_distributions = _remembering(current)


def _remembering(original: Callable[[], Mapping[str, list[str]]]):
    answers: dict[str, dict[str, list[str]]] = {}  # environment key -> answer, this process

    def packages_distributions() -> Mapping[str, list[str]]:
        # The key is worked out at every call (milliseconds): sys.path may have grown since.
        key = environment_key()
        if key is None:  # other finders list distributions too: never from memory
            return original()
        with _lock:
            if key not in answers:
                mapping = _read(key)
                if mapping is None:
                    mapping = {k: list(v) for k, v in original().items()}
                    _write(key, mapping)
                answers[key] = mapping
            answer = answers[key]
        return {module: list(names) for module, names in answer.items()}

    packages_distributions.storyboard_original = original
    packages_distributions.__doc__ = original.__doc__
    return packages_distributions
