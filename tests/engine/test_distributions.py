"""Which distribution provides which module: worked out once per environment, cached safely."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from storyboard.engine import distributions


def install(folder, name: str, module: str) -> None:
    """A distribution as pip leaves it: its metadata folder, naming its top-level module."""
    meta = folder / f"{name}-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (meta / "top_level.txt").write_text(module + "\n")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A site folder of our own on sys.path and a cache of our own."""
    site = tmp_path / "site"
    site.mkdir()
    install(site, "storyboard-probe-one", "probe_one")
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "cache"))
    return site


def _standard():
    """The standard library's own function (storyboard's stand-in may already be installed)."""
    current = importlib.metadata.packages_distributions
    return getattr(current, "storyboard_original", current)()


def counting():
    """The standard library's function, counting its calls."""
    calls = []

    def original():
        calls.append(1)
        return _standard()

    return original, calls


def test_the_answer_is_the_standard_librarys_and_is_worked_out_once(env):
    original, calls = counting()
    first = distributions._remembering(original)
    answer = first()
    assert answer == _standard()
    assert answer["probe_one"] == ["storyboard-probe-one"]
    answer["probe_one"].append("changed by a caller")  # each answer is the caller's own
    assert first()["probe_one"] == ["storyboard-probe-one"]
    assert len(calls) == 1
    # Another process in the same environment reads it from the cache.
    assert distributions._remembering(original)() == _standard()
    assert len(calls) == 1


def test_a_new_or_reinstalled_distribution_is_seen(env):
    original, calls = counting()
    distributions._remembering(original)()
    install(env, "storyboard-probe-two", "probe_two")
    assert distributions._remembering(original)()["probe_two"] == ["storyboard-probe-two"]
    assert len(calls) == 2
    # A reinstall (the same name, a new folder) changes the folder's time.
    meta = env / "storyboard-probe-two-1.0.dist-info"
    stat = meta.stat()
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    distributions._remembering(original)()
    assert len(calls) == 3


def test_eggs_zips_and_metadata_rewritten_in_place_are_seen(env, tmp_path, monkeypatch):
    original, calls = counting()
    remembered = distributions._remembering(original)
    remembered()
    # An egg folder on the path (its metadata in EGG-INFO), as easy_install left them.
    egg = env / "storyboard_probe_egg-1.0-py3.egg" / "EGG-INFO"
    egg.mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(egg.parent), *sys.path])
    (egg / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: storyboard-probe-egg\n")
    (egg / "top_level.txt").write_text("probe_egg\n")
    assert remembered()["probe_egg"] == ["storyboard-probe-egg"] == _standard()["probe_egg"]
    # A zip on the path (a zipped egg, a wheel put on PYTHONPATH).
    import zipfile

    archive = tmp_path / "probe.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("storyboard_probe_zip-1.0.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: storyboard-probe-zip\nVersion: 1.0\n")
        z.writestr("storyboard_probe_zip-1.0.dist-info/top_level.txt", "probe_zip\n")
    monkeypatch.setattr(sys, "path", [str(archive), *sys.path])  # grown in this process
    assert remembered()["probe_zip"] == ["storyboard-probe-zip"] == _standard()["probe_zip"]
    # ``setup.py develop`` rewrites top_level.txt in place: the folder's time stays.
    top = env / "storyboard-probe-one-1.0.dist-info" / "top_level.txt"
    folder_time = top.parent.stat().st_mtime_ns
    top.write_text("probe_one\nprobe_one_more\n")
    os.utime(top, ns=(top.stat().st_atime_ns, top.stat().st_mtime_ns + 1_000_000_000))
    os.utime(top.parent, ns=(folder_time, folder_time))
    assert remembered()["probe_one_more"] == ["storyboard-probe-one"]
    assert len(calls) == 4


def test_a_distribution_without_a_name_is_kept_as_the_standard_library_gives_it(env):
    nameless = env / "storyboard-probe-nameless-1.0.dist-info"
    nameless.mkdir()
    (nameless / "top_level.txt").write_text("probe_nameless\n")
    original, calls = counting()
    assert distributions._remembering(original)()["probe_nameless"] == [None] \
        == _standard()["probe_nameless"]
    assert distributions._remembering(original)()["probe_nameless"] == [None]
    assert len(calls) == 1  # read back from the cache, not worked out again


def test_another_finder_that_lists_distributions_turns_remembering_off(env, monkeypatch):
    class Finder:
        @staticmethod
        def find_distributions(context=None):
            return iter(())

        @staticmethod
        def find_spec(*args, **kwargs):
            return None

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, Finder])
    assert distributions.environment_key() is None
    original, calls = counting()
    remembered = distributions._remembering(original)
    remembered(), remembered()
    assert len(calls) == 2 and not distributions.cache_file().exists()


def test_where_the_command_runs_from_does_not_change_the_key(env, tmp_path, monkeypatch):
    key = distributions.environment_key()
    monkeypatch.setattr(sys, "path", [str(tmp_path / "elsewhere"), "", *sys.path])
    monkeypatch.chdir(tmp_path)
    assert distributions.environment_key() == key


@pytest.mark.parametrize("damage", [
    b"not json", b'{"key": 1}', b"[]", b"\xff\xfe",
    "wrong types", "wrong key", "too big",
])
def test_a_damaged_cache_is_worked_out_again_and_rewritten(env, damage):
    original, calls = counting()
    distributions._remembering(original)()
    path = distributions.cache_file()
    record = json.loads(path.read_text())
    if damage == "wrong types":
        record["modules"]["probe_one"] = [3]
        damage = json.dumps(record).encode()
    elif damage == "wrong key":
        record["key"] = "0" * 64
        damage = json.dumps(record).encode()
    elif damage == "too big":
        damage = json.dumps(record).encode() + b" " * distributions.MAX_CACHE_BYTES
    path.write_bytes(damage)
    assert distributions._remembering(original)()["probe_one"] == ["storyboard-probe-one"]
    assert len(calls) == 2
    assert json.loads(path.read_text())["modules"]["probe_one"] == ["storyboard-probe-one"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_cache_that_is_not_a_regular_file_is_never_read(env):
    original, calls = counting()
    path = distributions.cache_file()
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # reading it would block forever
    assert distributions._remembering(original)()["probe_one"] == ["storyboard-probe-one"]
    assert len(calls) == 1


def test_a_read_only_cache_still_answers(env, tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would be")
    monkeypatch.setenv("STORYBOARD_CACHE", str(blocked))
    original, calls = counting()
    assert distributions._remembering(original)()["probe_one"] == ["storyboard-probe-one"]


def test_the_engine_remembers_only_once_it_starts(tmp_path):
    code = ("import importlib.metadata as md, storyboard.engine.loading, "
            "storyboard.engine.session\n"
            "print(hasattr(md.packages_distributions, 'storyboard_original'))\n"
            "from storyboard.engine.environment import prepare\nprepare(); prepare()\n"
            "f = md.packages_distributions\n"
            "print(hasattr(f, 'storyboard_original'), "
            "hasattr(f.storyboard_original, 'storyboard_original'))\n"
            "print(f() == f.storyboard_original())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env=os.environ | {
                             "STORYBOARD_CACHE": str(tmp_path)}).stdout.split()
    assert out == ["False", "True", "False", "True"]
