"""Shared helpers: write stories to temp folders, run the CLI, compare against golden files.

Set STORYBOARD_UPDATE_GOLDENS=1 to rewrite golden files from the current output (then review
the diff before committing).
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach the network. huggingface_hub reads this once, when first imported, so it is
# set here, before anything imports diffusers.
os.environ["HF_HUB_OFFLINE"] = "1"
# torch's CPU threads spin while they wait for work; on a small machine shared with the CLI's
# subprocesses (or other test runs) that spinning starves everyone: training steps measured up to
# 100x slower. Passive waiting changes no result, only who gets the cores. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
from click.testing import CliRunner

from storyboard.cli import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("STORYBOARD_UPDATE_GOLDENS") == "1"

MINIMAL = """\
version: 1
model: tiny-sdxl
panels:
  - id: p1
    prompt: a cat
"""


def run_cli(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return runner.invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def check_golden(path: Path, actual: str) -> None:
    if UPDATE or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"golden file {path.name} did not exist; wrote it, review and rerun")
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from {path}; rerun with " \
                               "STORYBOARD_UPDATE_GOLDENS=1 to accept"


@pytest.fixture(autouse=True)
def page_cache(request, tmp_path_factory, monkeypatch):
    """The page tests (tests/output) write PDFs, whose font subsets are kept in the cache
    (``pdf.truetype_subset``): they keep them in one of their own, never the user's ~/.cache
    (a test that asks for ``session_cache`` or ``fresh_cache`` gets that one instead)."""
    if request.node.path.parent.name == "output" and not {"session_cache", "fresh_cache"} \
            & set(request.fixturenames):
        monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path_factory.getbasetemp() / "pages"))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """One storyboard cache (built-in models, converted LoRAs, panels) for the whole run, so
    tests never touch the user's ~/.cache; and 2 CPU threads, since bitwise results depend on
    the thread count."""
    import torch

    mp = pytest.MonkeyPatch()
    mp.setenv("STORYBOARD_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.set_num_threads(2)
    yield
    mp.undo()


@pytest.fixture
def story_file(tmp_path):
    """Write a story (text or bytes) to tmp_path/story.yaml and return its path."""

    def write(content: str | bytes, name: str = "story.yaml") -> Path:
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    return write


# Two panels on the built-in model, small and quick: for tests about what happens around a build
# (damage, locks, failures) rather than the pictures.
TWO_PANELS = """\
version: 1
model: tiny-sdxl
defaults: {steps: 2, width: 64, height: 64}
panels:
  - {id: a, prompt: a cat, seed: 1}
  - {id: b, prompt: a dog, seed: 2}
"""


@pytest.fixture
def two_panel_story(tmp_path, fresh_cache):
    """TWO_PANELS in tmp_path/story.yaml, with a fresh cache whose built-in model is built."""
    from storyboard.engine.builtin import builtin_folder

    builtin_folder("tiny-sdxl")  # before a test makes the disk full or holds a lock
    path = tmp_path / "story.yaml"
    path.write_text(TWO_PANELS, encoding="utf-8")
    return path


@pytest.fixture
def fresh_cache(session_cache, tmp_path, monkeypatch):
    """An empty panel cache for one test (the session's built-in models in it), so what the
    test sees rendered or cached never depends on the tests that ran before it."""
    from storyboard.paths import builtin_models_dir

    models = builtin_models_dir()
    models.mkdir(parents=True, exist_ok=True)
    folder = tmp_path / "fresh-cache"
    folder.mkdir()
    (folder / "models").symlink_to(models)
    monkeypatch.setenv("STORYBOARD_CACHE", str(folder))
    return folder


def training_story(folder: Path, text: str, pictures: int = 5) -> Path:
    """``text`` written as ``folder/story.yaml``, beside ``refs/mira/`` holding ``pictures``
    small reddish pictures (64x64, each a shade apart): a story that trains on the CPU."""
    from PIL import Image

    refs = folder / "refs" / "mira"
    refs.mkdir(parents=True)
    for i in range(pictures):
        Image.new("RGB", (64, 64), (200, 20 * i, 30)).save(refs / f"{i}.png")
    path = folder / "story.yaml"
    path.write_text(text, encoding="utf-8")
    return path
