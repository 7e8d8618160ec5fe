"""`storyboard train` as a make-like step: a character's LoRA is trained once, reused while
nothing that changes its weights changes, and trained again when a picture does; contact
sheets at its checkpoints; prior preservation's class pictures rendered once, through the
panel cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import training_story
from PIL import Image

from storyboard.commands.train import train
from storyboard.errors import UserError
from storyboard.options import RuntimeOptions
from storyboard.output.cache import PanelCache
from storyboard.output.ownership import PAGE_MARK, Outputs
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
  - {id: p2, characters: [mira], prompt: at the sea, seed: 3}
  - {id: p3, prompt: an empty street}
"""

QUIET = RuntimeOptions(progress=False, device="cpu")


@pytest.fixture
def story(tmp_path, fresh_cache):
    return training_story(tmp_path, STORY)


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
    sheets = story.parent / "story.out" / "training" / "mira"
    assert f"step 4: {sheets / 'step-000004.png'}" in result.output  # each sheet as it comes
    assert f"contact sheets of mira in {sheets}" in result.output
    result = run_cli("train", "--json", str(story), "mira")
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["reused"] == 1
    result = run_cli("train", str(story), "mina")
    assert result.exit_code == 2 and "did you mean 'mira'" in result.output


SHEETS = ["step-000002.png", "step-000004.png"]


def _other_cache(tmp_path: Path, fresh_cache: Path) -> Path:
    """A second empty cache with the same built-in models."""
    other = tmp_path / "other-cache"
    other.mkdir()
    (other / "models").symlink_to((fresh_cache / "models").resolve())
    return other


def test_contact_sheets_at_each_checkpoint_and_the_training_unchanged(story, fresh_cache,
                                                                     tmp_path, monkeypatch):
    """A sheet at step 2 and the last step 4, of the panels with mira (p1, p2: not p3), each
    a PNG with storyboard's mark naming the training; drawing them changes no weight."""
    story.write_text(story.read_text().replace("checkpoint_every: 2}",
                                               "checkpoint_every: 2, learning_rate: 0.01}"))
    import storyboard.output.pages as pages

    labels, real = [], pages.contact_sheet

    def spy(images, *args, **kwargs):
        labels.append([label for label, _ in images])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(pages, "contact_sheet", spy)
    events = []
    report = train(story, options=QUIET, store=TrainedStore(fresh_cache),
                   on_event=events.append)
    folder = story.parent / "story.out" / "training" / "mira"
    assert sorted(p.name for p in folder.iterdir()) == SHEETS
    assert [e["path"] for e in events if e["event"] == "train_sheet"] == \
        [str(folder / name) for name in SHEETS]
    [outcome] = report.outcomes
    assert outcome.sheets == tuple(folder / name for name in SHEETS)
    assert labels == [["p1", "p2"]] * 2
    assert "contact sheets of mira in" in report.summary()
    pixels = []
    for step, name in zip((2, 4), SHEETS):
        with Image.open(folder / name) as im:
            im.verify()
        with Image.open(folder / name) as im:
            mark = json.loads(im.info[PAGE_MARK])
            pixels.append(np.asarray(im.convert("RGB")).astype(int))
        assert mark == {"story": str(story.resolve()), "character": "mira",
                        "training": outcome.key, "step": step, "steps": 4}
        assert Outputs.read(story.parent / "story.out").owns(f"training/mira/{name}")
    assert np.abs(pixels[1] - pixels[0]).max() > 10  # the LoRA as it was at each step

    plain = train(story, options=QUIET, store=TrainedStore(_other_cache(tmp_path, fresh_cache)),
                  sheets=False)
    [without] = plain.outcomes
    assert without.sheets == () and without.key == outcome.key
    assert without.lora.read_bytes() == outcome.lora.read_bytes()
    assert without.lora.with_name("lora-kohya.safetensors").read_bytes() == \
        outcome.lora.with_name("lora-kohya.safetensors").read_bytes()


def test_a_file_of_the_users_where_a_sheet_goes_stops_the_training(story, fresh_cache,
                                                                   tmp_path):
    from conftest import run_cli

    out = tmp_path / "elsewhere"
    mine = out / "training" / "mira" / SHEETS[1]
    mine.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    result = run_cli("train", "--device", "cpu", "--json", "-o", str(out), str(story))
    assert result.exit_code == 2, result.output
    assert "storyboard did not write this file" in result.output and str(mine) in result.output
    assert not any('"train_start"' in line for line in result.output.splitlines())
    assert mine.read_bytes() == before and sorted(mine.parent.iterdir()) == [mine]
    assert TrainedStore(fresh_cache).status(_job(story)) == "to train"
    # Without sheets nothing is in the way; the default folder is the story's own.
    assert run_cli("train", "--device", "cpu", "--no-sheets", "-o", str(out),
                   str(story)).exit_code == 0
    assert mine.read_bytes() == before and not (story.parent / "story.out").exists()


def test_prior_preservation_renders_class_pictures_once_and_clean_keeps_them(story,
                                                                           fresh_cache):
    story.write_text(story.read_text().replace(
        "checkpoint_every: 2}", "checkpoint_every: 2, prior_preservation: {images: 2}}"))
    from storyboard.commands.clean import clean
    from storyboard.training.prior import class_jobs

    store, cache = TrainedStore(fresh_cache), PanelCache(fresh_cache)
    events = []
    first = train(story, options=QUIET, store=store, sheets=False, on_event=events.append)
    [outcome] = first.outcomes
    assert outcome.status == "trained" and outcome.class_pictures == 2
    job = _job(story)
    keys = {c.hash for c in class_jobs(job)}
    assert len(keys) == 2 and all(cache.verified(key) for key in keys)
    [encoding] = [e for e in events if e.get("phase") == "encoding"]
    assert encoding["class_pictures"] == 2  # what the trainer was given
    assert keys <= cache.live_keys()[0]

    # Trained again from scratch: the class pictures come from the cache.
    again = train(story, options=QUIET, store=store, sheets=False, force=True)
    assert again.outcomes[0].class_pictures == 0
    assert again.outcomes[0].lora.read_bytes() == outcome.lora.read_bytes()
    # A build records its own panels only; clean still keeps the class pictures.
    cache.set_roots(story, set())
    clean([], cache=cache)
    assert all(cache.verified(key) for key in keys)
    assert store.status(job) == "up to date"


def test_sheets_of_another_training_go_and_a_users_files_stay(story, tmp_path):
    """Claiming a training's sheets removes storyboard's sheets of another training of the
    character (another key), keeps this training's own and anything of the user's; a
    character in no panel gets a picture of its token and class."""
    from storyboard.commands.training_sheets import claim, plan_sheets
    from storyboard.output.pages import page_png

    job = _job(story)
    out = tmp_path / "out"
    folder = out / "training" / "mira"
    folder.mkdir(parents=True)

    def sheet(name: str, key: str) -> Path:
        path = folder / name
        mark = json.dumps({"character": "mira", "training": key, "step": 2})
        path.write_bytes(page_png(Image.new("RGB", (8, 8)), mark))
        return path

    other = sheet("step-000006.png", "0" * 64)  # a longer training, before
    mine = sheet("step-000002.png", job.key)  # this one's, killed after step 2
    users = folder / "step-000008.png"
    Image.new("RGB", (8, 8), (9, 9, 9)).save(users)
    sheets = plan_sheets(out, str(story.resolve()), job, [])
    assert [p.panel for p in sheets.panels] == ["ohwx girl"]
    assert sheets.names() == ["training/mira/step-000002.png", "training/mira/step-000004.png"]
    claim([sheets], force=False)
    assert sorted(folder.iterdir()) == [mine, users] and not other.exists()
    claim([sheets], force=True)  # from scratch: its own old sheets go too, never the user's
    assert sorted(folder.iterdir()) == [users]


def test_a_build_that_trains_first_draws_the_sheets_in_its_own_folder(story, fresh_cache,
                                                                     tmp_path):
    from storyboard.commands import build

    out = tmp_path / "built"
    mine = out / "training" / "mira" / SHEETS[0]
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my notes, not a sheet")
    events = []
    with pytest.raises(UserError, match="storyboard did not write this file"):
        build(story, out, options=QUIET, on_event=events.append)
    assert not any(e["event"] == "train_start" for e in events)
    assert mine.read_bytes() == b"my notes, not a sheet"
    mine.unlink()

    report = build(story, out, options=QUIET, on_event=events.append)
    assert report.exit_code == 0
    assert sorted(p.name for p in mine.parent.iterdir()) == SHEETS
    assert [e["step"] for e in events if e["event"] == "train_sheet"] == [2, 4]
