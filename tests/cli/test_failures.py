"""What the command line does when the world gets in the way: files that are not files, a full
disk, an output folder under a file, Ctrl-C. One line each, the right exit code, no traceback,
and with `--json` a last event saying why. (Part of the reliability work, issue 14.)"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from conftest import ROOT, TWO_PANELS, run_cli

pytest.importorskip("torch")

# A wait that runs out is a failure: storyboard must refuse these, not hang on them.
PATIENCE = 60


def storyboard(*args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:  # in the child: a disk that is full past `limit_bytes` for it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "storyboard.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=PATIENCE, env=os.environ,
                          preexec_fn=limit if limit_bytes is not None else None)


@pytest.fixture
def story(two_panel_story):
    return two_panel_story


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["build", "-q"]])
def test_a_pipe_as_a_story_is_refused_not_waited_on(tmp_path, command):
    fifo = tmp_path / "story.yaml"
    os.mkfifo(fifo)
    result = storyboard(*command, str(fifo))
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["validate"], ["plan"], ["build", "-q"]])
def test_a_story_in_a_folder_not_named_in_utf8_is_the_users_to_fix(tmp_path, command):
    """A Latin-1 folder name: the panels' records and the manifest keep the story's path as
    UTF-8 text, so it is refused up front, in one line, not a traceback at the first PNG."""
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    os.mkdir(folder)
    with open(folder + b"/story.yaml", "w", encoding="utf-8") as fh:
        fh.write(TWO_PANELS)
    result = subprocess.run([sys.executable, "-m", "storyboard.cli", *command,
                             folder + b"/story.yaml"], cwd=ROOT, capture_output=True,
                            timeout=PATIENCE, env=os.environ)
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    assert "caf\\xe9 has a name that is not UTF-8" in err and "Traceback" not in err


def test_a_device_as_a_story_is_refused_before_reading_it():
    result = storyboard("validate", "/dev/zero")
    assert result.returncode == 2 and "not a regular file" in result.stderr


@pytest.mark.parametrize("command", [["inspect"], ["render", "--from-png"]])
def test_a_pipe_as_a_panel_png_is_refused(tmp_path, command):
    fifo = tmp_path / "panel.png"
    os.mkfifo(fifo)
    result = storyboard(*command, str(fifo))
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


def test_an_output_folder_under_a_file_is_the_users_to_fix(story, tmp_path):
    (tmp_path / "afile").write_text("mine", encoding="utf-8")
    result = run_cli("build", "-q", "-o", str(tmp_path / "afile" / "out"), str(story))
    assert result.exit_code == 2
    assert f"lies under {tmp_path / 'afile'}, which is a file" in result.output
    assert (tmp_path / "afile").read_text("utf-8") == "mine"


def test_a_full_disk_is_one_line_exit_1_and_a_last_event(story):
    result = storyboard("build", "--json", str(story), limit_bytes=2048)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert "file too large" in line and ".png" in line
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 1 and "file too large" in \
        last["message"]


def test_ctrl_c_says_what_was_kept_and_exits_130(story, monkeypatch):
    import storyboard.commands as commands

    def interrupted(story, out, *, on_event, **kwargs):
        on_event({"event": "panel", "panel": "a", "seed": 1, "status": "rendered",
                  "seconds": 0.1, "error": None})
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "build", interrupted)
    result = run_cli("build", str(story))
    assert result.exit_code == 130
    assert "interrupted; 1 panel finished before it stopped are kept" in result.output
    assert "Aborted" not in result.output
    streamed = run_cli("build", "--json", str(story))
    assert streamed.exit_code == 130
    last = json.loads(streamed.stdout.splitlines()[-1])
    assert last["event"] == "interrupted" and last["exit_code"] == 130


def test_a_story_error_with_json_also_ends_the_stream(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TWO_PANELS.replace("seed: 1", "seed: one"), encoding="utf-8")
    result = run_cli("build", "--json", str(bad))
    assert result.exit_code == 2
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["event"] == "error" and "panels[0].seed" in last["message"]


def test_a_full_disk_while_building_a_builtin_model_names_its_folder(tmp_path, monkeypatch):
    story = tmp_path / "story.yaml"
    story.write_text(TWO_PANELS, encoding="utf-8")
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "empty-cache"))
    result = storyboard("build", "-q", str(story), limit_bytes=2048)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "models/tiny-sdxl-r2: file too large" in result.stderr
    assert not (tmp_path / "empty-cache" / "models" / "tiny-sdxl-r2").exists()


@pytest.fixture
def mounted(tmp_path):
    """A small tmpfs mounted at a folder (root only; skipped where mounting is not allowed):
    ``mounted(options)`` -> the folder. A real read-only or full file system, not a simulation."""
    points = []

    def mount(options: str):
        point = tmp_path / f"fs{len(points)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", str(point)], capture_output=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_a_read_only_output_folder_is_one_line_exit_1(story, mounted):
    out = mounted("ro,size=1m") / "out"
    result = storyboard("build", "--json", "-o", str(out), str(story))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert "read-only file system" in line.lower() and str(out) in line
    last = json.loads(result.stdout.splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_a_disk_that_fills_mid_build_keeps_what_was_finished(story, mounted):
    """A disk with room for the panels but not the pages: the build ends with one line naming
    the file it could not write, exit 1; what it wrote is whole, no temporary file is left, and
    once there is room the next build finishes. (The panels are rendered into the cache first,
    elsewhere, so this is about the output folder's disk.)"""
    from storyboard.commands import build
    from storyboard.options import RuntimeOptions

    build(story, options=RuntimeOptions(progress=False))
    disk = mounted("size=256k")
    out = disk / "out"
    filler = disk / "filler"
    st = os.statvfs(disk)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (32 << 10)))
    result = storyboard("build", "-o", str(out), str(story))
    assert result.returncode == 1, result.stderr
    (line,) = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert "no space left on device" in line.lower() and str(out) in line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for png in out.rglob("*.png"):
        from PIL import Image

        with Image.open(png) as im:
            im.verify()  # every file there is complete
    filler.unlink()
    again = storyboard("build", "--json", "-o", str(out), str(story))
    assert again.returncode == 0, again.stderr
    done = json.loads(again.stdout.splitlines()[-1])
    assert done["event"] == "done" and done["rendered"] == 0
