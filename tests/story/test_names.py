"""Messages that say what happened (issue 14, class 11): paths, ids and invisible characters.

A story argument or a file a story names that is not a readable file says what it is (a named
pipe, a symlink loop, a link to nothing, a folder, missing). An id that cannot be a file name
says why (reserved on Windows; a look-alike or invisible character, named by its code point and
shown escaped, so ``'\\u212a1'`` cannot pass for ``K1``). Bidirectional controls are refused in
ids and a warning, with the field and code point, in any other text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import MINIMAL, run_cli
from storyboard.errors import StoryError, format_loc
from storyboard.paths import MISSING, file_problem
from storyboard.story import load_story


def odd_paths(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Paths that are not readable files, with what the message must say."""
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe.yaml")
    (tmp_path / "loop.yaml").symlink_to("loop.yaml")
    (tmp_path / "dangling.yaml").symlink_to("gone.yaml")
    (tmp_path / "folder.yaml").mkdir()
    return {
        "pipe": (tmp_path / "pipe.yaml", "is a named pipe (FIFO), not a regular file"),
        "loop": (tmp_path / "loop.yaml", "is a symlink loop"),
        "dangling": (tmp_path / "dangling.yaml",
                     "is a symbolic link to 'gone.yaml', which does not exist"),
        "missing": (tmp_path / "missing.yaml", "no such file"),
        "under-a-file": (tmp_path / "afile" / "story.yaml",
                         "no such file (a part of the path is a file, not a folder)"),
        "folder": (tmp_path / "folder.yaml", "is a folder, not a file"),
    }


KINDS = ["pipe", "loop", "dangling", "missing", "under-a-file", "folder"]


@pytest.mark.parametrize("kind", KINDS)
def test_file_problem_says_what_the_path_is(tmp_path, kind):
    path, message = odd_paths(tmp_path)[kind]
    assert file_problem(path).startswith(message)
    assert (file_problem(path) == MISSING) == (kind == "missing")


def test_a_device_and_a_file():
    assert file_problem("/dev/null") == "is a device, not a regular file"
    assert file_problem(__file__) is None


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["build", "-q"], ["inspect"],
                                     ["render", "--from-png"]])
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "folder"])
def test_every_command_says_what_the_story_path_is(tmp_path, command, kind):
    path, message = odd_paths(tmp_path)[kind]
    result = run_cli(*command, str(path))
    assert result.exit_code == 2, result.output
    assert f"{path}: {message}" in result.output
    assert "Traceback" not in result.output


def test_a_folder_as_a_story_says_folder(tmp_path):
    # click refuses it before storyboard sees it, in its own words.
    result = run_cli("validate", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.output


@pytest.mark.parametrize("kind", KINDS)
def test_files_a_story_names_say_what_they_are(tmp_path, kind):
    path, message = odd_paths(tmp_path)[kind]
    lora = path.with_name(path.stem + ".safetensors")
    if kind == "pipe":
        os.mkfifo(lora)
    elif kind in ("loop", "dangling"):
        lora.symlink_to(lora.name if kind == "loop" else "gone.safetensors")
    elif kind == "folder":
        lora.mkdir()
    story = tmp_path / "story.yaml"
    rel = os.path.relpath(lora, tmp_path)
    story.write_text(MINIMAL + f"characters:\n  c1:\n    loras: [{json.dumps(rel)}]\n"
                     f"layout:\n  font: {json.dumps(str(path.with_suffix('.ttf')))}\n",
                     encoding="utf-8")
    with pytest.raises(StoryError) as info:
        load_story(story)
    messages = [p.message for p in info.value.problems if p.severity == "error"]
    if kind == "missing":
        assert f"LoRA file not found: {rel!r}" in messages[0]
        return
    expected = message.replace("gone.yaml", "gone.safetensors")
    assert messages[0].startswith(f"LoRA file {rel!r}: {expected}"), messages


@pytest.mark.parametrize("kind", ["pipe", "loop", "dangling"])
def test_a_model_path_says_what_it_is(tmp_path, kind):
    model = tmp_path / "model.safetensors"
    if kind == "pipe":
        os.mkfifo(model)
    else:
        model.symlink_to("model.safetensors" if kind == "loop" else "gone.safetensors")
    story = tmp_path / "story.yaml"
    story.write_text(MINIMAL.replace("tiny-sdxl", "./model.safetensors"), encoding="utf-8")
    with pytest.raises(StoryError) as info:
        load_story(story)
    message = info.value.problems[0].message
    assert message.startswith("model './model.safetensors': is ")
    assert {"pipe": "named pipe", "loop": "symlink loop", "dangling": "gone"}[kind] in message


# --- ids --------------------------------------------------------------------------------------


def problems(tmp_path, text: str) -> list:
    path = tmp_path / "story.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StoryError) as info:
        load_story(path)
    return info.value.problems


@pytest.mark.parametrize("pid", ["CON", "con", "Prn", "aux", "NUL", "com1", "COM9", "lpt1",
                                 "LPT9", "com0"])
def test_reserved_windows_names_say_so(tmp_path, pid):
    (problem,) = problems(tmp_path, MINIMAL.replace("id: p1", f"id: {pid}"))
    assert problem.message == f"id {pid!r} is a reserved file name on Windows"
    assert "ids become file names" in problem.hint and f"'{pid}-1'" in problem.hint


@pytest.mark.parametrize("pid", ["con1", "CONSOLE", "com10", "lpt", "nuls"])
def test_names_that_only_start_like_reserved_ones_are_fine(tmp_path, pid):
    path = tmp_path / "story.yaml"
    path.write_text(MINIMAL.replace("id: p1", f"id: {pid}"), encoding="utf-8")
    assert load_story(path).spec.panels[0].id == pid


@pytest.mark.parametrize("pid, shown, named, hint", [
    ("\u212a1", r"'\u212a1'", "U+212A KELVIN SIGN", "did you mean 'K1'?"),
    ("\uff501", r"'\uff501'", "U+FF50 FULLWIDTH LATIN SMALL LETTER P", "did you mean 'p1'?"),
    ("\u04401", r"'\u04401'", "U+0440 CYRILLIC SMALL LETTER ER", "plain ASCII"),
    ("p\u200b1", r"'p\u200b1'", "U+200B ZERO WIDTH SPACE", "plain ASCII"),
    ("p\u202e1", r"'p\u202e1'", "U+202E RIGHT-TO-LEFT OVERRIDE (a bidirectional control",
     "plain ASCII"),
    ("p\u20661", r"'p\u20661'", "U+2066 LEFT-TO-RIGHT ISOLATE (a bidirectional control",
     "plain ASCII"),
    ("\u2102\u2102", r"'\u2102\u2102'", "U+2102 DOUBLE-STRUCK CAPITAL C", "did you mean 'CC'?"),
])
def test_look_alike_and_invisible_characters_are_named(tmp_path, pid, shown, named, hint):
    (problem,) = problems(tmp_path, MINIMAL.replace("id: p1", f"id: {json.dumps(pid)}"))
    assert problem.message.startswith(f"invalid id {shown}: it contains {named}")
    assert hint in problem.hint
    assert pid not in problem.format()  # only escaped: nothing prints as a plain id


def test_a_look_alike_that_folds_to_a_reserved_name_gets_no_suggestion(tmp_path):
    (problem,) = problems(tmp_path, MINIMAL.replace("id: p1", 'id: "\\uff23\\uff2f\\uff2e"'))
    assert "did you mean" not in problem.hint  # fullwidth CON folds to CON, reserved


def test_character_ids_get_the_same_words(tmp_path):
    text = (MINIMAL + 'characters:\n  "\\u212a1": {name: k}\n  Aux: {name: a}\n')
    found = {p.loc: p for p in problems(tmp_path, text)}
    kelvin = found[("characters", "\u212a1")]
    assert kelvin.message.startswith(r"invalid character id '\u212a1': it contains U+212A")
    assert r"characters['\u212a1']" in kelvin.format()
    assert found[("characters", "Aux")].message == \
        "character id 'Aux' is a reserved file name on Windows"


def test_an_unknown_look_alike_character_is_shown_escaped(tmp_path):
    text = MINIMAL.replace("prompt: a cat", 'prompt: a cat\n    characters: ["\\u212a1"]') + \
        "characters:\n  K1: {name: k}\n"
    messages = [p.message for p in problems(tmp_path, text) if p.severity == "error"]
    assert messages == [r"unknown character '\u212a1'"]


@pytest.mark.parametrize("loc, shown", [
    (("characters", "\u212a1"), r"characters['\u212a1']"),
    (("vars", "a\u202eb"), r"vars['a\u202eb']"),
    (("characters", "紫发女孩"), "characters['紫发女孩']"),
    (("panels", 0, "seed"), "panels[0].seed"),
])
def test_locations_are_escaped_only_where_they_could_mislead(loc, shown):
    assert format_loc(loc) == shown


# --- bidirectional controls in text: a warning -----------------------------------------------


@pytest.mark.parametrize("yaml, loc, line", [
    ('prompt: "a cat \\u202e"', ("panels", 0, "prompt"), 5),
    ('prompt: a cat\n    negative: "blur \\u2067"', ("panels", 0, "negative"), 6),
    ('prompt: a cat\n    caption: "hi \\u200f"', ("panels", 0, "caption"), 6),
    ('prompt: {subject: ["a cat \\u061c"]}', ("panels", 0, "prompt", "subject", 0), 5),
])
def test_bidi_controls_in_panel_text_are_a_warning(tmp_path, yaml, loc, line):
    path = tmp_path / "story.yaml"
    path.write_text(MINIMAL.replace("prompt: a cat", yaml), encoding="utf-8")
    story = load_story(path)
    (warning,) = story.warnings
    assert warning.loc == loc and warning.severity == "warning" and warning.line == line
    assert "U+" in warning.message and "bidirectional control" in warning.message
    assert "may show differently from what the model gets" in warning.message


def test_every_text_field_is_looked_at(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(MINIMAL + 'title: "t \\u202a"\ncharacters:\n  c1:\n'
                    '    description: "d \\u202b"\n    name: "n \\u202c"\n'
                    'style: {prefix: "s \\u202d"}\nvars: {v: ["x \\u2068"]}\n'
                    'templates: {prompt: "{{ prompt }} \\u2069"}\nlayout: {title: "l \\u200e"}\n',
                    encoding="utf-8")
    warned = {w.loc: w.message for w in load_story(path).warnings if "bidirectional" in w.message}
    assert set(warned) == {("title",), ("characters", "c1", "description"),
                           ("characters", "c1", "name"), ("style", "prefix"), ("vars", "v", 0),
                           ("templates", "prompt"), ("layout", "title")}
    assert "U+202A LEFT-TO-RIGHT EMBEDDING" in warned[("title",)]


def test_several_controls_are_all_named_once(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(MINIMAL.replace("prompt: a cat", 'prompt: "\\u2066a\\u2069 \\u2066b\\u2069"'),
                    encoding="utf-8")
    (warning,) = load_story(path).warnings
    assert warning.message.startswith("contains U+2066 LEFT-TO-RIGHT ISOLATE, U+2069 POP "
                                      "DIRECTIONAL ISOLATE, bidirectional controls:")


def test_right_to_left_text_without_controls_is_fine(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(MINIMAL.replace("prompt: a cat", "prompt: قطة على السطح"), encoding="utf-8")
    assert load_story(path).warnings == ()
