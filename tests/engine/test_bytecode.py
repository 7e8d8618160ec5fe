"""engine.bytecode: libraries' bytecode kept in storyboard's cache where the environment would
not keep it. Each case runs a fresh interpreter (``sys.pycache_prefix`` is process-wide), with a
small package standing in for torch."""

from __future__ import annotations

import importlib.util
import marshal
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from storyboard.engine import bytecode
kept = bytecode.keep(probe="probe_pkg")
import probe_pkg.mod
print("kept", kept)
print("value", probe_pkg.mod.VALUE)
print("cached", probe_pkg.mod.__cached__)
import os
print("children", os.environ.get("PYTHONPYCACHEPREFIX"), os.environ.get("PYTHONDONTWRITEBYTECODE"))
"""


def _package(root: Path) -> Path:
    pkg = root / "lib" / "probe_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("VALUE = 'from-source'\n")
    return pkg


def _run(root: Path, *, no_bytecode: bool = True, cwd: Path | None = None,
         **env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX",
                            "STORYBOARD_BYTECODE")}
    environ.update({"PYTHONPATH": os.pathsep.join([str(root / "lib"), str(REPO)]),
                    "STORYBOARD_CACHE": str(root / "cache")})
    environ.update(env)
    if no_bytecode:
        environ["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run([sys.executable, "-c", CHILD], env=environ, capture_output=True,
                         text=True, check=True, cwd=cwd).stdout
    return dict(line.split(" ", 1) for line in out.splitlines())


def _keep_only_source(pkg: Path) -> None:
    # As on an image installed without .pyc files: whatever a run put next to the sources goes.
    for pyc in pkg.rglob("*.pyc"):
        pyc.unlink()


def test_bytecode_is_kept_in_the_cache_and_read_back_when_the_environment_keeps_none(tmp_path):
    pkg = _package(tmp_path)
    first = _run(tmp_path)
    folder = tmp_path / "cache" / "env" / "bytecode"
    assert first["kept"] == str(folder)
    cached = Path(first["cached"])
    assert cached.is_file() and folder in cached.parents
    assert not (pkg / "__pycache__").exists()  # nothing written next to the sources
    assert first["children"] == f"{folder} None"  # the processes it starts do the same

    # The next process reads the cached file rather than compiling the source: a cached file
    # whose code says something else (same header, so still valid for this source) is used.
    header = cached.read_bytes()[:16]
    cached.write_bytes(header + marshal.dumps(compile("VALUE = 'from-cache'", "mod", "exec")))
    assert _run(tmp_path)["value"] == "from-cache"


def test_a_changed_source_is_compiled_again(tmp_path):
    pkg = _package(tmp_path)
    _run(tmp_path)
    (pkg / "mod.py").write_text("VALUE = 'edited, and longer than before'\n")
    assert _run(tmp_path)["value"] == "edited, and longer than before"


def test_turned_off_with_storyboard_bytecode_0(tmp_path):
    _package(tmp_path)
    out = _run(tmp_path, STORYBOARD_BYTECODE="0")
    assert out["kept"] == "None"
    assert not (tmp_path / "cache" / "env" / "bytecode").exists()


def test_a_prefix_the_user_chose_is_left_alone(tmp_path):
    _package(tmp_path)
    theirs = tmp_path / "theirs"
    out = _run(tmp_path, PYTHONPYCACHEPREFIX=str(theirs))
    assert out["kept"] == "None"
    assert not (tmp_path / "cache" / "env" / "bytecode").exists()


def test_an_environment_that_writes_its_own_bytecode_is_left_alone(tmp_path):
    pkg = _package(tmp_path)
    out = _run(tmp_path, no_bytecode=False)
    assert out["kept"] == "None"
    assert (pkg / "__pycache__").is_dir()  # Python's own place


def test_bytecode_already_beside_the_sources_is_used_as_it_is(tmp_path):
    pkg = _package(tmp_path)
    _run(tmp_path, no_bytecode=False)  # an install that compiled its files
    assert _run(tmp_path)["kept"] == "None"
    _keep_only_source(pkg)
    assert _run(tmp_path)["kept"] != "None"


def test_a_package_folder_python_cannot_write_does_not_keep_bytecode(tmp_path, monkeypatch):
    # As a read-only install seen by a user who is not root (root writes anyway: in-process).
    from storyboard.engine import bytecode

    pkg = _package(tmp_path)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert bytecode._environment_keeps(str(pkg / "mod.py"))
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != pkg)
    assert not bytecode._environment_keeps(str(pkg / "mod.py"))


def test_a_relative_cache_folder_is_kept_as_an_absolute_prefix(tmp_path):
    _package(tmp_path)
    out = _run(tmp_path, STORYBOARD_CACHE="cache", cwd=tmp_path)
    assert out["kept"] == str(tmp_path / "cache" / "env" / "bytecode")
    assert Path(out["cached"]).is_file()


def test_a_cache_that_cannot_be_made_changes_nothing(tmp_path):
    _package(tmp_path)
    (tmp_path / "blocked").write_text("a file where the cache's folder would go")
    out = _run(tmp_path, STORYBOARD_CACHE=str(tmp_path / "blocked" / "cache"))
    assert out["kept"] == "None"
    assert out["value"] == "from-source"


def test_a_missing_probe_changes_nothing(tmp_path, monkeypatch):
    from storyboard.engine import bytecode

    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path))
    assert importlib.util.find_spec("no_such_module_here") is None
    assert bytecode.keep(probe="no_such_module_here") is None
    assert sys.pycache_prefix is None


def test_clean_removes_bytecode_whose_sources_are_gone(tmp_path):
    """A removed environment leaves its kept bytecode behind: `clean` takes what no source
    will read again, and only that (and not files of other names, nor links)."""
    from storyboard.commands.clean import clean
    from storyboard.engine import bytecode
    from storyboard.output.cache import PanelCache

    pkg = _package(tmp_path)
    (pkg / "gone.py").write_text("VALUE = 1\n")
    out = _run(tmp_path)
    subprocess.run([sys.executable, "-c", "import probe_pkg.gone"], check=True, env=dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "lib"), str(REPO)]),
        PYTHONPYCACHEPREFIX=out["kept"], PYTHONDONTWRITEBYTECODE=""))
    kept = Path(out["kept"])
    gone = next(kept.rglob("gone.*.pyc"))
    stays = Path(out["cached"])
    mine = stays.with_name("notes.txt")
    mine.write_text("not bytecode")
    (pkg / "gone.py").unlink()
    assert bytecode.orphans(tmp_path / "cache") == [gone]
    cache = PanelCache(tmp_path / "cache")
    size = gone.stat().st_size
    assert clean([], dry_run=True, cache=cache).bytecode == 1 and gone.exists()
    report = clean([], cache=cache)
    assert report.bytecode == 1 and report.freed == size
    assert not gone.exists() and stays.exists() and mine.exists()
    # The whole package gone: its files, then its emptied folders (the top one stays).
    for path in pkg.iterdir():
        path.unlink()
    pkg.rmdir()
    mine.unlink()
    assert clean([], cache=cache).bytecode == 2
    assert not stays.parent.exists() and kept.is_dir()
    # What other modules imported meanwhile (the standard library's) stays: their sources are.
    assert bytecode.orphans(tmp_path / "cache") == []
    assert any(kept.rglob("*.pyc"))
