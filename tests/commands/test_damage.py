"""Damaged files where storyboard keeps its work: a truncated, empty or foreign cache entry,
or a panel file in the output folder cut short. A build notices, says so, renders again, and
`--force` always recovers. (Part of the reliability work, issue 14.)"""

from __future__ import annotations

import pytest

from conftest import run_cli
from storyboard.commands import build, reroll
from storyboard.options import RuntimeOptions
from storyboard.output.cache import PanelCache, cache_key

pytest.importorskip("torch")

QUIET = RuntimeOptions(progress=False)


@pytest.fixture
def story(two_panel_story):
    return two_panel_story


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "garbage":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\xff" * 200)
    elif how == "another panel":  # a sound PNG, but not this entry's
        other = sorted(p for p in path.parent.parent.rglob("*.png") if p != path)[0]
        path.write_bytes(other.read_bytes())


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "another panel"])
def test_a_damaged_cache_entry_is_rendered_again_with_a_warning(story, fresh_cache, how):
    first = build(story, options=QUIET)
    job = first.outcomes[0].job
    entry = PanelCache(fresh_cache).path(cache_key(job.hash))
    good = entry.read_bytes()
    damage(entry, how)
    events = []
    report = build(story, options=QUIET, on_event=events.append)
    assert {o.job.panel: o.status for o in report.outcomes} == {"a": "rendered", "b": "cached"}
    (warning,) = [e["message"] for e in events if e["event"] == "warning"]
    assert warning.startswith("panel a: its cached image was damaged")
    assert entry.read_bytes() == good  # the same pixels and record as the first time
    assert (story.with_name("story.out") / "page-1.png").is_file()


def test_a_damaged_panel_in_the_output_folder_is_written_again(story):
    build(story, options=QUIET)
    panel = story.with_name("story.out") / "panels" / "a.png"
    good = panel.read_bytes()
    damage(panel, "truncated")
    report = build(story, options=QUIET)
    assert {o.status for o in report.outcomes} == {"cached"}
    assert panel.read_bytes() == good


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_force_always_recovers(story, fresh_cache, how):
    build(story, options=QUIET)
    for entry in (fresh_cache / "panels").rglob("*.png"):
        damage(entry, how)
    for panel in (story.with_name("story.out") / "panels").glob("*.png"):
        damage(panel, how)
    result = run_cli("build", "-q", "--force", "--only", "a", str(story))
    assert result.exit_code == 0, result.output
    # "b" was not selected: its damaged entry is reported and shown as missing, not a crash.
    report = build(story, options=QUIET)
    assert {o.job.panel: o.status for o in report.outcomes} == {"a": "cached", "b": "rendered"}


def test_a_damaged_reroll_candidate_is_rendered_again(story, fresh_cache):
    reroll(story, "a", [100], options=QUIET)
    (entry,) = [p for p in (fresh_cache / "panels").rglob("*.png")]
    damage(entry, "truncated")
    events = []
    again = reroll(story, "a", [100], options=QUIET, on_event=events.append)
    assert [o.status for _, o in again.candidates] == ["rendered"]
    assert any(e["event"] == "warning" and "seed 100" in e["message"] for e in events)


def test_what_a_kill_left_behind_is_swept(story, fresh_cache):
    """A kill between an atomic write's temporary file and its rename leaves the temporary
    file; a model build killed half-way leaves its folder. The next build removes its own
    folder's, `clean` the cache's; a file of the user's named almost alike stays."""
    build(story, options=QUIET)
    out = story.with_name("story.out")
    left = [out / ".page-1.png.k3x9_a2b.tmp", out / "panels" / ".a.png.0a1b2c3d.tmp",
            fresh_cache / "panels" / "ab" / ".ab12.png.zz99yy88.tmp",
            fresh_cache / "roots" / ".0123.json.abcdefgh.tmp"]
    for path in left:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    half_model = fresh_cache / "loras" / ".tiny-lora.q1w2e3r4.tmp"
    half_model.mkdir(parents=True)
    (half_model / "weights.bin").write_bytes(b"half")
    mine = [out / "page-1.png.tmp", out / ".hidden-notes.tmp", out / "panels" / "draft.tmp"]
    for path in mine:
        path.write_text("mine")
    build(story, options=QUIET)
    assert not any(p.exists() for p in left[:2]) and all(p.exists() for p in left[2:])
    result = run_cli("clean")
    assert result.exit_code == 0 and "3 temporary file(s)" in result.output
    assert not any(p.exists() for p in left) and not half_model.exists()
    assert all(p.read_text() == "mine" for p in mine)
