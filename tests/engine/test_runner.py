"""The pipeline call (engine/runner.py), the trainer's caption encoding and its previews run
TorchScript unoptimised.

Why: Kolors' ChatGLM text encoder applies its rotary embedding through a ``torch.jit.script``
function. TorchScript's profiling executor runs a scripted function one way on its first call
with each input shape and fused on later calls; on an H200 that made the first prompt
encoding of a process differ from the same encoding later (max 2e-3), so a build's first
batch rendered other pixels than the same batch rendered again (bench/gpu_smoke.py's
``library_load_identical``). On the CPU the fuser is off and the bits agree either way, so
these tests check the setting the text encoder runs under; the GPU smoke test checks the bits.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from storyboard.engine.loading import load_model  # noqa: E402
from storyboard.engine.session import Session, render_jobs  # noqa: E402
from storyboard.engine.training.data import caption_embedding  # noqa: E402
from storyboard.engine.training.preview import render_previews  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.plan import ModelRef, compile_story  # noqa: E402
from storyboard.story import load_story  # noqa: E402

pytestmark = pytest.mark.usefixtures("session_cache")
QUIET = RuntimeOptions(progress=False)


def _recording(monkeypatch, encoder) -> list[bool]:
    """Whether TorchScript's optimised execution was on at each call of ``encoder``."""
    seen: list[bool] = []
    forward = encoder.forward

    def spy(*args, **kwargs):
        seen.append(torch._C._get_graph_executor_optimize())
        return forward(*args, **kwargs)

    monkeypatch.setattr(encoder, "forward", spy)
    return seen


def _jobs(tmp_path):
    story = tmp_path / "story.yaml"
    story.write_text("version: 1\nmodel: tiny-kolors\ndefaults:\n  steps: 2\n  width: 64\n"
                     "  height: 64\npanels:\n  - id: a\n    prompt: a cat\n    seed: 1\n",
                     encoding="utf-8")
    return compile_story(load_story(story))


def test_panels_encode_their_prompts_with_torchscript_unoptimised(tmp_path, monkeypatch):
    jobs = _jobs(tmp_path)
    session = Session()
    model = load_model(jobs[0].model, QUIET)
    session.adopt(model, QUIET)
    seen = _recording(monkeypatch, model.pipe.text_encoder)
    assert torch._C._get_graph_executor_optimize() is True
    results = list(render_jobs(jobs, QUIET, session=session))
    assert [r.status for r in results] == ["rendered"]
    assert seen and not any(seen)
    assert torch._C._get_graph_executor_optimize() is True  # given back as it was


def test_training_encodes_captions_with_torchscript_unoptimised(monkeypatch):
    model = load_model(ModelRef("builtin", "tiny-kolors"), QUIET)
    seen = _recording(monkeypatch, model.pipe.text_encoder)
    prompt, pooled = caption_embedding(model.pipe, "a cat", "cpu")
    assert prompt is not None and pooled is not None
    assert seen and not any(seen)
    assert torch._C._get_graph_executor_optimize() is True


def test_training_previews_encode_with_torchscript_unoptimised(tmp_path, monkeypatch):
    model = load_model(ModelRef("builtin", "tiny-kolors"), QUIET)
    seen = _recording(monkeypatch, model.pipe.text_encoder)
    assert len(render_previews(model.pipe, _jobs(tmp_path))) == 1
    assert seen and not any(seen)
    assert torch._C._get_graph_executor_optimize() is True
