"""Keep the libraries' compiled bytecode where the environment would not keep it.

In: the interpreter's bytecode settings (``PYTHONDONTWRITEBYTECODE`` or ``-B``,
``PYTHONPYCACHEPREFIX``), whether torch's own ``__pycache__`` holds its bytecode or could, and
``STORYBOARD_BYTECODE`` (``0`` turns this off). Out: ``keep()``, called by
``environment.prepare`` before the engine imports torch: where nothing would keep torch's
bytecode, it points ``sys.pycache_prefix`` at ``paths.cache_root()/env/bytecode`` and lets Python
write there, and sets the same for the processes it starts (``PYTHONPYCACHEPREFIX``, without
``PYTHONDONTWRITEBYTECODE``). It returns that folder, or None where it changed nothing. And
``orphans()``: the kept files whose sources are gone, for `storyboard clean`.

Why: container images often set ``PYTHONDONTWRITEBYTECODE=1`` over a virtual environment
installed without ``.pyc`` files (the H200 machines storyboard is measured on do). Every process
there compiles torch, diffusers and transformers from source, about 2,700 modules: 5.6 s of
``compile()`` in a profile of those imports, paid by every build before its model loads. Kept in
storyboard's cache, it is paid once per environment.

What it leaves alone: an environment that keeps bytecode itself (writable ``__pycache__``
folders, or ``.pyc`` files already there); a prefix the user chose; a cache folder it cannot
write. Python checks each cached file against its source's size and mtime, as it does in
``__pycache__``, and writes each one atomically, so an upgrade or two builds at once are safe.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..paths import cache_root

OFF = ("0", "off", "false", "no")


def folder(root: Path | None = None) -> Path:
    return (root or cache_root()) / "env" / "bytecode"


def orphans(root: Path) -> list[Path]:
    """The bytecode kept in the cache at ``root`` whose source file is gone (a removed
    environment, an uninstalled package): what `storyboard clean` removes. The folder mirrors
    the sources' absolute paths, as ``sys.pycache_prefix`` lays it out; only plain ``.pyc``
    files are considered, and no link is followed."""
    top = folder(root)
    gone = []
    for here, dirs, files in os.walk(top):
        for name in files:
            path = Path(here, name)
            if not name.endswith(".pyc") or path.is_symlink() or not path.is_file():
                continue
            # "mod.cpython-312.pyc" (or ".opt-1.pyc") was compiled from "mod.py".
            source = Path("/", path.parent.relative_to(top), name.split(".", 1)[0] + ".py")
            if not source.exists():
                gone.append(path)
    return sorted(gone)


def _environment_keeps(origin: str) -> bool:
    """Whether Python already finds, or will write, the bytecode of the module at ``origin``."""
    cached = importlib.util.cache_from_source(origin)  # with no prefix: its __pycache__ file
    if os.path.isfile(cached):
        return True  # read even under -B
    if sys.dont_write_bytecode:
        return False
    pycache = os.path.dirname(cached)
    # Python makes __pycache__ when it can write the package's folder.
    where = pycache if os.path.isdir(pycache) else os.path.dirname(pycache)
    return os.access(where, os.W_OK)


def keep(probe: str = "torch") -> Path | None:
    """Keep bytecode in storyboard's cache when the environment would not keep ``probe``'s
    (the largest library a build imports). Call before importing it."""
    if os.environ.get("STORYBOARD_BYTECODE", "").strip().lower() in OFF:
        return None
    if sys.pycache_prefix is not None:
        return None  # the user's choice (PYTHONPYCACHEPREFIX, -X pycache_prefix), or done
    try:
        spec = importlib.util.find_spec(probe)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    if _environment_keeps(spec.origin):
        return None
    try:
        target = folder()
        target.mkdir(parents=True, exist_ok=True)
        target = target.resolve()  # imports resolve it against the working folder of the day
    except OSError:
        return None
    if not os.access(target, os.W_OK):
        return None
    # Both are read at each import (importlib's cache_from_source and SourceLoader): modules
    # imported from here on are read from, and written to, the prefix.
    sys.pycache_prefix = str(target)
    sys.dont_write_bytecode = False
    # And the same for the processes this one starts (torch.compile's workers import torch).
    os.environ["PYTHONPYCACHEPREFIX"] = str(target)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    return target
