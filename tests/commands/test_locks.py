"""Two storyboard processes that meet: one output folder, one cache. The second waits for the
first (and says so) instead of mixing their files or deleting what the other just rendered.
(Part of the reliability work, issue 14.) Waits are on events read from the other process,
each with a generous deadline that fails the test when it runs out."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from storyboard.output.locks import locked

pytest.importorskip("torch")
pytest.importorskip("fcntl")

PATIENCE = 120


class Process:
    """A storyboard command in another process, its output lines read as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "storyboard.cli", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=os.environ)
        self.lines: queue.Queue = queue.Queue()
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()
        self.seen: list[str] = []

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str) -> str:
        """The first line containing ``text``; fails the test if none comes in time."""
        while True:
            line = self.lines.get(timeout=PATIENCE)
            self.seen.append(line)
            if text in line:
                return line

    def finish(self) -> int:
        code = self.proc.wait(timeout=PATIENCE)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.seen if line.startswith("{")]


@pytest.fixture
def story(two_panel_story):
    return two_panel_story


def test_a_build_waits_for_another_in_its_output_folder(story):
    out = story.with_name("story.out")
    with locked(out):  # as a build into this folder would
        other = Process("build", "--json", str(story))
        event = json.loads(other.wait_for('"waiting"'))
        assert str(out) in event["message"]
        assert other.proc.poll() is None and not (out / "manifest.json").exists()
    assert other.finish() == 0
    assert other.events()[-1]["event"] == "done"


def test_clean_waits_for_running_builds(story, fresh_cache):
    with locked(fresh_cache, shared=True):  # as a running build holds the cache
        cleaner = Process("clean")
        assert "waiting for it" in cleaner.wait_for("panel cache")
        assert cleaner.proc.poll() is None
    assert cleaner.finish() == 0


def test_two_builds_of_one_story_at_once_both_succeed_and_render_each_panel_once(story):
    first, second = Process("build", "--json", str(story)), Process("build", "--json", str(story))
    assert first.finish() == 0 and second.finish() == 0
    done = [p.events()[-1] for p in (first, second)]
    assert all(d["event"] == "done" for d in done)
    assert sorted(d["rendered"] for d in done) == [0, 2]
    manifest = json.loads((story.with_name("story.out") / "manifest.json").read_text("utf-8"))
    assert manifest["summary"]["cached"] + manifest["summary"]["rendered"] == 2
