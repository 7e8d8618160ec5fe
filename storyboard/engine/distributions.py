"""Which installed distribution provides which top-level module, worked out once per environment.

In: the environment (``sys.path`` and the ``*.dist-info`` / ``*.egg-info`` folders in it) and
storyboard's cache (``paths.cache_root()/env/distributions.json``). Out: ``remember()``, which
makes ``importlib.metadata.packages_distributions`` answer from memory within the process and
from the cache across processes, as long as no distribution was added, removed or reinstalled.

Why: diffusers calls ``packages_distributions()`` when it is imported and transformers calls it
again when it first checks a package. The function opens the metadata (``RECORD``) of every
installed distribution; on the H200 machine's environment (about 160 distributions, CUDA wheels
with large ``RECORD`` files) each call took 3.6 s of a build's start, 7.2 s in all (cProfile of a
build, bench/profile_build.py), longer than loading SDXL's weights. The answer changes only when
the set of installed distributions does, so it is cached under a key made of each ``sys.path``
folder's metadata folders (names and modification times: pip writes a new folder for every
install, upgrade and reinstall). The cached file is read like any record from disk: a regular
file, bounded, every entry checked; anything else is ignored and the answer worked out again.
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
_METADATA_SUFFIXES = (".dist-info", ".egg-info")

_lock = threading.Lock()


def cache_file() -> Path:
    return cache_root() / "env" / "distributions.json"


def environment_key() -> str:
    """A digest of what ``packages_distributions()`` reads: the ``sys.path`` folders that hold
    metadata folders, in order, and those folders' names and modification times (ns)."""
    digest = hashlib.sha256(f"{CACHE_VERSION}\0{sys.version}\0".encode())
    for entry in sys.path:
        folder = entry or os.getcwd()
        try:
            with os.scandir(folder) as it:
                found = sorted((e.name, e.stat().st_mtime_ns) for e in it
                               if e.name.endswith(_METADATA_SUFFIXES))
        except OSError:  # a missing folder, a zip file: nothing found there
            continue
        if not found:  # so where a command is run from (``python -m``) does not matter
            continue
        digest.update(f"path\0{folder}\0".encode())
        for name, mtime in found:
            digest.update(f"{name}\0{mtime}\0".encode())
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
    if not isinstance(mapping, dict) or not all(
            isinstance(module, str) and isinstance(names, list) and names
            and all(isinstance(name, str) for name in names)
            for module, names in mapping.items()):
        return None
    return mapping


def _write(key: str, mapping: Mapping[str, list[str]]) -> None:
    try:
        cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache_file(), json.dumps(
            {"key": key, "modules": {k: list(v) for k, v in mapping.items()}},
            ensure_ascii=False, sort_keys=True))
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
    answer: dict[str, list[str]] = {}
    known = threading.Event()

    def packages_distributions() -> Mapping[str, list[str]]:
        if not known.is_set():
            with _lock:
                if not known.is_set():
                    key = environment_key()
                    mapping = _read(key)
                    if mapping is None:
                        mapping = {k: list(v) for k, v in original().items()}
                        _write(key, mapping)
                    answer.update(mapping)
                    known.set()
        return {module: list(names) for module, names in answer.items()}

    packages_distributions.storyboard_original = original
    packages_distributions.__doc__ = original.__doc__
    return packages_distributions
