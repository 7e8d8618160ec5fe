"""`storyboard train` as a make-like step: a character's LoRA is trained once, reused while
nothing that changes its weights changes, and trained again when a picture does."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from storyboard.commands.train import train
from storyboard.errors import UserError
from storyboard.options import RuntimeOptions
from storyboard.training.store import TrainedStore

STORY = """\
version: 1
model: tiny-sdxl
defaults: {seed: 7, steps: 2, width: 64, height: 64}
characters:
  mira:
    token: ohwx
    class: girl
    description: curly red hair
    train: {images: refs/mira/, steps: 4, checkpoint_every: 2}
panels:
  - {id: p1, characters: [mira], prompt: in a park}
"""

QUIET = RuntimeOptions(progress=False, device="cpu")


@pytest.fixture
def story(tmp_path, fresh_cache):
    refs = tmp_path / "refs" / "mira"
    refs.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (64, 64), (200, 20 * i, 30)).save(refs / f"{i}.png")
    path = tmp_path / "story.yaml"
    path.write_text(STORY, encoding="utf-8")
    return path


def test_trained_once_then_reused_then_trained_again_after_a_picture_changes(story, fresh_cache):
    store = TrainedStore(fresh_cache)
    first = train(story, options=QUIET, store=store)
    [outcome] = first.outcomes
    assert outcome.status == "trained" and outcome.lora.is_file()
    assert store.status(_job(story)) == "up to date"

    events = []
    again = train(story, options=QUIET, store=store, on_event=events.append)
    assert [o.status for o in again.outcomes] == ["reused"]
    assert not any(e["event"].startswith("train_step") for e in events)

    Image.new("RGB", (64, 64), (10, 200, 30)).save(story.parent / "refs" / "mira" / "0.png")
    third = train(story, options=QUIET, store=store)
    assert [o.status for o in third.outcomes] == ["trained"]
    assert third.outcomes[0].key != outcome.key


def test_a_reused_lora_needs_no_torch(story, fresh_cache):
    train(story, options=QUIET, store=TrainedStore(fresh_cache))
    import subprocess

    code = ("import sys\nfrom storyboard.commands.train import train\n"
            "from storyboard.options import RuntimeOptions\n"
            f"r = train({str(story)!r}, options=RuntimeOptions(progress=False))\n"
            "print([o.status for o in r.outcomes], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "['reused'] False" in out.stdout, out.stdout + out.stderr


def test_unknown_characters_are_named(story, fresh_cache):
    with pytest.raises(UserError, match="did you mean 'mira'"):
        train(story, ["mina"], options=QUIET, store=TrainedStore(fresh_cache))


def _job(story: Path):
    from storyboard.story import load_story
    from storyboard.training.compile import compile_training

    return compile_training(load_story(story))[0]


def test_the_command_line_trains_then_says_it_reused(story, fresh_cache):
    import json

    from conftest import run_cli

    result = run_cli("train", "--device", "cpu", str(story))
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("s") and "trained mira" in result.output
    result = run_cli("train", "--json", str(story), "mira")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["reused"] == 1
    result = run_cli("train", str(story), "mina")
    assert result.exit_code == 2 and "did you mean 'mira'" in result.output
