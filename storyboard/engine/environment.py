"""The process around the engine: library settings and quiet loading, set explicitly.

In: nothing (the environment). Out: ``prepare()``, the library defaults and the installed
distributions' modules remembered (``distributions``), called by the engine when it loads a
model (``loading.load_model``) and when it prepares a render (``session.Session.prepare``, which
also covers a model loaded elsewhere, before anything is compiled); and ``quiet_loading``, a
context manager that keeps library chatter off the user's terminal while models load and puts
everything back after.

``prepare`` sets defaults only: a variable the user has set wins. The one exception is
``PYTHONDONTWRITEBYTECODE``: where it would make every process compile torch from source again,
the libraries' bytecode is kept in storyboard's own cache instead (``bytecode``; off with
``STORYBOARD_BYTECODE=0``). It sets them at the moment the engine starts, not when a module is
imported, so importing storyboard changes nothing.
"""

from __future__ import annotations

import logging
import os

from ..paths import compile_cache_dir
from . import bytecode, distributions


def prepare() -> None:
    """Library defaults for a storyboard process (read by the libraries when they load)."""
    # First: it only helps modules imported after it, and torch is about to be.
    bytecode.keep()
    # Library chatter (torchvision notices, deprecations, loading bars) is not for storyboard's
    # users; an explicit setting in the environment still wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # torch.compile's caches live with storyboard's (paths.compile_cache_dir: XDG respected),
    # so compiling is paid once per machine, not once per build, and survives /tmp being
    # cleaned.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    # diffusers and transformers each ask, as they import, which distribution provides which
    # module: seconds on a large environment, answered once and cached (``distributions``).
    distributions.remember()


class quiet_loading:
    """Keep transformers/diffusers chatter (torchvision notices, deprecations, loading bars)
    off the user's terminal while loading; real problems still raise. Everything it changes
    (logger levels, the libraries' progress-bar switches) is put back on exit."""

    def __enter__(self):
        from diffusers.utils import logging as dlogging
        from transformers.utils import logging as tlogging

        self._bars = [(lib, lib.is_progress_bar_enabled()) for lib in (dlogging, tlogging)]
        for lib, _ in self._bars:
            lib.disable_progress_bar()
        self._levels = {}
        for name in ("transformers", "diffusers"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        for lib, was_enabled in self._bars:
            if was_enabled:
                lib.enable_progress_bar()
        return False

