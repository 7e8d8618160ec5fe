"""manifest.json, pinned by a golden file: what a build did, for people and tools."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import GOLDEN, check_golden, run_cli

pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("fresh_cache")

STORY = """\
version: 1
title: Manifest
model: tiny-sdxl
defaults: {steps: 2, width: 64, height: 64}
panels:
  - {id: a, prompt: a cat, seed: 1, caption: The cat.}
  - {id: b, prompt: a dog, seed: 2}
"""


def normalised(manifest: dict, story) -> str:
    """What varies from machine to machine (paths, library versions, times) replaced."""
    manifest = json.loads(json.dumps(manifest))
    assert manifest["story"] == str(story.resolve())
    manifest["story"] = "<story>"
    for name in manifest["versions"]:
        assert manifest["versions"][name]
        manifest["versions"][name] = f"<{name} version>"
    manifest["summary"]["seconds"] = "<seconds>"
    for panel in manifest["panels"]:
        panel["seconds"] = "<seconds>"
    # Pixels and encoders vary a little across machines; that each digest is the file's own is
    # checked here, so the golden file pins which files are recorded.
    out = story.with_name(story.stem + ".out")
    for name, digest in manifest["digests"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, name
        manifest["digests"][name] = "<sha256>"
    return json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"


def test_manifest_golden(tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text(STORY, encoding="utf-8")
    assert run_cli("build", "-q", "--only", "a", str(story)).exit_code == 0
    out = tmp_path / "story.out"
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    check_golden(GOLDEN / "manifest" / "only-a.json", normalised(manifest, story))
    assert run_cli("build", "-q", str(story)).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    check_golden(GOLDEN / "manifest" / "all.json", normalised(manifest, story))
    # Every file it lists is there, and every page it lists is among them.
    assert all((out / name).is_file() for name in manifest["files"])
    assert set(manifest["pages"]) <= set(manifest["files"])
