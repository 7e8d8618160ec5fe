"""`pin_seed` edits like a careful editor (issue 14, class 8): through links, keeping hard links,
mode and owner, refusing a file that changed under it, shared YAML values and read-only files,
and keeping every kind of line ending. No torch; each test is a file edit or two."""

from __future__ import annotations

import os
import stat
import tempfile

import pytest
from conftest import run_cli

from storyboard.errors import UserError
from storyboard.story import edit
from storyboard.story.edit import pin_seed

STORY = """\
version: 1
model: tiny-sdxl
panels:
  - id: p1
    prompt: a cat
  - id: p2
    prompt: a dog
    seed: 5
"""
PINNED = STORY.replace("  - id: p1\n", "  - id: p1\n    seed: 3\n")


@pytest.fixture
def story(tmp_path):
    path = tmp_path / "story.yaml"
    path.write_text(STORY, encoding="utf-8")
    return path


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    yield
    os.umask(old)


def refused(path, panel="p1", seed=3) -> str:
    before = path.read_bytes()
    with pytest.raises(UserError) as info:
        pin_seed(path, panel, seed)
    assert path.read_bytes() == before  # a refusal writes nothing
    return info.value.message


# --- links, mode, owner ------------------------------------------------------------------------


def test_a_symlinked_story_is_edited_where_it_really_is(story, tmp_path):
    (tmp_path / "stories").mkdir()
    link = tmp_path / "stories" / "link.yaml"
    link.symlink_to("../story.yaml")
    pin_seed(link, "p1", 3)
    assert link.is_symlink() and os.readlink(link) == "../story.yaml"
    assert story.read_text("utf-8") == PINNED


def test_a_symlink_loop_is_refused_in_words(tmp_path):
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    with pytest.raises(UserError, match="a.yaml: its symbolic links loop"):
        pin_seed(tmp_path / "a.yaml", "p1", 3)


def test_hard_links_keep_sharing_the_edited_file(story, tmp_path):
    other = tmp_path / "other.yaml"
    os.link(story, other)
    inode = story.stat().st_ino
    pin_seed(story, "p1", 3)
    assert story.stat().st_ino == other.stat().st_ino == inode
    assert other.read_text("utf-8") == PINNED


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o664, 0o600])
def test_the_files_mode_is_kept_whatever_the_umask(story, umask_077, mode):
    story.chmod(mode)
    pin_seed(story, "p1", 3)
    assert stat.S_IMODE(story.stat().st_mode) == mode
    assert story.read_text("utf-8") == PINNED


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="only root may give a file to another user")
def test_the_files_owner_and_group_are_kept(story):
    os.chown(story, 65534, 65534)
    pin_seed(story, "p1", 3)
    st = story.stat()
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert story.read_text("utf-8") == PINNED


def test_a_story_of_another_user_is_rewritten_in_place(story, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: story.stat().st_uid + 1, raising=False)
    inode = story.stat().st_ino  # a rename would make the file ours: write the same inode
    pin_seed(story, "p1", 3)
    assert story.stat().st_ino == inode and story.read_text("utf-8") == PINNED


def test_a_folder_that_takes_no_new_files_gets_an_in_place_rewrite(story, monkeypatch):
    def no_new_files(*args, dir=None, **kwargs):  # as a folder without write permission does
        raise PermissionError(13, "Permission denied", str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", no_new_files)  # works for root too
    pin_seed(story, "p1", 3)
    assert story.read_text("utf-8") == PINNED


def test_a_read_only_story_is_refused_naming_it(story):
    story.chmod(0o444)
    message = refused(story)
    assert f"{story} is read-only (mode 0444)" in message and "chmod u+w" in message
    assert stat.S_IMODE(story.stat().st_mode) == 0o444


# --- a file that changes under pin -------------------------------------------------------------


def test_a_file_saved_between_read_and_write_is_not_overwritten(story, monkeypatch):
    saved = STORY.replace("a dog", "a wet dog")
    validate = edit.validate_doc

    def editor_saves_meanwhile(doc, *args, **kwargs):
        if "seed: 3" in doc.text:  # pin is checking its edit: the other program saves now
            story.write_text(saved, encoding="utf-8")
        return validate(doc, *args, **kwargs)

    monkeypatch.setattr(edit, "validate_doc", editor_saves_meanwhile)
    with pytest.raises(UserError, match="changed while pin was editing it"):
        pin_seed(story, "p1", 3)
    assert story.read_text("utf-8") == saved


# --- shared YAML values ------------------------------------------------------------------------

ALIASED_SEED = """\
version: 1
model: tiny-sdxl
panels:
  - id: p1
    prompt: a cat
    seed: &s 9
  - id: p2
    prompt: a dog
    seed: *s
"""

MERGED = """\
version: 1
model: tiny-sdxl
panels:
  - &base
    id: p1
    prompt: a cat
    seed: 9
  - <<: *base
    id: p2
"""


def test_a_seed_written_through_an_alias_is_refused_with_its_line(story):
    story.write_text(ALIASED_SEED, encoding="utf-8")
    message = refused(story, "p2")
    assert message.startswith(f"{story}:9: panel 'p2' takes its seed from the YAML alias *s")
    assert "anchored on line 6" in message


def test_an_anchored_seed_used_elsewhere_is_refused(story):
    story.write_text(ALIASED_SEED, encoding="utf-8")
    message = refused(story, "p1")
    assert message.startswith(f"{story}:6: the seed of panel 'p1' is the YAML anchor &s, "
                              "used again on line 9")


def test_an_anchored_seed_used_nowhere_else_keeps_its_anchor(story):
    story.write_text(ALIASED_SEED.replace("seed: *s", "seed: 4"), encoding="utf-8")
    assert pin_seed(story, "p1", 3).previous == 9
    assert "    seed: &s 3\n" in story.read_text("utf-8")


def test_a_panel_merged_into_another_is_refused(story):
    story.write_text(MERGED, encoding="utf-8")
    message = refused(story, "p1", 4)
    assert message.startswith(f"{story}:4: panel 'p1' is the YAML anchor &base, used again "
                              "on line 8")


def test_a_seed_inherited_through_a_merge_is_refused(story):
    story.write_text(MERGED, encoding="utf-8")
    message = refused(story, "p2")
    assert message.startswith(f"{story}:8: panel 'p2' gets its seed from this YAML merge")


def test_a_merged_panel_without_an_inherited_seed_gets_its_own(story):
    story.write_text(MERGED.replace("    seed: 9\n", ""), encoding="utf-8")
    pin_seed(story, "p2", 3)
    assert story.read_text("utf-8") == MERGED.replace("    seed: 9\n", "") + "    seed: 3\n"


# --- line endings, BOM, odd values -------------------------------------------------------------


def test_cr_only_line_endings_are_kept_and_the_seed_lands_in_its_panel(story):
    story.write_bytes(STORY.replace("  seed: 5\n", "  caption: wet\n").replace("\n", "\r")
                      .encode())
    result = pin_seed(story, "p1", 3)
    assert result.line == 5
    assert story.read_bytes() == PINNED.replace("  seed: 5\n", "  caption: wet\n") \
        .replace("\n", "\r").encode()


def test_crlf_and_a_bom_are_kept(story):
    story.write_bytes(b"\xef\xbb\xbf" + STORY.replace("\n", "\r\n").encode())
    pin_seed(story, "p1", 3)
    pin_seed(story, "p2", 8)
    expected = PINNED.replace("seed: 5", "seed: 8").replace("\n", "\r\n")
    assert story.read_bytes() == b"\xef\xbb\xbf" + expected.encode()


def test_a_last_line_without_a_line_break_stays_without_one(story):
    story.write_text(STORY + "  - prompt: a bird\n    id: p3", encoding="utf-8")
    pin_seed(story, "p3", 3)
    assert story.read_text("utf-8") == STORY + "  - prompt: a bird\n    id: p3\n    seed: 3"


@pytest.mark.parametrize("empty, pinned", [
    ("seed:", "seed: 3"),
    ("seed: null", "seed: 3"),
    ("seed:   # decide later", "seed: 3   # decide later"),
])
def test_an_empty_seed_is_filled_in(story, empty, pinned):
    story.write_text(STORY.replace("seed: 5", empty), encoding="utf-8")
    result = pin_seed(story, "p2", 3)
    assert result.previous is None and result.line == 8
    assert story.read_text("utf-8") == STORY.replace("seed: 5", pinned)


def test_the_command_line_says_why_in_one_line(story, tmp_path, monkeypatch):
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    story.write_text(ALIASED_SEED, encoding="utf-8")
    result = run_cli("pin", str(story), "p2", "3")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "takes its seed from the YAML alias *s" in result.output
