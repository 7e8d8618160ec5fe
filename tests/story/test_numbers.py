"""Numbers other YAML tools read otherwise (issue 14, class 12): `seed: 0755` is 755 here (YAML
1.2) and octal 493 to YAML 1.1 tools; such spellings are a warning at their line that says both
readings and what to write. Hexadecimal, which every tool reads alike, is accepted silently.
However many warnings a story has, they never crowd its errors out of the report.
"""

from __future__ import annotations

import pytest

from conftest import MINIMAL
from storyboard.errors import MAX_PROBLEMS, StoryError
from storyboard.story import load_story
from storyboard.story.edit import pin_seed


def load(tmp_path, text: str):
    path = tmp_path / "story.yaml"
    path.write_text(text, encoding="utf-8")
    return load_story(path)


def with_seed(seed: str) -> str:
    return MINIMAL + f"    seed: {seed}\n"


@pytest.mark.parametrize("written, value, message", [
    ("0755", 755, "seed 0755 has a leading zero: read as 755 (decimal); YAML 1.1 tools read it "
                  "as octal 493; write 755"),
    ("0089", 89, "seed 0089 has a leading zero: read as 89 (decimal); YAML 1.1 tools read it "
                 "as text; write 89"),
    ("0_755", 755, "seed 0_755 has a leading zero: read as 755 (decimal); YAML 1.1 tools read "
                   "it as octal 493; write 755"),
    ("0o755", 493, "seed 0o755 is read as 493 (octal); YAML 1.1 tools read it as text; "
                   "write 493"),
    ("0b101", 5, "seed 0b101 is read as 5; strict YAML 1.2 tools read it as text; write 5"),
    ("1_000", 1000, "seed 1_000 is read as 1000; strict YAML 1.2 tools read it as text; "
                    "write 1000"),
])
def test_ambiguous_integers_are_a_warning_at_their_line(tmp_path, written, value, message):
    story = load(tmp_path, with_seed(written))
    assert story.spec.panels[0].seed == value
    (warning,) = story.warnings
    assert (warning.severity, warning.line, warning.loc) == ("warning", 6, ("panels", 0, "seed"))
    assert warning.message == message


@pytest.mark.parametrize("written", ["755", "0", "00", "+7", "0x1ed", "0x01ED"])
def test_plain_and_hexadecimal_integers_are_fine(tmp_path, written):
    assert load(tmp_path, with_seed(written)).warnings == ()


def test_every_integer_field_and_vars_are_looked_at(tmp_path):
    story = load(tmp_path, MINIMAL + "    steps: 010\ndefaults: {seed: 0o7}\n"
                                     "vars: {list: [-0755, '0755', 1.5]}\n")
    assert [(w.loc, w.message) for w in story.warnings] == [
        (("panels", 0, "steps"), "steps 010 has a leading zero: read as 10 (decimal); YAML 1.1 "
                                 "tools read it as octal 8; write 10"),
        (("defaults", "seed"), "seed 0o7 is read as 7 (octal); YAML 1.1 tools read it as text; "
                               "write 7"),
        (("vars", "list", 0), "-0755 has a leading zero: read as -755 (decimal); YAML 1.1 tools "
                              "read it as octal -493; write -755"),
    ]


def test_what_yaml_1_1_tools_read_is_what_the_warnings_say():
    yaml = pytest.importorskip("yaml")  # PyYAML: YAML 1.1
    assert yaml.safe_load("[0755, 0089, 0_755, 0o755, -0755, 010]") == \
        [493, "0089", 493, "0o755", -493, 8]


def test_pin_writes_plain_decimal(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(with_seed("0755"), encoding="utf-8")
    pin_seed(path, "p1", 493)
    assert "seed: 493\n" in path.read_text("utf-8")
    assert load_story(path).warnings == ()


def test_hundreds_of_warnings_do_not_hide_an_error(tmp_path):
    numbers = ", ".join(["0755"] * (MAX_PROBLEMS + 50))
    text = MINIMAL.replace("version: 1", f"version: 1\nvars: {{n: [{numbers}]}}") + \
        "    seed: -1\n"
    with pytest.raises(StoryError) as info:
        load(tmp_path, text)
    *problems, last = info.value.problems
    assert [p.loc for p in problems if p.severity == "error"] == [("panels", 0, "seed")]
    assert last.message == "... and 150 more problems not shown"


def test_hundreds_of_older_warnings_do_not_hide_an_error(tmp_path):
    (tmp_path / "a.safetensors").touch()
    loras = ", ".join(["{file: a.safetensors, weight: 0}"] * 16)
    chars = "".join(f"  c{i}:\n    loras: [{loras}]\n" for i in range(16))
    cast = ", ".join(f"c{i}" for i in range(16))
    text = (f"version: 1\nmodel: ./missing.safetensors\ncharacters:\n{chars}panels:\n"
            f"  - id: p1\n    prompt: x\n    characters: [{cast}]\n")
    with pytest.raises(StoryError) as info:  # it said "ok", with 200 warnings
        load(tmp_path, text)
    assert any(p.message.startswith("model not found") for p in info.value.problems)
