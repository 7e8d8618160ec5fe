"""Validation: examples pass, and every class of bad input gets its golden error message."""

from __future__ import annotations

import pytest

from conftest import EXAMPLES, GOLDEN, check_golden, run_cli
from storyboard.errors import StoryError
from storyboard.story import load_story

ERROR_CASES = sorted(p.name for p in (GOLDEN / "errors").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_examples_validate_without_warnings(name):
    result = run_cli("validate", "--strict", str(EXAMPLES / name))
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_examples_start_with_schema_modeline():
    for path in EXAMPLES.glob("*.yaml"):
        first = path.read_text("utf-8").splitlines()[0]
        assert first == "# yaml-language-server: $schema=../schemas/story.schema.json", path


@pytest.mark.parametrize("name", ERROR_CASES)
def test_error_messages_golden(name):
    """`storyboard validate` on each bad story prints exactly the golden text, no traceback."""
    result = run_cli("validate", name, cwd=GOLDEN / "errors")
    assert "Traceback" not in result.output
    check_golden(GOLDEN / "errors" / name.replace(".yaml", ".txt"),
                 f"exit {result.exit_code}\n{result.output}")


def test_every_error_case_fails_with_code_2_and_positions():
    for name in ERROR_CASES:
        if name == "unused-character.yaml":
            continue
        result = run_cli("validate", name, cwd=GOLDEN / "errors")
        assert result.exit_code == 2, name
        assert result.output.startswith(f"{name}:"), name


def test_all_problems_reported_at_once():
    with pytest.raises(StoryError) as info:
        load_story(GOLDEN / "errors" / "bad-types.yaml")
    locs = {p.loc for p in info.value.problems}
    assert {("defaults", "guidance"), ("panels", 0, "seed"), ("panels", 0, "steps"),
            ("panels", 0, "caption"), ("panels", 1, "prompt"),
            ("panels", 1, "characters")} <= locs


def test_problem_points_at_line_and_column():
    with pytest.raises(StoryError) as info:
        load_story(GOLDEN / "errors" / "bad-types.yaml")
    seed = next(p for p in info.value.problems if p.loc == ("panels", 0, "seed"))
    assert (seed.line, seed.col) == (8, 11)
    assert seed.format() == ("bad-types.yaml:8:11: panels[0].seed: expected an integer, got "
                             "'abc'").replace("bad-types.yaml", str(GOLDEN / "errors" /
                                                                    "bad-types.yaml"))


def test_unused_character_is_a_warning_unless_strict():
    path = GOLDEN / "errors" / "unused-character.yaml"
    assert run_cli("validate", str(path)).exit_code == 0
    strict = run_cli("validate", "--strict", str(path))
    assert strict.exit_code == 2
    assert "defined but appears in no panel" in strict.output


def test_quiet_prints_nothing():
    bad = run_cli("validate", "-q", str(GOLDEN / "errors" / "bad-types.yaml"))
    good = run_cli("validate", "-q", str(EXAMPLES / "quickstart.yaml"))
    assert (bad.exit_code, bad.output) == (2, "")
    assert (good.exit_code, good.output) == (0, "")


def test_several_files_all_reported():
    result = run_cli("validate", "bad-types.yaml", "version.yaml", "syntax.yaml",
                     cwd=GOLDEN / "errors")
    assert result.exit_code == 2
    for name in ("bad-types.yaml:", "version.yaml:", "syntax.yaml:"):
        assert name in result.output


def test_missing_story_file(tmp_path):
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "nope.yaml: no such file" in result.output


def test_yaml_anchors_and_merge_keys_are_fine(story_file):
    path = story_file("""\
version: 1
model: tiny-sdxl
x-common: &common
  steps: 12
panels:
  - id: a
    prompt: a cat
    <<: *common
""")
    with pytest.raises(StoryError) as info:  # x-common itself is an unknown key...
        load_story(path)
    assert [p.loc for p in info.value.problems] == [("x-common",)]
    path.write_text(path.read_text().replace("x-common: &common\n  steps: 12\n", "")
                    .replace("    <<: *common\n", "    steps: &s 12\n  - id: b\n"
                             "    prompt: a dog\n    steps: *s\n"))
    story = load_story(path)
    assert [p.steps for p in story.spec.panels] == [12, 12]


def test_relative_paths_resolve_from_story_folder(tmp_path):
    (tmp_path / "sub" / "loras").mkdir(parents=True)
    (tmp_path / "sub" / "loras" / "x.safetensors").write_bytes(b"0")
    story = tmp_path / "sub" / "s.yaml"
    story.write_text("version: 1\nmodel: tiny-sdxl\ncharacters:\n  x:\n    loras: "
                     "[loras/x.safetensors]\npanels:\n  - {id: a, characters: [x], prompt: c}\n")
    result = run_cli("validate", str(story), cwd=tmp_path)
    assert result.exit_code == 0, result.output


def test_model_shorthands(story_file, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text('{"_class_name": "KolorsPipeline"}')
    for text, field, value in (("tiny-kolors", "builtin", "tiny-kolors"),
                               ("org/name", "repo", "org/name"),
                               ("./m", "path", "./m")):
        story = load_story(story_file(f"version: 1\nmodel: {text}\n"
                                      "panels: [{id: a, prompt: c}]\n"))
        assert getattr(story.spec.model, field) == value


def test_chinese_captions_and_prompts_round_trip(story_file):
    story = load_story(story_file("version: 1\nmodel: tiny-kolors\npanels:\n  - id: a\n"
                                  "    prompt: 二次元，一只猫\n    caption: “你好”，世界！\n"))
    assert story.spec.panels[0].caption == "“你好”，世界！"
