"""The engine's process settings: nothing on import, XDG respected, everything restored."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("torch")

KEYS = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "TOKENIZERS_PARALLELISM",
        "TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE")


def run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in KEYS and k not in (
        "STORYBOARD_CACHE", "XDG_CACHE_HOME")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=clean | env, check=True)
    return out.stdout.strip()


def test_importing_the_engine_changes_no_environment_variable():
    code = ("import importlib, os, pkgutil, storyboard.engine as e\n"
            "for m in pkgutil.walk_packages(e.__path__, 'storyboard.engine.'):\n"
            "    importlib.import_module(m.name)\n"
            f"print(sorted(k for k in {KEYS!r} if k in os.environ))")
    assert run(code) == "[]"


def test_the_compile_cache_lives_with_storyboards_cache(tmp_path):
    code = ("import os\nfrom storyboard.engine.environment import prepare\nprepare()\n"
            "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])")
    assert run(code, XDG_CACHE_HOME=str(tmp_path / "xdg")) == str(
        tmp_path / "xdg" / "storyboard" / "inductor")
    assert run(code, STORYBOARD_CACHE=str(tmp_path / "sb"),
               XDG_CACHE_HOME=str(tmp_path / "xdg")) == str(tmp_path / "sb" / "inductor")
    # A setting of the user's own wins.
    assert run(code, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "mine")) == str(tmp_path / "mine")


def test_quiet_loading_puts_everything_back():
    import logging

    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    from storyboard.engine.environment import quiet_loading

    dlogging.enable_progress_bar()
    tlogging.disable_progress_bar()
    logging.getLogger("diffusers").setLevel(logging.INFO)
    try:
        with quiet_loading():
            assert not dlogging.is_progress_bar_enabled()
            assert logging.getLogger("diffusers").level == logging.ERROR
        assert dlogging.is_progress_bar_enabled() and not tlogging.is_progress_bar_enabled()
        assert logging.getLogger("diffusers").level == logging.INFO
    finally:
        tlogging.enable_progress_bar()
        logging.getLogger("diffusers").setLevel(logging.NOTSET)
