"""A build trains the character LoRAs its panels need, then renders with them; `--no-train`
refuses instead; `plan` says which panels wait for a training; commands that do not train
(reroll) refuse a panel that waits."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from conftest import run_cli, training_story
from storyboard.commands import build
from storyboard.commands.reroll import reroll
from storyboard.errors import UserError
from storyboard.options import RuntimeOptions
from storyboard.output.pnginfo import read_panel_png
from storyboard.training.store import LORA_FILE, TrainedStore

STORY = """\
version: 1
title: Mira
model: tiny-sdxl
defaults: {seed: 7, steps: 2, width: 64, height: 64}
characters:
  mira:
    token: ohwx
    class: girl
    description: curly red hair
    train: {images: refs/mira/, steps: 3, checkpoint_every: 3, weight: 0.8}
  tom:
    description: a tall man
panels:
  - {id: park, characters: [mira], prompt: in a park}
  - {id: road, characters: [tom], prompt: on a road}
"""

QUIET = RuntimeOptions(progress=False, device="cpu")


@pytest.fixture
def story(tmp_path, fresh_cache):
    return training_story(tmp_path, STORY)


def test_a_build_trains_first_renders_with_the_lora_then_does_nothing(story, fresh_cache):
    events = []
    report = build(story, options=QUIET, on_event=events.append)
    kinds = [e["event"] for e in events]
    first = next(e for e in events if e["event"] == "train_first")
    assert first["characters"] == ["mira"] and first["steps"] == 3
    assert "no estimate yet" in first["message"] and first["estimate_s"] is None
    # Trained before the render is planned, then both panels rendered.
    assert kinds.index("train_first") < kinds.index("train_start") < kinds.index("plan")
    assert report.count("rendered") == 2 and report.exit_code == 0

    store = TrainedStore(fresh_cache)
    park = next(o for o in report.outcomes if o.job.panel == "park")
    [lora] = park.job.loras
    assert lora.character == "mira" and lora.weight == 0.8
    assert lora.path.endswith(LORA_FILE) and lora.path.startswith(str(store.root))
    assert not park.job.awaiting
    _, record = read_panel_png(park.path)  # the panel records the LoRA it was rendered with
    assert [entry.sha256 for entry in record.job.loras] == [lora.sha256]
    # The file says how it was made (`lora inspect` reads storyboard's header entries).
    shown = run_cli("lora", "inspect", lora.path).output
    assert "trained:" in shown and "token ohwx" in shown and "steps 3" in shown, shown

    again = []
    second = build(story, options=QUIET, on_event=again.append)
    assert second.count("cached") == 2 and not second.model_loaded
    assert not any(e["event"].startswith("train") for e in again)


def test_no_train_refuses_naming_the_command_and_renders_nothing(story, fresh_cache):
    with pytest.raises(UserError) as caught:
        build(story, options=QUIET, train=False)
    message = str(caught.value)
    assert "park" in message and "mira" in message and "storyboard train" in message
    assert not (story.parent / "story.out" / "panels").exists()

    result = run_cli("build", "--no-train", "--device", "cpu", str(story))
    assert result.exit_code == 2 and "storyboard train" in result.output


def test_a_panel_without_the_character_renders_without_training(story, fresh_cache):
    events = []
    report = build(story, only=["road"], options=QUIET, on_event=events.append, train=False)
    assert report.count("rendered") == 1
    assert not any(e["event"].startswith("train") for e in events)
    # The other panel waits for its LoRA: shown missing on the page, never looked up.
    assert {o.job.panel: o.status for o in report.outcomes}["park"] == "missing"


def test_plan_says_which_panels_wait_for_a_training_then_shows_the_lora(story, fresh_cache):
    result = run_cli("plan", str(story))
    assert result.exit_code == 0, result.output
    assert "after training mira" in result.output and "to train" in result.output
    data = json.loads(run_cli("plan", "--json", str(story)).stdout)
    jobs = {job["panel"]: job for job in data["jobs"]}
    assert jobs["park"]["awaiting_training"] == ["mira"] and jobs["park"]["loras"] == []
    assert jobs["road"]["awaiting_training"] == []

    build(story, options=QUIET)
    result = run_cli("plan", str(story))
    assert "after training" not in result.output and "up to date" in result.output
    assert f"lora mira: {LORA_FILE} x0.8" in result.output
    assert "nothing to do" in result.output


def test_reroll_refuses_a_panel_that_waits_for_its_lora(story, fresh_cache):
    with pytest.raises(UserError, match="reroll does not train: run `storyboard train"):
        reroll(story, "park", [1, 2], options=QUIET)


def test_the_next_training_is_estimated_from_this_machines_last(story, fresh_cache):
    build(story, options=QUIET)
    Image.new("RGB", (64, 64), (10, 200, 30)).save(story.parent / "refs" / "mira" / "0.png")
    events = []
    build(story, options=QUIET, on_event=events.append)
    first = next(e for e in events if e["event"] == "train_first")
    assert first["estimate_s"] is not None and first["estimate_s"] > 0
    assert "on cpu, as trainings here took before" in first["message"]


def test_the_course_storys_train_form_works_once_uncommented(tmp_path, fresh_cache):
    """examples/course-kolors.yaml shows the `train:` form commented out (the course's
    pictures are not in the repository): uncommented, with pictures, it validates and plans."""
    from pathlib import Path

    from storyboard.commands import load_and_compile

    text = (Path(__file__).parents[2] / "examples" / "course-kolors.yaml").read_text("utf-8")
    start = text.index("    # token: xiaozi")
    block = text[start:text.index("\n\n", start)]
    uncommented = "\n".join(line.replace("# ", "", 1) for line in block.splitlines())
    story = tmp_path / "course.yaml"
    story.write_text(text.replace(block, uncommented), encoding="utf-8")
    refs = tmp_path / "refs" / "xiaozi"
    refs.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (1024, 1024), (120, 60, 160 + 10 * i)).save(refs / f"{i}.png")

    loaded, jobs = load_and_compile(story)
    assert loaded.spec.characters["xiaozi"].train.steps == 1000
    assert [job.panel for job in jobs if job.awaiting == ("xiaozi",)] == [
        job.panel for job in jobs if "xiaozi" in job.characters] != []
    result = run_cli("plan", "--model", "tiny-kolors", str(story))
    assert result.exit_code == 0, result.output
    assert "after training xiaozi" in result.output
