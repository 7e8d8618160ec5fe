"""Where the cache lives, and atomic writes that keep the user's permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from storyboard import paths


def test_the_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("STORYBOARD_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_root() == tmp_path / "xdg" / "storyboard"
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "mine"))
    assert paths.cache_root() == tmp_path / "mine"
    assert paths.builtin_model_folder("tiny-sdxl", 2) == tmp_path / "mine" / "models" / \
        "tiny-sdxl-r2"
    assert paths.compile_cache_dir() == tmp_path / "mine" / "inductor"
    monkeypatch.delenv("STORYBOARD_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_root() == tmp_path / "home" / ".cache" / "storyboard"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_permissions_the_umask_asks_for(tmp_path, umask, mode):
    code = (f"import os\nos.umask({umask})\nfrom storyboard.paths import atomic_write_bytes, "
            f"atomic_write_via\natomic_write_bytes({str(tmp_path / 'a')!r}, b'x')\n"
            f"atomic_write_via({str(tmp_path / 'b')!r}, lambda p: p.write_bytes(b'y'))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    for name in ("a", "b"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode


def test_a_replaced_file_keeps_its_permissions_and_nothing_is_left_behind(tmp_path):
    target = tmp_path / "page.png"
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    paths.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640

    def broken(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        paths.atomic_write_via(target, broken)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.png"]
