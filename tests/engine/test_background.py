"""engine/speed/background.py: the UNet and VAE compiled on a thread while the first batches
render eagerly, then used from the first batch after they are ready. On the CPU through dynamo
and AOTAutograd ("aot_eager": the same graph capture as inductor, no kernel generation).
Deterministic: the test waits for the thread's end (an event), never for time."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from storyboard.engine.loading import load_model
from storyboard.engine.session import Session
from storyboard.engine.speed.apply import apply_speedups
from storyboard.plan import Speedup
from storyboard.plan.jobs import ModelRef

from test_render import BATCH_TOLERANCE, QUIET, jobs_of, pixels, render_all, write_story

FIVE = "panels:\n" + "".join(f"  - {{id: p{i}, prompt: a cat number {i}, seed: {i}}}\n"
                             for i in range(5))
SHAPE = (2, 64, 64, True)  # batches of 2 at 64x64 with CFG: 5 panels make 2, 2 and 1
NAMES = [Speedup.CHANNELS_LAST, Speedup.FUSED_QKV, Speedup.TORCH_COMPILE, Speedup.VAE_COMPILE,
         Speedup.CROSS_KV]


@pytest.fixture
def fresh():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _prepared(tmp_path, backend="aot_eager", shape=SHAPE, names=NAMES):
    jobs = jobs_of(write_story(tmp_path, FIVE))
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    session = Session(backend=backend)
    state = session.adopt(model, QUIET)
    state.speed = apply_speedups(model, names, backend=backend, background=shape)
    events: list[dict] = []
    prepared = session.prepare(jobs, replace(QUIET, batch_size=2), on_event=events.append)
    return jobs, state, prepared, events


def test_batches_switch_to_the_graphs_compiled_meanwhile(tmp_path, fresh):
    jobs = jobs_of(write_story(tmp_path, FIVE))
    eager = render_all(jobs, batch_size=2)
    jobs, state, prepared, events = _prepared(tmp_path)
    background = state.speed.background
    assert Speedup.TORCH_COMPILE not in state.speed.applied  # not yet: the first batch is eager
    results = prepared.results(events.append)
    first = [next(results), next(results)]
    # The thread compiled from the first batch's own calls; nothing else was recorded.
    assert background.done.wait(300) and background.error is None
    assert [t.ready for t in background.targets] == [True, True]
    frames = torch._dynamo.utils.counters["frames"]["ok"]
    calls = []
    compiled = background.unet.compiled
    background.unet.compiled = lambda *a, **k: calls.append(1) or compiled(*a, **k)
    rest = list(results)
    # The second batch of 2 ran the compiled UNet at every step (3 steps x 1 call: CFG is one
    # batch of 4); the last batch, of 1 panel, another shape, ran eagerly. Neither compiled
    # again: the recorded arguments met the graph's guards.
    assert len(calls) == 3
    assert torch._dynamo.utils.counters["frames"]["ok"] == frames
    compiled_events = [e for e in events if e["event"] == "compiled"]
    assert [(e["what"], e["before_batch"]) for e in compiled_events] == [("unet", 1), ("vae", 1)]
    assert Speedup.TORCH_COMPILE in state.speed.applied
    assert Speedup.VAE_COMPILE in state.speed.applied
    got = {r.job.panel: r for r in first + rest}
    assert sorted(got) == sorted(eager)
    for pid, result in got.items():
        assert result.status == "rendered", result.error
        assert np.abs(pixels(result) - pixels(eager[pid])).max() <= BATCH_TOLERANCE, pid
    # Through the module as the pipeline calls it: the K/V cache's hook still runs first.
    assert state.speed.cross_kv.calls >= 3


def test_a_render_with_no_batch_of_the_shape_stops_the_waiting_thread(tmp_path, fresh):
    _, state, prepared, events = _prepared(tmp_path, shape=(8, 64, 64, True))
    background = state.speed.background
    assert len(list(prepared.results(events.append))) == 5
    assert background.done.is_set() and not background._thread.is_alive()
    assert not any(t.ready for t in background.targets)
    assert not [e for e in events if e["event"] in ("compiled", "warning")]
    assert Speedup.TORCH_COMPILE not in state.speed.applied


def test_a_compile_that_fails_leaves_the_render_eager_and_says_so(tmp_path, fresh):
    def broken(graph, inputs):
        raise RuntimeError("this backend compiles nothing")

    jobs, state, prepared, events = _prepared(tmp_path, backend=broken)
    results = list(prepared.results(events.append))
    assert [r.status for r in results] == ["rendered"] * 5
    background = state.speed.background
    assert "this backend compiles nothing" in background.error
    (warning,) = [e for e in events if e["event"] == "warning"]
    assert "compiling in the background failed" in warning["message"]
    assert Speedup.TORCH_COMPILE not in state.speed.applied


def _gated():
    """A backend that compiles (eagerly: the graph as traced) only once ``gate`` is set."""
    import threading

    gate = threading.Event()

    def backend(graph, inputs):
        gate.wait()
        return graph.forward

    return gate, backend


def test_an_interrupted_render_does_not_wait_for_the_compile(tmp_path, fresh):
    gate, backend = _gated()
    _, state, prepared, events = _prepared(tmp_path, backend=backend)
    background = state.speed.background
    results = prepared.results(events.append)
    next(results)
    results.close()  # as an error or Ctrl-C in the consumer does
    assert background._thread.is_alive() and background._thread.daemon
    assert not background.done.is_set()
    gate.set()
    assert background.done.wait(300)


def test_a_render_that_outran_the_compile_waits_for_it(tmp_path, fresh):
    gate, backend = _gated()
    _, state, prepared, events = _prepared(tmp_path, backend=backend)
    background = state.speed.background

    def on_event(event):
        events.append(event)
        if event["event"] == "batch_start" and event["panels"] == ["p4"]:
            gate.set()  # during the last batch: the compile ends after the render

    assert len(list(prepared.results(on_event))) == 5
    assert background.done.is_set() and background.unet.ready
    # Ready only after the last batch had started: it says so, with no batch to use it. (The
    # VAE is compiled too if the thread got to it before the render ended; not after.)
    compiled = [(e["what"], e["before_batch"]) for e in events if e["event"] == "compiled"]
    assert compiled[0] == ("unet", None) and all(n is None for _, n in compiled)


def test_the_thread_takes_the_models_cuda_device_by_index(monkeypatch):
    # set_device refuses "cuda" with no index; the thread's current device is its own.
    from types import SimpleNamespace

    from storyboard.engine.speed.background import BackgroundCompile

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)

    def model(device):
        unet = SimpleNamespace(forward=lambda x: x)
        return SimpleNamespace(device=device, pipe=SimpleNamespace(unet=unet))

    assert BackgroundCompile(model("cuda"), SHAPE, vae=False).cuda_index == 3
    assert BackgroundCompile(model("cuda:1"), SHAPE, vae=False).cuda_index == 1
    assert BackgroundCompile(model("cpu"), SHAPE, vae=False).cuda_index is None
