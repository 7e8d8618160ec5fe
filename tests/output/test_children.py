"""Work in new interpreters (output/children.py): each order's answer in order, None for a
child that failed, and the caller's work, not a crash, wherever no child can do it."""

from __future__ import annotations

import errno
import tempfile

import pytest

from storyboard.output.children import run_in_children

ECHO = """import json, sys
order = json.loads(open(sys.argv[1], encoding="utf-8").read())
if order == "fail":
    sys.exit(1)
print(json.dumps(order), end="")
"""


@pytest.fixture
def echo(tmp_path, monkeypatch):
    """A module the children run: it prints its order back, or fails when told to."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "sb_echo_child.py").write_text(ECHO, "utf-8")
    monkeypatch.syspath_prepend(str(lib))
    return "sb_echo_child"


def test_each_order_is_answered_in_order(echo):
    assert run_in_children(echo, [1, "fail", {"a": [2]}]) == [b"1", None, b'{"a": [2]}']
    assert run_in_children(echo, []) == []


def test_a_module_in_the_writers_folder_is_not_imported(echo, tmp_path, monkeypatch):
    """The folder storyboard runs in is not on a child's path: a json.py there (which the
    child's own imports would pick up first) is never run."""
    folder = tmp_path / "writer"
    folder.mkdir()
    (folder / "json.py").write_text("raise SystemExit(3)\n", "utf-8")
    monkeypatch.chdir(folder)
    assert run_in_children(echo, [7]) == [b"7"]


def test_no_room_for_the_orders_leaves_the_work_to_the_caller(echo, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", full)
    assert run_in_children(echo, [1, 2]) == [None, None]


def test_an_order_that_cannot_be_written_leaves_the_rest_to_the_caller(echo, monkeypatch):
    """The second order fails to be written after the first child started: no exception,
    and no answer taken from a child whose siblings never ran."""
    import pathlib

    real = pathlib.Path.write_text
    written = []

    def write_text(self, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    assert run_in_children(echo, [1, 2]) == [None, None]
