"""`train:` sections compiled into training jobs: settings resolved from the story and the
family, the key, the errors only compiling finds, and what validate and plan show."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli
from storyboard.errors import StoryError
from storyboard.families import FAMILIES, train_defaults
from storyboard.plan.compile import derive_seed
from storyboard.story import load_story, with_model
from storyboard.training.compile import check_training, compile_training
from storyboard.training.jobs import PriorSpec

STORY = """\
version: 1
model: {model}
defaults: {{seed: 7}}
characters:
  {cid}:
    name: Mira
    token: ohwx
    class: girl
    description: curly red hair, green scarf
    train:
{train}
panels:
  - id: p1
    characters: [{cid}]
    prompt: in a park
"""


def pictures(folder: Path, n: int = 5, size=(64, 64)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (40 * i, 100, 200 - 30 * i)).save(folder / f"{i}.png")
    return folder


def story(tmp_path: Path, train: str = "images: refs/mira/", model: str = "tiny-sdxl",
          cid: str = "mira", name: str = "story.yaml") -> Path:
    if not (tmp_path / "refs" / "mira").exists():
        pictures(tmp_path / "refs" / "mira")
    body = "\n".join("      " + line for line in train.splitlines())
    path = tmp_path / name
    path.write_text(STORY.format(model=model, train=body, cid=cid), "utf-8")
    return path


def test_settings_come_from_the_builtin_defaults(tmp_path):
    [job] = compile_training(load_story(story(tmp_path)))
    d = train_defaults("tiny-sdxl", "sdxl")
    s = job.settings
    assert (job.character, job.token, job.class_word, job.family) == ("mira", "ohwx", "girl",
                                                                      "sdxl")
    assert (s.steps, s.rank, s.resolution, s.checkpoint_every) == (d.steps, d.rank, 64, 10)
    assert s.alpha == float(d.rank)  # alpha = rank: a scale of 1
    assert (s.learning_rate, s.batch_size, s.min_snr_gamma) == (1e-4, 1, 5.0)
    assert s.prior is None and not s.train_text_encoder and s.mixed_precision == "no"
    assert s.seed == derive_seed(7, "train:ohwx")
    assert job.weight == 1.0 and job.model.kind == "builtin" and job.model.ref == "tiny-sdxl"
    assert [img.caption for img in job.images] == ["ohwx girl, curly red hair, green scarf"] * 5
    assert len(job.key) == 64


def test_the_story_overrides_every_setting(tmp_path):
    train = """images: refs/mira/
steps: 300
rank: 8
alpha: 4
learning_rate: 5e-5
batch_size: 2
resolution: 96
seed: 11
checkpoint_every: 100
min_snr_gamma: false
train_text_encoder: true
prior_preservation: {images: 12, prompt: "a girl, plain"}
weight: 0.8"""
    [job] = compile_training(load_story(story(tmp_path, train)))
    s = job.settings
    assert (s.steps, s.rank, s.alpha, s.learning_rate, s.batch_size, s.resolution, s.seed,
            s.checkpoint_every) == (300, 8, 4.0, 5e-5, 2, 96, 11, 100)
    assert s.min_snr_gamma is None and s.train_text_encoder
    assert s.prior == PriorSpec(images=12, weight=1.0, prompt="a girl, plain")
    assert job.weight == 0.8


def test_prior_preservation_true_takes_the_defaults(tmp_path):
    [job] = compile_training(load_story(story(tmp_path, "images: refs/mira/\n"
                                                        "prior_preservation: true")))
    assert job.settings.prior == PriorSpec(images=4, weight=1.0, prompt="a photo of a girl")


def test_learning_rate_written_as_yaml_exponent_is_a_number(tmp_path):
    spec = load_story(story(tmp_path, "images: refs/mira/\nlearning_rate: 1e-4")).spec
    assert spec.characters["mira"].train.learning_rate == 1e-4


def test_a_folder_alone_is_the_short_form(tmp_path):
    path = story(tmp_path)
    path.write_text(path.read_text().replace("    train:\n      images: refs/mira/",
                                             "    train: refs/mira/"))
    [job] = compile_training(load_story(path))
    assert len(job.images) == 5


def test_the_key_follows_the_pictures_not_the_characters_name(tmp_path):
    key = compile_training(load_story(story(tmp_path)))[0].key
    renamed = compile_training(load_story(story(tmp_path, cid="ada", name="b.yaml")))[0]
    assert renamed.character == "ada" and renamed.key == key
    shown = story(tmp_path, name="c.yaml")
    shown.write_text(shown.read_text().replace("name: Mira", "name: Mirabel"))
    assert compile_training(load_story(shown))[0].key == key
    weighted = compile_training(load_story(story(tmp_path, "images: refs/mira/\nweight: 0.5",
                                                 name="d.yaml")))[0]
    assert weighted.key == key  # the weight is how the LoRA is used, not how it is trained
    more_steps = compile_training(load_story(story(tmp_path, "images: refs/mira/\nsteps: 21",
                                                   name="e.yaml")))[0]
    assert more_steps.key != key
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "refs" / "mira" / "3.png")
    assert compile_training(load_story(story(tmp_path)))[0].key != key


def test_a_caption_change_changes_the_key(tmp_path):
    key = compile_training(load_story(story(tmp_path)))[0].key
    (tmp_path / "refs" / "mira" / "0.txt").write_text("ohwx girl, laughing", "utf-8")
    assert compile_training(load_story(story(tmp_path)))[0].key != key


def test_another_model_is_another_key(tmp_path):
    loaded = load_story(story(tmp_path))
    [sdxl] = compile_training(loaded)
    [kolors] = compile_training(with_model(loaded, "tiny-kolors"))
    assert kolors.family == "kolors" and kolors.key != sdxl.key


def test_family_defaults_for_a_real_model(tmp_path):
    path = story(tmp_path, "images: refs/mira/\nmin_side: 32",
                 model="{repo: someone/some-sd15, family: sd15}")
    [job] = compile_training(load_story(path))
    d = FAMILIES["sd15"].train
    assert (job.settings.resolution, job.settings.steps, job.settings.rank) == (512, 1000, 16)
    assert job.settings.alpha == 16.0 and job.settings.mixed_precision == d.mixed_precision
    assert job.model.kind == "repo" and job.model.ref == "someone/some-sd15"


def test_the_family_min_side_applies_unless_the_story_sets_one(tmp_path):
    path = story(tmp_path, model="{repo: someone/some-sd15, family: sd15}")
    with pytest.raises(StoryError) as info:
        check_training(load_story(path))
    text = info.value.format_message()
    assert "refs/mira/0.png: too small: 64x64, the shorter side is under 512 pixels" in text
    assert "no usable pictures in 'refs/mira/' (5 left out)" in text


def test_a_repo_of_unknown_family_must_say_it(tmp_path):
    path = story(tmp_path, model="nobody-here/not-in-any-cache")
    with pytest.raises(StoryError) as info:
        check_training(load_story(path))
    [problem] = info.value.problems
    assert problem.loc == ("model",) and "training needs the model's family" in problem.message
    assert "add `family:` under `model:`" in problem.hint


def test_kolors_text_encoder_is_not_trained(tmp_path):
    path = story(tmp_path, "images: refs/mira/\ntrain_text_encoder: true", model="tiny-kolors")
    with pytest.raises(StoryError) as info:
        check_training(load_story(path))
    [problem] = [p for p in info.value.problems if p.severity == "error"]
    assert problem.loc == ("characters", "mira", "train", "train_text_encoder")
    assert "ChatGLM" in problem.message and problem.line == 12


def test_dataset_warnings_sit_at_the_images_line(tmp_path):
    path = story(tmp_path)
    Image.new("RGB", (200, 64)).save(tmp_path / "refs" / "mira" / "wide.png")
    training = check_training(load_story(path))
    [warning] = training.warnings
    assert (warning.line, warning.loc) == (11, ("characters", "mira", "train", "images"))
    assert warning.message.startswith("refs/mira/wide.png: aspect ratio 3.12")
    assert training.datasets["mira"].excluded[0].path == "refs/mira/wide.png"


def test_validate_prints_dataset_warnings_and_fails_on_their_errors(tmp_path):
    path = story(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "refs" / "mira" / "small.png")
    result = run_cli("validate", str(path))
    assert result.exit_code == 0
    assert "refs/mira/small.png: too small: 8x8" in result.output
    assert "ok (1 panel, 1 character, 1 warning(s))" in result.output
    for png in (tmp_path / "refs" / "mira").glob("*.png"):
        png.write_bytes(b"broken")
    result = run_cli("validate", str(path))
    assert result.exit_code == 2
    assert "characters.mira.train.images: no usable pictures in 'refs/mira/' (6 left out)" \
        in result.output


def test_plan_shows_each_trained_lora_and_its_status(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    path = story(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "refs" / "mira" / "small.png")
    result = run_cli("plan", "--json", str(path))
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output[result.output.index("{"):])["training"]
    key = compile_training(load_story(path))[0].key
    assert entry["character"] == "mira" and entry["key"] == key
    assert entry["images"] == 5 and entry["status"] == "to train"
    assert entry["excluded"] == [{"path": "refs/mira/small.png",
                                  "reason": "too small: 8x8, the shorter side is under 32 "
                                            "pixels"}]
    assert (entry["steps"], entry["rank"], entry["alpha"], entry["resolution"]) == (20, 4, 4.0,
                                                                                    64)
    assert entry["lora"] == str(tmp_path / "cache" / "trained" / key / "lora.safetensors")
    checkpoints = tmp_path / "cache" / "trained" / key / "checkpoints" / "step-000010"
    checkpoints.mkdir(parents=True)
    text = run_cli("plan", str(path)).output
    assert "\ntraining:\n" in text
    assert f"  mira  5 pictures (1 left out)  20 steps  rank 4  {key[:12]}  partly trained " \
           "(step 10 of 20)" in text


def test_plan_of_a_story_without_training_lists_none(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "s.yaml"
    path.write_text("version: 1\nmodel: tiny-sdxl\npanels:\n  - {id: a, prompt: x}\n")
    result = run_cli("plan", "--json", str(path))
    assert json.loads(result.output)["training"] == []
    assert "training:" not in run_cli("plan", str(path)).output


def test_the_optimizer_is_a_setting_in_the_key_and_8bit_needs_a_gpu(tmp_path, fresh_cache):
    from storyboard.commands.train import train
    from storyboard.errors import UserError
    from storyboard.options import RuntimeOptions

    [plain] = compile_training(load_story(story(tmp_path)))
    [eight] = compile_training(load_story(story(tmp_path, "images: refs/mira/\n"
                                                          "optimizer: adamw8bit")))
    assert plain.settings.optimizer == "adamw" and eight.settings.optimizer == "adamw8bit"
    assert plain.key != eight.key
    result = run_cli("validate", str(story(tmp_path, "images: refs/mira/\noptimizer: adam")))
    assert result.exit_code == 2 and "optimizer" in result.output
    with pytest.raises(UserError, match="8-bit AdamW .* needs a CUDA GPU"):
        train(story(tmp_path, "images: refs/mira/\noptimizer: adamw8bit"),
              options=RuntimeOptions(device="cpu", progress=False))
