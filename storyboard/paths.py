"""Where storyboard keeps things on disk, and how it writes files.

In: the environment (``STORYBOARD_CACHE``, ``XDG_CACHE_HOME``, ``HOME``) and, for writes, a
destination and its bytes (or a function that writes them to a path). Out: the folders of the
cache (one root, every subfolder named here), reads that refuse anything but a regular file
(``open_regular``), and atomic writes: a temporary file in the same
folder, flushed and synced, then renamed over the destination, so an interrupted write never
leaves a half-written file behind. New files get the permissions the user's umask asks for (as
``open()`` would give them); a replaced file keeps its own. And, for a path a user gave, why it
cannot be read as a file, in words (``file_problem``).

No torch; every phase may use it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """$STORYBOARD_CACHE, else $XDG_CACHE_HOME/storyboard, else ~/.cache/storyboard."""
    env = os.environ.get("STORYBOARD_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "storyboard"


# The cache's parts. Each is a function, not a constant: the environment may change between
# calls (tests, and library users pointing a process at another cache).


def builtin_models_dir() -> Path:
    """Built-in tiny models, built on first use (engine/builtin.py)."""
    return cache_root() / "models"


def builtin_model_folder(name: str, recipe: int) -> Path:
    return builtin_models_dir() / f"{name}-r{recipe}"


def converted_loras_dir() -> Path:
    """LoRA files converted to diffusers' format, by source sha256 and family."""
    return cache_root() / "loras"


def trained_loras_dir(root: Path | None = None) -> Path:
    """Characters' trained LoRAs, one folder per training key (``training.store``), in the
    cache at ``root`` (default: ``cache_root()``)."""
    return (root or cache_root()) / "trained"


def compile_cache_dir() -> Path:
    """torch.compile's caches, so compiling is paid once per machine, not once per build."""
    return cache_root() / "inductor"


# --- atomic writes ---------------------------------------------------------------------------

_umask_lock = threading.Lock()
_umask: int | None = None


def _current_umask() -> int:
    """The process umask. Reading it means setting it, so once, under a lock."""
    global _umask
    with _umask_lock:
        if _umask is None:
            _umask = os.umask(0o022)
            os.umask(_umask)
        return _umask


def _mode_for(path: Path) -> int:
    """The permissions ``path`` should have once written."""
    try:
        return path.stat().st_mode & 0o7777  # a replaced file keeps its permissions
    except OSError:
        return 0o666 & ~_current_umask()  # mkstemp's 0600 is not what the user asked for


MISSING = "no such file"


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a regular file, in words that say what it is (``MISSING``
    when nothing is there); None when it can. Never opens it: a named pipe would block."""
    path = Path(path)
    try:
        mode = path.stat().st_mode  # follows links
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symlink loop: following its links never reaches a file"
        if exc.errno == errno.ENOTDIR:
            return f"{MISSING} (a part of the path is a file, not a folder)"
        return (exc.strerror or str(exc)).lower()
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "something")
    return f"is {kind}, not a regular file"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write_via(path, lambda tmp: tmp.write_bytes(data))


def naming(exc: OSError, path: str | Path) -> OSError:
    """``exc``, naming the file being written when the OS did not (a full disk's write() says
    only "No space left on device")."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_via(path: str | Path, write: Callable[[Path], None]) -> None:
    """Atomically create or replace ``path`` with what ``write`` puts at the temporary path it is
    given, for writers that want a path rather than bytes (safetensors' ``save_file``). The
    temporary file already exists (empty) in ``path``'s folder; ``write`` may overwrite it. Then
    the permissions (the umask's for a new file, a replaced file's own), a sync to disk and the
    rename; on any error the temporary file is removed and ``path`` is untouched, and an OS
    error names ``path`` where the OS named no file."""
    commit_staged(stage_via(path, write), path)


def stage_bytes(path: str | Path, data: bytes) -> Path:
    """``atomic_write_bytes`` but the rename: ``data`` written and synced to disk in a temporary
    file beside ``path``, which stays untouched until ``commit_staged``. For outputs made while
    a build runs that must replace the last good ones only when the build is done. A process
    killed in between leaves only the temporary file (``leftover_temporaries`` finds it)."""
    return stage_via(path, lambda tmp: tmp.write_bytes(data))


def stage_via(path: str | Path, write: Callable[[Path], None]) -> Path:
    """The first half of ``atomic_write_via``: the temporary file, written, with its
    permissions, synced; ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise naming(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def commit_staged(tmp: Path, path: str | Path) -> None:
    """Rename a staged file (``stage_via``) into place; on failure it is removed."""
    try:
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise naming(exc, path) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_regular(path: Path):
    """``path`` opened for reading if it is a regular file (a FIFO would block forever, a
    device never end); checked on the open file, so a swap in between cannot slip through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return os.fdopen(fd, "rb")


def read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` + 1 bytes of a regular file (one more tells the caller it was longer)."""
    with open_regular(path) as fh:
        return fh.read(limit + 1)


def sha256_of(path: Path) -> str | None:
    """The sha256 of a regular file's bytes; None when it cannot be read as one."""
    digest = hashlib.sha256()
    try:
        with open_regular(path) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


# The names atomic writes (``atomic_write_via``) and model builds (``engine.builtin``) give their
# temporary files and folders: ".<name>." + mkstemp's eight random characters + ".tmp". A kill
# in the middle of a write leaves one behind; nothing else is named like this.
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def leftover_temporaries(folder: Path, depth: int = 1, skip: tuple[str, ...] = ()) -> list[Path]:
    """Temporary files and folders a killed write left in ``folder`` and ``depth - 1`` levels
    below it (not following links; ``skip`` names subfolders that are not storyboard's to
    sweep). Only call it while holding the lock that keeps other writers out of ``folder``."""
    found: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return found
    for entry in entries:
        if TEMPORARY.match(entry.name) and (entry.is_file(follow_symlinks=False)
                                            or entry.is_dir(follow_symlinks=False)):
            found.append(Path(entry.path))
        elif depth > 1 and entry.name not in skip and entry.is_dir(follow_symlinks=False):
            found += leftover_temporaries(Path(entry.path), depth - 1)
    return found


def remove_temporaries(paths: list[Path]) -> None:
    import shutil

    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
