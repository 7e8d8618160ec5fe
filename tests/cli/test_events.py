"""The `--json` event stream of `storyboard build`, pinned by a golden file: tools read it."""

from __future__ import annotations

import json

import pytest

from conftest import GOLDEN, check_golden, run_cli

pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("fresh_cache")

STORY = """\
version: 1
title: Events
model: tiny-sdxl
defaults: {steps: 2, width: 64, height: 64}
panels:
  - {id: a, prompt: a cat, seed: 1}
  - {id: b, prompt: a dog, seed: 2}
  - {id: twin, prompt: a cat, seed: 1}
"""


def normalised(output: str) -> str:
    """Times vary from run to run; everything else in the stream is fixed."""
    lines = []
    for line in output.splitlines():
        event = json.loads(line)
        for key in ("seconds", "parts"):  # parts: the seconds of each part of composing
            if key in event:
                event[key] = "<seconds>"
        lines.append(json.dumps(event, ensure_ascii=False, sort_keys=False))
    return "\n".join(lines) + "\n"


def test_build_json_events_golden(tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text(STORY, encoding="utf-8")
    first = run_cli("build", "--json", "--batch-size", "4", str(story))
    assert first.exit_code == 0, first.output
    # One batch (the twin renders once, with "a"): every step, then each panel once its file
    # is written, in story order, then the counts.
    check_golden(GOLDEN / "events" / "build.jsonl", normalised(first.stdout))
    again = run_cli("build", "--json", str(story))
    assert again.exit_code == 0, again.output
    check_golden(GOLDEN / "events" / "build-again.jsonl", normalised(again.stdout))
