"""storyboard replaces or deletes only files it wrote (issue 14, class 1; page digests, class 2).

A folder given to `-o` may hold the user's own pages, PDFs, pictures and links. Each test puts
something of the user's where a command would write, and checks that the command refuses
before any work (exit 2, the file named) or leaves it alone, and that storyboard's own files,
even after a build killed before its manifest, stay replaceable.
"""

from __future__ import annotations

import json

import pytest
from conftest import TWO_PANELS, run_cli
from PIL import Image

from storyboard.commands import build, clean, reroll
from storyboard.errors import UserError
from storyboard.options import RuntimeOptions

QUIET = RuntimeOptions(progress=False)


@pytest.fixture
def story(two_panel_story):
    return two_panel_story


def users_png(path, color=(200, 30, 30)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), color).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("name", ["page-1.png", "story.pdf", "story.cbz", "manifest.json",
                                  "panels/a.png"])
def test_a_build_refuses_a_folder_holding_the_users_own_file(story, tmp_path, fresh_cache,
                                                             name):
    out = tmp_path / "mine"
    target = out / name
    if name.endswith(".png"):
        mine = users_png(target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        mine = b"%PDF-1.4 my own thesis\n%%EOF\n" if name.endswith(".pdf") else \
            b'{"my": "settings"}\n'
        if name.endswith(".cbz"):  # a comic of the user's own, from another program
            import io
            import zipfile

            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as archive:
                archive.writestr("001.png", users_png(tmp_path / "scan.png"))
            mine = buf.getvalue()
        target.write_bytes(mine)
    result = run_cli("build", "-q", str(story), "-o", str(out))
    assert result.exit_code == 2, result.output
    assert str(target) in result.output and "did not write" in result.output
    assert target.read_bytes() == mine
    assert not list((fresh_cache / "panels").rglob("*.png"))  # refused before any render


def test_every_file_in_the_way_is_named_at_once(story, tmp_path):
    out = tmp_path / "mine"
    users_png(out / "page-1.png")
    (out / "story.pdf").write_bytes(b"%PDF-1.4\n%%EOF\n")
    with pytest.raises(UserError) as err:
        build(story, out, options=QUIET)
    assert "page-1.png" in err.value.message and "story.pdf" in err.value.message


def test_a_link_in_the_way_is_refused_and_its_target_untouched(story, tmp_path):
    out = tmp_path / "out"
    precious = users_png(tmp_path / "holiday.png")
    (out / "panels").mkdir(parents=True)
    (out / "panels" / "a.png").symlink_to(tmp_path / "holiday.png")
    with pytest.raises(UserError, match="did not write"):
        build(story, out, options=QUIET)
    assert (tmp_path / "holiday.png").read_bytes() == precious
    assert (out / "panels" / "a.png").is_symlink()


def test_the_users_files_beside_the_outputs_are_left_alone(story, tmp_path):
    out = tmp_path / "out"
    notes = out / "notes.txt"
    out.mkdir()
    notes.write_text("mine")
    mine = users_png(out / "page-7.png")  # a page number the story never reaches
    assert build(story, out, options=QUIET).exit_code == 0
    assert build(story, out, options=QUIET, force=True).exit_code == 0
    assert notes.read_text() == "mine" and (out / "page-7.png").read_bytes() == mine


def test_only_storyboards_own_stale_pages_are_swept(story, tmp_path):
    many = story.with_name("many.yaml")
    many.write_text(TWO_PANELS.replace("defaults:", "layout: {panels_per_page: 1}\ndefaults:"))
    out = tmp_path / "out"
    build(many, out, options=QUIET)
    assert (out / "page-2.png").is_file()
    mine = users_png(out / "page-3.png")
    build(story, out, options=QUIET)  # one page now: page-2 was storyboard's, page-3 is not
    assert not (out / "page-2.png").exists()
    assert (out / "page-3.png").read_bytes() == mine


def test_a_build_killed_before_its_manifest_resumes(story):
    """Pages and the PDF carry storyboard's mark, so without a manifest they are still its
    own: a build killed between writing them and writing the manifest is not refused next."""
    build(story, options=QUIET)
    out = story.with_name("story.out")
    (out / "manifest.json").unlink()
    report = build(story, options=QUIET)
    assert report.exit_code == 0 and (out / "manifest.json").is_file()


def test_an_edited_page_is_not_overwritten(story):
    build(story, options=QUIET)
    out = story.with_name("story.out")
    edited = users_png(out / "page-1.png", color=(1, 2, 3))  # saved by an image editor
    with pytest.raises(UserError, match="page-1.png"):
        build(story, options=QUIET, force=True)
    assert (out / "page-1.png").read_bytes() == edited


def test_pages_that_differ_from_the_manifest_are_composed_again(story):
    """Another process (or a person with storyboard) left a different page under the manifest:
    its digest no longer matches, so the build composes the page instead of trusting it."""
    other = story.with_name("other.yaml")
    other.write_text(TWO_PANELS.replace("a cat", "a bird"))
    out = story.with_name("story.out")
    build(story, options=QUIET)
    good = (out / "page-1.png").read_bytes()
    build(other, out, options=QUIET)
    foreign = (out / "page-1.png").read_bytes()
    manifest = (out / "manifest.json").read_text()
    build(story, options=QUIET)
    (out / "manifest.json").write_text(manifest.replace(
        json.loads(manifest)["pages_key"],
        json.loads((out / "manifest.json").read_text())["pages_key"]))
    (out / "page-1.png").write_bytes(foreign)  # the manifest says this story's page is there
    build(story, options=QUIET)
    assert (out / "page-1.png").read_bytes() == good


def test_clean_removes_only_storyboards_stale_panels(story, fresh_cache):
    build(story, options=QUIET)
    panels = story.with_name("story.out") / "panels"
    mine = users_png(panels / "sketch.png")
    story.write_text(TWO_PANELS.replace("  - {id: b, prompt: a dog, seed: 2}\n", ""))
    report = clean([story])
    assert panels / "b.png" in report.stale_files and not (panels / "b.png").exists()
    assert (panels / "sketch.png").read_bytes() == mine


def test_reroll_and_rerender_refuse_the_users_files(story, tmp_path, fresh_cache):
    out = story.with_name("story.out")
    sheet = users_png(out / "rerolls" / "a" / "sheet.png")
    with pytest.raises(UserError, match="sheet.png"):
        reroll(story, "a", [5], options=QUIET)
    assert (out / "rerolls" / "a" / "sheet.png").read_bytes() == sheet

    build(story, options=QUIET)
    panel = out / "panels" / "a.png"
    beside = users_png(out / "panels" / "a.rerender.png")
    result = run_cli("render", "--from-png", str(panel))
    assert result.exit_code == 2 and "a.rerender.png" in result.output
    assert (out / "panels" / "a.rerender.png").read_bytes() == beside


def test_a_folder_built_before_digests_and_marks_is_still_storyboards(story):
    """Output folders from storyboard before manifest schema 2 have pages without a mark and
    a manifest listing file names only: those names stay storyboard's to replace."""
    from storyboard.output.ownership import PAGE_MARK

    build(story, options=QUIET)
    out = story.with_name("story.out")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 1
    del manifest["digests"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    with Image.open(out / "page-1.png") as im:  # an old page: no mark
        assert PAGE_MARK in im.info
        im.convert("RGB").save(out / "page-1.png")
    report = build(story, options=QUIET, force=True)
    assert report.exit_code == 0
    with Image.open(out / "page-1.png") as im:
        assert PAGE_MARK in im.info
