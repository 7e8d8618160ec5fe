"""The files of compiled artifacts (speed/artifacts.py): their format, reading and writing, and
which of them no build can load again.

In: an artifact's path, or the folder of them (``storyboard-aot/`` in the compile cache). Out:
its record (the modules its code was traced from, with each source file and its sha256) and
torch's payload; ``stale_artifacts`` for `storyboard clean`; ``prune`` keeps the folder within
its size limit, least recently used first. Imports nothing heavy.

A file: ``MAGIC``, the sha256 of the rest, a JSON line (the record), then the payload. It is
read only if it is a regular file owned by this user (another user's is left alone: never
loaded, replaced or removed), bounded in size, and whole (the checksum): a torn or damaged file
is rebuilt, never loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from ...paths import atomic_write_bytes, compile_cache_dir, open_regular

MAGIC = b"storyboard-aot\n"
MAX_BYTES = 1 << 31  # an SDXL UNet's artifact is about 40 MB
FOLDER = "storyboard-aot"
# The folder's size limit: an SDXL batch shape costs about 64 MB (UNet and VAE decoder), and a
# new model structure (other LoRA adapter names, another family) is a new set.
LIMIT_MB = 4096
LIMIT_ENV = "STORYBOARD_COMPILE_ARTIFACTS_MB"


def artifacts_dir() -> Path:
    return Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or compile_cache_dir()) / FOLDER


_SOURCES: dict[str, tuple[str | None, str | None]] = {}


def file_digest(path: str | None) -> str | None:
    """The sha256 of a source file's bytes; None where there is none to read."""
    if not path or not path.endswith(".py"):
        return None
    try:
        with open_regular(Path(path)) as f:
            return hashlib.sha256(f.read(64 << 20)).hexdigest()
    except OSError:
        return None


def module_source(name: str) -> tuple[str | None, str | None]:
    """A Python module's source file and its sha256 (looked up once per process)."""
    if name not in _SOURCES:
        try:
            spec = importlib.util.find_spec(name)
            origin = spec.origin if spec is not None else None
        except (ImportError, ValueError):
            origin = None
        _SOURCES[name] = (origin, file_digest(origin))
    return _SOURCES[name]


def traced_sources(fn: Any) -> dict[str, list]:
    """The modules whose code ``fn``'s graph was traced from: {module: [file, sha256]}."""
    return {s.module: list(module_source(s.module)) for s in fn.source_info().inlined_sources}


def changed_source(sources: dict) -> str | None:
    """A module whose source is no longer the one an artifact was traced from (a library
    patched, reinstalled or upgraded), or None. In a render, where the modules are loaded."""
    return next((name for name, (_, digest) in sorted(sources.items())
                 if module_source(name)[1] != digest), None)


def stale_file(sources: dict) -> str | None:
    """The same question from the recorded files alone, without importing anything (for
    `storyboard clean`): a traced file that is gone or has changed, or None."""
    return next((path or name for name, (path, digest) in sorted(sources.items())
                 if file_digest(path) != digest), None)


class ForeignFile(ValueError):
    """An artifact's path holds another user's file."""


def read_artifact(path: Path) -> tuple[dict, bytes] | None:
    """The record (what it was traced from) and payload of an artifact this user wrote, whole
    and unchanged; None if there is none. Raises ValueError for a file that is not one (the
    caller rebuilds it) and ``ForeignFile`` for another user's (left alone)."""
    try:
        f = open_regular(path)
    except FileNotFoundError:
        return None
    with f:
        st = os.fstat(f.fileno())
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise ForeignFile("owned by another user (left as it is)")
        if st.st_size > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        data = f.read(MAX_BYTES + 1)
    head, digest, body = data[:len(MAGIC)], data[len(MAGIC):len(MAGIC) + 65], \
        data[len(MAGIC) + 65:]
    if head != MAGIC or digest[-1:] != b"\n" or \
            hashlib.sha256(body).hexdigest().encode() != digest[:-1]:
        raise ValueError("damaged (its checksum does not match)")
    line, _, payload = body.partition(b"\n")
    try:
        record = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("sources"), dict) or not all(
            isinstance(k, str) and isinstance(v, list) and len(v) == 2
            and all(x is None or isinstance(x, str) for x in v)
            for k, v in record["sources"].items()):
        raise ValueError("damaged (its record is not one storyboard writes)")
    return record, payload


def write_artifact(path: Path, record: dict, payload: bytes) -> None:
    body = json.dumps(record, sort_keys=True).encode() + b"\n" + payload
    digest = hashlib.sha256(body).hexdigest().encode()
    atomic_write_bytes(path, MAGIC + digest + b"\n" + body)


NAME = re.compile(r"[a-z0-9_]+-[0-9a-f]{40}\.aot")  # what CompiledMethod names its files


def stale_artifacts(folder: Path | None = None) -> list[Path]:
    """Saved artifacts no build can load again, for `storyboard clean`: damaged ones, and those
    traced from source files that have changed or are gone (a library upgraded or removed;
    a build would name its new ones differently). Only files named as storyboard names them,
    and never another user's. Imports nothing heavy: it reads the files' records."""
    folder = folder or artifacts_dir()
    try:
        names = sorted(p for p in folder.iterdir() if NAME.fullmatch(p.name))
    except OSError:
        return []
    stale = []
    for path in names:
        try:
            saved = read_artifact(path)
        except ForeignFile:
            continue
        except (OSError, ValueError):
            stale.append(path)  # damaged: a build would only build it again
            continue
        if saved is not None and stale_file(saved[0]["sources"]) is not None:
            stale.append(path)
    return stale


def limit_bytes() -> int:
    """The folder's size limit (``STORYBOARD_COMPILE_ARTIFACTS_MB``, else ``LIMIT_MB``)."""
    try:
        return max(0, int(os.environ.get(LIMIT_ENV, LIMIT_MB))) << 20
    except ValueError:
        return LIMIT_MB << 20


def touch(path: Path) -> None:
    """Mark an artifact as just used (its modification time: what ``prune`` goes by)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache: it is still used, only pruned sooner


def prune(folder: Path, keep: Path, limit: int | None = None) -> list[Path]:
    """Remove the least recently used artifacts (by modification time: written or loaded)
    until the folder's artifacts fit ``limit`` bytes; never ``keep`` (the one just written),
    another user's file, or any file not named as storyboard names them. What was removed."""
    limit = limit_bytes() if limit is None else limit
    mine = []
    try:
        for path in folder.iterdir():
            if not NAME.fullmatch(path.name):
                continue
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and (not hasattr(os, "getuid")
                                             or st.st_uid == os.getuid()):
                mine.append((st.st_mtime_ns, path.name, path, st.st_size))
    except OSError:
        return []
    total = sum(size for *_, size in mine)
    removed = []
    for _, _, path, size in sorted(mine):
        if total <= limit:
            break
        if path == keep:
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            pass  # another process pruned it first
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed
