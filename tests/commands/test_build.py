"""`storyboard build` end to end on CPU with the tiny model: cache, pages, rerolls, pin, clean."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from conftest import ROOT, run_cli  # noqa: E402
from storyboard.commands import build, clean, parse_seeds, reroll  # noqa: E402
from storyboard.errors import UserError  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.output.cache import PanelCache  # noqa: E402

QUIET = RuntimeOptions(progress=False)
ONE_BY_ONE = RuntimeOptions(progress=False, batch_size=1)
# How long a test waits for something that must happen (far more than it takes): a wait
# that runs out is a failure, never a pass.
PATIENCE = 60

STORY = """\
# A test story. Comments must survive `storyboard pin`.
version: 1
title: 测试 Story
model: tiny-sdxl
defaults:
  steps: 2
  width: 64
  height: 64     # small and fast
style:
  prefix: watercolor
panels:
  - id: one
    prompt: a cat on a sofa
    caption: 小猫在沙发上睡觉，窗外下着雨。
  - id: two
    prompt: 'a dog in the rain'   # quoted on purpose
    seed: 7
    caption: The dog waited.
  - {id: three, prompt: a bird, caption: 鸟}
layout:
  columns: 2
  cell_width: 64
  font_size: 12
"""


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """Built-in models, built once for the session and shared by every test's own cache."""
    from storyboard.engine import builtin as tiny

    folder = tmp_path_factory.mktemp("models-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("STORYBOARD_CACHE", str(folder))
    tiny.builtin_folder("tiny-sdxl")
    mp.undo()
    return folder / "models"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch, models_dir):
    """A fresh panel cache per test (the models in it are the session's)."""
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "models").symlink_to(models_dir)
    monkeypatch.setenv("STORYBOARD_CACHE", str(folder))
    return folder


@pytest.fixture
def story(tmp_path, cache_dir):
    path = tmp_path / "story.yaml"
    path.write_text(STORY, encoding="utf-8")
    return path


def run_build(story: Path, options: RuntimeOptions = QUIET, **kw):
    return build(story, options=options, **kw)


def statuses(report) -> dict[str, str]:
    return {o.job.panel: o.status for o in report.outcomes}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


# --- the incremental build -----------------------------------------------------------------


def test_first_build_renders_all_and_writes_everything(story):
    report = run_build(story)
    assert statuses(report) == {"one": "rendered", "two": "rendered", "three": "rendered"}
    out = story.with_name("story.out")
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["one.png", "three.png",
                                                                    "two.png"]
    assert (out / "page-1.png").is_file() and (out / "story.pdf").read_bytes()[:5] == b"%PDF-"
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert manifest["schema_version"] == 2
    assert manifest["summary"]["rendered"] == 3 and manifest["summary"]["model_loaded"]
    assert [p["panel"] for p in manifest["panels"]] == ["one", "two", "three"]
    assert manifest["versions"]["torch"] and manifest["versions"]["diffusers"]
    assert manifest["model"]["ref"] == "tiny-sdxl"
    # The CBZ is written with the pages and recorded like them (digest, pages list).
    assert {"page-1.png", "story.pdf", "story.cbz"} <= set(manifest["pages"])
    assert manifest["digests"]["story.cbz"] == hashlib.sha256(
        (out / "story.cbz").read_bytes()).hexdigest()
    assert report.exit_code == 0
    assert not list(out.rglob("*.tmp")), "no temporary files left behind"


def test_pages_begin_once_the_model_is_loaded_and_report_their_wait(story, monkeypatch):
    """The page composer's first work (fonts, libraries) waits until the model is loaded, so
    it does not slow the loading; the "pages" event says where the wait after the last panel
    went; each panel's copy in panels/ is made as it lands."""
    from storyboard.output import compose

    seen: list = []
    begin = compose.PageComposer.begin
    monkeypatch.setattr(compose.PageComposer, "begin",
                        lambda self: seen.append("begin") or begin(self))
    report = run_build(story, on_event=lambda e: seen.append(e["event"]))
    assert report.exit_code == 0
    events = [e for e in seen if e not in ("step", "batch_start")]
    assert events[:3] == ["plan", "begin", "model_loaded"]  # begun as the model is loaded
    assert events[-2:] == ["pages", "done"] and events.count("panel") == 3
    out = story.with_name("story.out")
    assert sorted(p.name for p in (out / "panels").iterdir()) == ["one.png", "three.png",
                                                                    "two.png"]


def test_manifest_says_which_speedups_ran(story, monkeypatch):
    import storyboard.plan.speed as speed

    # channels_last is CPU-safe; on a GPU the list comes from plan.speed.choose_speedups.
    monkeypatch.setattr(speed, "choose_speedups",
                        lambda **k: (speed.Speedup.CHANNELS_LAST,))
    report = run_build(story)
    assert report.speedups == ["channels_last"] and report.render.device == "cpu"
    manifest = json.loads((story.with_name("story.out") / "manifest.json").read_text("utf-8"))
    assert manifest["runtime"]["speedups"] == ["channels_last"]


def test_second_build_renders_nothing_and_loads_no_model(story, monkeypatch):
    run_build(story)
    import storyboard.engine.session as session

    def no_model(*args, **kwargs):
        raise AssertionError("a build with nothing changed must not load a model")

    monkeypatch.setattr(session, "load_model", no_model)
    report = run_build(story)
    assert statuses(report) == {"one": "cached", "two": "cached", "three": "cached"}
    assert not report.model_loaded


def test_noop_build_does_not_even_import_torch(story):
    run_build(story)
    code = ("import sys\nfrom storyboard.commands import build\n"
            f"r = build({str(story)!r})\n"
            "print(r.count('cached'), 'torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ, check=True)
    assert out.stdout.split() == ["3", "False", "False"], out.stderr


def test_prompt_edit_renders_exactly_that_panel(story):
    first = run_build(story)
    before = {o.job.panel: pixels(o.path) for o in first.outcomes}
    story.write_text(STORY.replace("a dog in the rain", "a dog in the snow"), encoding="utf-8")
    report = run_build(story)
    assert statuses(report) == {"one": "cached", "two": "rendered", "three": "cached"}
    after = {o.job.panel: pixels(o.path) for o in report.outcomes}
    assert np.array_equal(before["one"], after["one"])
    assert not np.array_equal(before["two"], after["two"])


def test_style_edit_rerenders_every_panel(story):
    run_build(story)
    story.write_text(STORY.replace("prefix: watercolor", "prefix: oil painting"), "utf-8")
    assert set(statuses(run_build(story)).values()) == {"rendered"}


def test_caption_edit_renders_nothing_but_changes_the_page(story):
    run_build(story)
    page = story.with_name("story.out") / "page-1.png"
    before = page.read_bytes()
    story.write_text(STORY.replace("The dog waited.", "The dog waited and waited, patiently."),
                     encoding="utf-8")
    report = run_build(story)
    assert set(statuses(report).values()) == {"cached"}
    assert page.read_bytes() != before


def test_layout_edit_renders_nothing(story):
    run_build(story)
    story.write_text(STORY.replace("columns: 2", "columns: 3"), encoding="utf-8")
    report = run_build(story)
    assert set(statuses(report).values()) == {"cached"}
    with Image.open(story.with_name("story.out") / "page-1.png") as im:
        assert im.width > 3 * 64


def test_cache_is_shared_across_stories(story, tmp_path):
    run_build(story)
    other = tmp_path / "other" / "copy.yaml"
    other.parent.mkdir()
    # Renaming keeps a panel's image when its seed is explicit (a derived seed follows the id).
    other.write_text(STORY.replace("id: two", "id: dos"), encoding="utf-8")
    report = build(other, options=QUIET)
    assert set(statuses(report).values()) == {"cached"}
    from storyboard.output.pnginfo import read_panel_png

    _, record = read_panel_png(other.with_name("copy.out") / "panels" / "dos.png")
    assert record.panel == "dos" and record.story == str(other.resolve())


def test_force_and_only(story):
    run_build(story)
    report = run_build(story, only=["two"], force=True)
    assert statuses(report) == {"one": "cached", "two": "rendered", "three": "cached"}
    with pytest.raises(UserError, match="no panel named 'tow'"):
        run_build(story, only=["tow"])


def test_only_on_a_fresh_story_leaves_placeholders(story):
    report = run_build(story, only=["one"])
    assert statuses(report) == {"one": "rendered", "two": "missing", "three": "missing"}
    assert report.exit_code == 0
    assert (story.with_name("story.out") / "page-1.png").is_file()


def test_cli_build_summary_and_exit_code(story):
    result = run_cli("build", "-q", str(story))
    assert result.exit_code == 0, result.output
    result = run_cli("build", str(story))
    assert "3 panels: 0 rendered, 3 cached" in result.output
    bad = story.with_name("bad.yaml")
    bad.write_text(STORY.replace("steps: 2", "steps: two"), encoding="utf-8")
    result = run_cli("build", str(bad))
    assert result.exit_code == 2 and "bad.yaml:6:10: defaults.steps" in result.output


def test_failed_panel_gives_exit_code_1_and_the_rest_is_written(story, monkeypatch):
    import storyboard.engine.runner as runner

    real = runner._call

    def flaky(state, batch, on_event):
        if any(job.panel == "two" for job in batch.jobs):
            raise RuntimeError("simulated failure")
        return real(state, batch, on_event)

    monkeypatch.setattr(runner, "_call", flaky)
    report = run_build(story, ONE_BY_ONE)
    assert statuses(report) == {"one": "rendered", "two": "failed", "three": "rendered"}
    assert report.exit_code == 1
    assert (story.with_name("story.out") / "page-1.png").is_file()
    monkeypatch.setattr(runner, "_call", real)
    assert statuses(run_build(story)) == {"one": "cached", "two": "rendered", "three": "cached"}


def test_interrupted_build_resumes_to_the_same_outputs(story, tmp_path):
    """Kill a build after its first panel; the next build finishes it, and the result equals
    an uninterrupted build's (rendered one panel at a time, so batches cannot differ)."""
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "storyboard.cli", "build", "--json", "--batch-size", "1",
           str(story)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env, cwd=ROOT)
    for line in proc.stdout:
        if json.loads(line).get("event") == "panel":
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL

    resumed = run_build(story, ONE_BY_ONE)
    assert sorted(statuses(resumed).values()).count("cached") >= 1
    assert "rendered" in statuses(resumed).values()

    env["STORYBOARD_CACHE"] = str(tmp_path / "reference-cache")
    reference = tmp_path / "reference.yaml"
    reference.write_text(STORY, encoding="utf-8")
    subprocess.run([sys.executable, "-m", "storyboard.cli", "build", "-q", "--batch-size", "1",
                    str(reference)], env=env, check=True, cwd=ROOT)
    for panel in ("one", "two", "three"):
        a = pixels(story.with_name("story.out") / "panels" / f"{panel}.png")
        b = pixels(tmp_path / "reference.out" / "panels" / f"{panel}.png")
        assert np.array_equal(a, b), panel
    a = pixels(story.with_name("story.out") / "page-1.png")
    b = pixels(tmp_path / "reference.out" / "page-1.png")
    assert np.array_equal(a, b)


class Writes:
    """Panel PNG encoding under the test's control: the write of a panel named in ``hold``
    waits until the test releases it (or PATIENCE runs out, which fails the test). ``log``
    records, in order, each write's end and the events the test notes."""

    def __init__(self, monkeypatch, hold: dict[str, threading.Event] | None = None,
                 delay: float = 0.0):
        import storyboard.output.pnginfo as pnginfo

        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.hold = hold or {}
        self.timed_out: list[str] = []
        self.written: dict[str, threading.Event] = {}  # set when that panel's write ends
        self.real = pnginfo.panel_png_bytes
        real = self.real

        def write(image, job, **kw):
            gate = self.hold.get(job.panel)
            if gate is not None and not gate.wait(PATIENCE):
                self.timed_out.append(job.panel)
            if delay:
                threading.Event().wait(delay)  # a slow disk, for the back-pressure test
            data = real(image, job, **kw)
            self.note("written", job.panel)
            self.when_written(job.panel).set()
            return data

        monkeypatch.setattr(pnginfo, "panel_png_bytes", write)

    def note(self, kind: str, panel: str) -> None:
        with self.lock:
            self.log.append((kind, panel))

    def index(self, kind: str, panel: str) -> int:
        return self.log.index((kind, panel))

    def when_written(self, panel: str) -> threading.Event:
        with self.lock:
            return self.written.setdefault(panel, threading.Event())


def test_png_writes_overlap_the_next_batch_and_events_keep_story_order(story, monkeypatch):
    """Panel "one"'s write is held until panel "two" is rendering: it only finishes if
    rendering goes on while a write is under way."""
    two_renders = threading.Event()
    writes = Writes(monkeypatch, hold={"one": two_renders})

    def watch(event):
        if event["event"] == "step" and event["panels"] == ["two"]:
            two_renders.set()
        if event["event"] == "panel":
            writes.note("panel", event["panel"])

    report = build(story, options=ONE_BY_ONE, on_event=watch)
    assert statuses(report) == {"one": "rendered", "two": "rendered", "three": "rendered"}
    assert writes.timed_out == []  # "two" rendered while "one" was being written
    # Each panel is announced once its file is in the cache, in story order.
    announced = [panel for kind, panel in writes.log if kind == "panel"]
    assert announced == ["one", "two", "three"]
    assert all(writes.index("written", p) < writes.index("panel", p) for p in announced)


def test_panels_are_written_side_by_side_and_announced_in_order(story, monkeypatch):
    """With two writers, panel "one"'s write is held until "two" is written: it finishes
    only if the writes run side by side. The events still come in story order."""
    import storyboard.commands.rendering as rendering

    monkeypatch.setattr(rendering, "PNG_WRITERS", 2)
    writes = Writes(monkeypatch)
    writes.hold["one"] = writes.when_written("two")
    report = build(story, options=ONE_BY_ONE, on_event=lambda e: writes.note(
        "panel", e["panel"]) if e["event"] == "panel" else None)
    assert statuses(report) == {"one": "rendered", "two": "rendered", "three": "rendered"}
    assert writes.timed_out == []
    assert writes.index("written", "two") < writes.index("written", "one")
    assert [panel for kind, panel in writes.log if kind == "panel"] == ["one", "two", "three"]


def test_interrupting_a_build_keeps_the_panels_being_written(story, monkeypatch):
    """Ctrl-C while panel "one" is still being encoded (its write is held until the interrupt
    is on its way): the write finishes before the build stops, and the next build finds the
    panel in the cache."""
    import storyboard.output.pnginfo as pnginfo

    interrupted = threading.Event()
    writes = Writes(monkeypatch, hold={"one": interrupted})
    announced = []

    def interrupt(event):
        if event["event"] == "panel":
            announced.append(event["panel"])
        if event["event"] == "step" and event["panels"] == ["two"]:
            interrupted.set()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(story, options=ONE_BY_ONE, on_event=interrupt)
    assert writes.log == [("written", "one")] and writes.timed_out == []
    assert announced == ["one"]  # its file exists, so the user is told
    monkeypatch.setattr(pnginfo, "panel_png_bytes", writes.real)
    assert statuses(run_build(story)) == {"one": "cached", "two": "rendered",
                                          "three": "rendered"}


def test_a_panel_is_announced_while_the_next_batch_renders(story, monkeypatch):
    """Not held back until the next batch is done: panel "one"'s write is held until "two"
    starts rendering, and the first step of "two" waits for that write; "one" is then
    announced among the later steps of "two"."""
    two_started = threading.Event()
    writes = Writes(monkeypatch, hold={"one": two_started})
    written_one = writes.when_written("one")

    def watch(event):
        if event["event"] == "panel":
            writes.note("panel", event["panel"])
        if event["event"] == "step":
            writes.note("step", f"{event['panels'][0]}-{event['step']}")
            if event["panels"] == ["two"] and event["step"] == 1:
                two_started.set()
                assert written_one.wait(PATIENCE)

    build(story, options=ONE_BY_ONE, on_event=watch)
    # The fixture's panels take 2 steps: announced after step 1 of "two", before step 2.
    assert writes.index("step", "two-1") < writes.index("panel", "one") \
        < writes.index("step", "two-2")


def test_rendering_waits_when_the_writer_falls_behind(story, monkeypatch):
    """With room for one unannounced panel, a batch never starts while more rendered panels
    than that wait for the writer (every write here is slower than rendering a panel, so
    without the limit panel "three" would start with two panels unwritten)."""
    import storyboard.commands.rendering as rendering

    monkeypatch.setattr(rendering, "MAX_PENDING_WRITES", 1)
    writes = Writes(monkeypatch, delay=0.3)
    rendered_before = {"one": 0, "two": 1, "three": 2}
    unwritten = []

    def watch(event):
        if event["event"] == "step":
            with writes.lock:
                written = sum(kind == "written" for kind, _ in writes.log)
            unwritten.append(rendered_before[event["panels"][0]] - written)

    build(story, options=ONE_BY_ONE, on_event=watch)
    assert unwritten and max(unwritten) <= 1

def test_a_failed_write_stops_the_build_before_the_next_batch(story, monkeypatch):
    def full(self, key, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PanelCache, "put", full)
    started = []
    with pytest.raises(OSError, match="No space left"):
        build(story, options=ONE_BY_ONE,
              on_event=lambda e: started.append(e["panels"][0]) if e["event"] == "step" else None)
    assert "three" not in started


# --- reroll, pin, clean --------------------------------------------------------------------


def test_parse_seeds():
    assert parse_seeds("100-103") == [100, 101, 102, 103]
    assert parse_seeds("1,5,9,5") == [1, 5, 9]
    assert parse_seeds("1-2,7") == [1, 2, 7]
    for bad in ("", "a-b", "5-1", "0-1000", "-3", "١٠٠", "１２"):  # not ASCII digits
        with pytest.raises(UserError):
            parse_seeds(bad)


def test_reroll_renders_candidates_and_leaves_the_page_alone(story):
    run_build(story)
    out = story.with_name("story.out")
    page = (out / "page-1.png").read_bytes()
    report = reroll(story, "one", [100, 101, 102], options=QUIET)
    assert [seed for seed, _ in report.candidates] == [100, 101, 102]
    assert {o.status for _, o in report.candidates} == {"rendered"}
    files = sorted(p.name for p in (out / "rerolls" / "one").iterdir())
    assert files == ["seed-100.png", "seed-101.png", "seed-102.png", "sheet.png"]
    assert (out / "page-1.png").read_bytes() == page
    images = [pixels(out / "rerolls" / "one" / f) for f in files[:3]]
    assert not np.array_equal(images[0], images[1])
    again = reroll(story, "one", [101, 102, 103], options=QUIET)
    assert [o.status for _, o in again.candidates] == ["cached", "cached", "rendered"]


def test_pin_keeps_the_file_byte_identical_except_the_seed(story):
    original = story.read_bytes()
    result = run_cli("pin", str(story), "two", "101")
    assert result.exit_code == 0, result.output
    assert "panel two now uses seed 101 (was 7)" in result.output
    assert story.read_bytes() == original.replace(b"seed: 7\n", b"seed: 101\n")

    result = run_cli("pin", str(story), "one", "55")  # no seed yet: added after `id`
    assert result.exit_code == 0, result.output
    expected = original.replace(b"seed: 7\n", b"seed: 101\n").replace(
        b"  - id: one\n", b"  - id: one\n    seed: 55\n")
    assert story.read_bytes() == expected

    run_cli("pin", str(story), "three", "9")  # a flow mapping
    assert b"  - {id: three, seed: 9, prompt: a bird, caption: \xe9\xb8\x9f}\n" in \
        story.read_bytes()
    assert run_cli("validate", str(story)).exit_code == 0


def test_pin_keeps_crlf_and_bom(tmp_path, cache_dir):
    path = tmp_path / "crlf.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + STORY.replace("\n", "\r\n").encode("utf-8"))
    assert run_cli("pin", str(path), "one", "3").exit_code == 0
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n    seed: 3\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_pin_refuses_unknown_panels_and_bad_seeds(story):
    result = run_cli("pin", str(story), "tow", "3")
    assert result.exit_code == 2 and "did you mean 'two'" in result.output
    result = run_cli("pin", str(story), "two", "-1")
    assert result.exit_code == 2
    assert story.read_text("utf-8") == STORY


def test_reroll_then_pin_then_build_uses_the_candidate(story):
    run_build(story)
    reroll(story, "one", [100, 101], options=QUIET)
    result = run_cli("pin", str(story), "one", "101")
    assert "already rendered" in result.output
    report = run_build(story)
    assert set(statuses(report).values()) == {"cached"}
    out = story.with_name("story.out")
    assert np.array_equal(pixels(out / "panels" / "one.png"),
                          pixels(out / "rerolls" / "one" / "seed-101.png"))


def test_clean_removes_what_no_story_needs(story, cache_dir):
    run_build(story)
    cache = PanelCache(cache_dir)
    assert len(cache.keys()) == 3
    story.write_text(STORY.replace("a bird", "a parrot"), encoding="utf-8")
    run_build(story)
    assert len(cache.keys()) == 4
    dry = clean([], dry_run=True)
    assert dry.removed == 1 and len(cache.keys()) == 4
    report = clean([])
    assert report.removed == 1 and report.freed > 0 and len(cache.keys()) == 3
    assert set(statuses(run_build(story)).values()) == {"cached"}

    story.unlink()  # a story that is gone needs nothing
    assert clean([]).removed == 3 and cache.keys() == set()


def test_clean_removes_font_subsets_no_story_embeds(story, cache_dir):
    """The PDF's font subsets (cache/fonts) of a story's earlier text go; those its PDF
    embeds now stay; files storyboard did not write there are never touched."""
    from storyboard.output.pdf import truetype_subset

    truetype_subset.cache_clear()  # made in this process for another test's cache: not here
    fonts = cache_dir / "fonts"
    run_build(story)
    first = sorted(p.name for p in fonts.glob("*.ttf"))
    assert len(first) == 2  # Regular and Bold
    (fonts / "mine.ttf").write_bytes(b"a font of the user's own")
    (fonts / ("0" * 64 + ".otf")).write_bytes(b"not a name storyboard writes")
    assert clean([]).fonts == []
    story.write_text(STORY.replace("The dog waited.", "The dog waited - Zzz!"),
                     encoding="utf-8")
    run_build(story)
    assert len(list(fonts.glob("*.ttf"))) == 5
    dry = clean([], dry_run=True)
    assert sorted(p.name for p in dry.fonts) == first and len(list(fonts.glob("*.ttf"))) == 5
    result = run_cli("clean")
    assert result.exit_code == 0 and "2 font subset(s)" in result.output
    now = sorted(p.name for p in fonts.glob("[0-9a-f]*.ttf"))
    assert len(now) == 2 and not set(now) & set(first)
    stamps = {p: p.stat().st_mtime_ns for p in fonts.glob("*.ttf")}
    run_build(story)  # the PDF is written with the subsets kept: none made again
    assert {p: p.stat().st_mtime_ns for p in fonts.glob("*.ttf")} == stamps
    story.unlink()  # a story that is gone needs none
    assert len(clean([]).fonts) == 2
    assert sorted(p.name for p in fonts.iterdir() if not p.name.endswith(".metrics.json")) \
        == ["0" * 64 + ".otf", "mine.ttf"]


def test_clean_removes_measurements_of_fonts_that_changed(story, cache_dir):
    """The fonts' kept measurements (output/fonts.py) of a story's font file as it was go
    once the file has changed; the built-in fonts' and the story's font's as it is now stay;
    files storyboard did not write there are never touched."""
    import shutil

    from storyboard.output.glyphs import emoji_font

    own = story.with_name("own.ttf")
    shutil.copyfile(emoji_font(), own)
    story.write_text(STORY.replace("  font_size: 12\n", "  font_size: 12\n  font: own.ttf\n"),
                     encoding="utf-8")
    fonts = cache_dir / "fonts"
    run_build(story)
    before = {p.name for p in fonts.glob("*.metrics.json")}
    assert before  # the story's font, and the emoji font it falls back to
    (fonts / "mine.metrics.json").write_text("{}")  # not a name storyboard writes
    assert clean([]).metrics == []
    os.utime(own, ns=(1, 1))  # the font file changed: measured again, under a new key
    story.write_text(story.read_text("utf-8").replace("The dog waited.", "The dog waited!"),
                     encoding="utf-8")  # (pages composed again)
    from storyboard.output.pages import load_font

    load_font.cache_clear()  # as in the next process (this one keeps its fonts loaded)
    run_build(story)
    after = {p.name for p in fonts.glob("[0-9a-f]*.metrics.json")}
    assert len(after - before) == 1
    import pathlib

    real_unlink = pathlib.Path.unlink

    def refuse(path, *args, **kwargs):  # a file clean cannot remove is not reported removed
        raise PermissionError(13, "Permission denied", str(path))

    pathlib.Path.unlink = refuse
    try:
        assert clean([]).metrics == [] and clean([]).freed == 0
    finally:
        pathlib.Path.unlink = real_unlink
    report = clean([])
    (gone,) = [p.name for p in report.metrics]
    assert gone in before  # the font file as it was
    assert {p.name for p in fonts.glob("*.metrics.json")} == \
        after - {gone} | {"mine.metrics.json"}
    result = run_cli("clean", "--dry-run")
    assert result.exit_code == 0 and "measurement" not in result.output  # nothing more to go


def test_clean_keeps_reroll_candidates_rendered_with_a_dtype(story, cache_dir):
    """A candidate rendered under --dtype is cached under a key of its own (hash + dtype);
    `clean` must keep that entry while the candidate's file is there."""
    fp32 = RuntimeOptions(progress=False, dtype="fp32")
    run_build(story, fp32)
    report = reroll(story, "one", [100, 101], options=fp32)
    assert {o.status for _, o in report.candidates} == {"rendered"}
    cache = PanelCache(cache_dir)
    before = cache.keys()
    assert len(before) == 5
    assert clean([story]).removed == 0 and cache.keys() == before
    again = reroll(story, "one", [100, 101], options=fp32)
    assert {o.status for _, o in again.candidates} == {"cached"}
    # Once the candidates are deleted, the next build lets them go.
    for png in (story.with_name("story.out") / "rerolls" / "one").glob("seed-*.png"):
        png.unlink()
    run_build(story, fp32)
    assert clean([story]).removed == 2


def test_clean_tidies_the_output_folder(story):
    run_build(story)
    story.write_text(STORY.replace("{id: three,", "{id: four,"), encoding="utf-8")
    run_build(story)
    out = story.with_name("story.out") / "panels"
    assert (out / "three.png").exists()
    result = run_cli("clean", str(story))
    assert result.exit_code == 0 and "three.png" in result.output
    assert not (out / "three.png").exists() and (out / "four.png").exists()


def test_custom_font_is_found_relative_to_the_story(story, tmp_path, monkeypatch):
    import shutil
    from importlib import resources

    (tmp_path / "fonts").mkdir()
    shutil.copy(resources.files("manimgx_fonts_cjk") / "NotoSansCJK-VF.otf.ttc",
                tmp_path / "fonts" / "mine.ttc")
    story.write_text(STORY.replace("  font_size: 12\n", "  font_size: 12\n  font: fonts/mine.ttc\n"),
                     encoding="utf-8")
    monkeypatch.chdir(ROOT)  # anywhere but the story's folder
    report = run_build(story)
    assert report.exit_code == 0
    assert (story.with_name("story.out") / "page-1.png").is_file()


def test_build_shows_story_warnings(story):
    story.write_text(STORY.replace("panels:\n", "characters:\n  ghost: {description: unseen}\n"
                                   "panels:\n"), encoding="utf-8")
    result = run_cli("build", str(story))
    assert "warning: characters.ghost: character 'ghost' is defined but appears in no panel" \
        in result.output
    assert run_cli("build", "-q", str(story)).output == ""


def test_clean_keeps_what_a_model_override_build_made(story, cache_dir):
    """A story built with --model records those panels; cleaning the story keeps them, and a
    dry run changes nothing at all."""
    build(story, options=QUIET, model="tiny-kolors")
    cache = PanelCache(cache_dir)
    before = cache.keys()
    roots = sorted((cache_dir / "roots").glob("*.json"))
    stamp = [p.read_bytes() for p in roots]
    assert clean([story], dry_run=True).removed == 0
    assert [p.read_bytes() for p in roots] == stamp
    assert clean([story]).removed == 0 and cache.keys() == before
    assert set(statuses(build(story, options=QUIET, model="tiny-kolors")).values()) == {"cached"}


def test_a_font_file_that_is_not_a_font_is_a_user_error(story):
    (story.parent / "broken.ttf").write_bytes(b"not a font")
    story.write_text(STORY.replace("  font_size: 12\n", "  font_size: 12\n  font: broken.ttf\n"),
                     encoding="utf-8")
    result = run_cli("build", "-q", str(story))
    assert result.exit_code == 2 and "cannot read" in result.output and "broken.ttf" in result.output
    assert "Traceback" not in result.output
