"""Cross-attention K/V computed once per pipeline call (engine/attention/crosskv.py), on CPU with
the built-in tiny models: the same pixels as without it, really used, refreshed for every call, and
out of the way wherever it does not apply."""

from __future__ import annotations

import gc
import logging
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from storyboard.engine.attention.crosskv import KWARG, CrossKV, CrossKVProcessor  # noqa: E402
from storyboard.engine.loading import load_model  # noqa: E402
from storyboard.plan import ModelRef, Speedup  # noqa: E402
from test_render import (LORA_STORY, PANELS4, QUIET, jobs_of, make_lora, pixels,  # noqa: E402
                         render_all, render_with, speed_up, write_story)

pytestmark = pytest.mark.usefixtures("session_cache")


def generate(pipe, prompts=("a cat", "a dog"), **kw):
    generators = [torch.Generator("cpu").manual_seed(s) for s in range(len(prompts))]
    with torch.inference_mode():
        return pipe(prompt=list(prompts), negative_prompt=[""] * len(prompts),
                    num_inference_steps=3, width=64, height=64, generator=generators,
                    output_type="np", **kw).images


def cross_layers(unet) -> list[str]:
    return [n for n, _ in unet.named_modules() if n.endswith("attn2")]


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused_qkv"])
@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-kolors"])
def test_same_pixels_with_kv_computed_once_per_call(name, fused):
    model = load_model(ModelRef("builtin", name), QUIET)
    before = generate(model.pipe)
    speed = speed_up(model, ["fused_qkv"] * fused + ["cross_kv_once"]).speed
    assert speed.applied == [Speedup.FUSED_QKV] * fused + [Speedup.CROSS_KV]
    cross_kv = speed.cross_kv
    assert sorted(cross_kv.slots) == sorted(cross_layers(model.pipe.unet))
    after = generate(model.pipe)
    # The same projections of the same text, only not repeated: not one bit differs (eager).
    assert np.array_equal(before, after)
    assert cross_kv.calls == 1  # one computation for the call's 3 steps (x CFG batch)
    generate(model.pipe)
    assert cross_kv.calls == 2  # a new call, new embeddings: computed again


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused_qkv"])
@pytest.mark.parametrize("name", ["tiny-sdxl", "tiny-kolors"])
def test_the_cached_keys_and_values_are_what_the_layers_use(monkeypatch, name, fused):
    model = load_model(ModelRef("builtin", name), QUIET)
    speed_up(model, ["fused_qkv"] * fused + ["cross_kv_once"])
    good = generate(model.pipe)
    real = CrossKV._keys_values
    monkeypatch.setattr(CrossKV, "_keys_values",
                        lambda self, text: {k: (kk, torch.zeros_like(v))
                                            for k, (kk, v) in real(self, text).items()})
    spoiled = generate(model.pipe)
    assert np.abs(spoiled - good).max() > 0.05


def test_renderer_refreshes_the_cache_for_every_batch_and_frees_it(tmp_path):
    """Four panels in two batches of two, different prompts: each batch attends to its own
    text (a stale cache would give batch 2 the K/V of batch 1), and no K/V outlive a call."""
    jobs = jobs_of(write_story(tmp_path, PANELS4))
    reference = render_all(jobs, batch_size=2)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    cross_kv = speed_up(model, ["cross_kv_once"]).speed.cross_kv
    fast = {r.job.panel: r for r in render_with(jobs, QUIET, model=model, batch_size=2)}
    assert cross_kv.calls == 2
    assert cross_kv.kv is None and cross_kv.embeddings is None
    for pid, result in reference.items():
        assert np.array_equal(pixels(fast[pid]), pixels(result)), pid


def test_a_batch_split_after_out_of_memory_frees_the_failed_calls_cache(tmp_path, monkeypatch):
    """The halves are retried only once the failed call's frames, which hold its K/V, are
    gone (inside the except block its traceback keeps them alive)."""
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    speed_up(model, ["cross_kv_once"])
    made: list = []
    real_kv, real_call = CrossKV._keys_values, CrossKVProcessor.__call__

    def keys_values(self, text):
        kv = real_kv(self, text)
        made.append([weakref.ref(t) for pair in kv.values() for t in pair])
        return kv

    alive_at_retry = []

    def call(self, attn, hidden_states, *args, storyboard_kv=None, **kwargs):
        if storyboard_kv and len(made) == 1:  # the first call, 2 panels: out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        if storyboard_kv and len(made) == 2 and not alive_at_retry:
            gc.collect()
            alive_at_retry.append(sum(r() is not None for r in made[0]))
        return real_call(self, attn, hidden_states, *args, storyboard_kv=storyboard_kv,
                         **kwargs)

    monkeypatch.setattr(CrossKV, "_keys_values", keys_values)
    monkeypatch.setattr(CrossKVProcessor, "__call__", call)
    jobs = jobs_of(write_story(tmp_path, PANELS4))[:2]
    results = list(render_with(jobs, QUIET, model=model, batch_size=2))
    assert [r.status for r in results] == ["rendered", "rendered"]
    assert [r.batch_size for r in results] == [1, 1]
    assert alive_at_retry == [0]


def test_lora_stories_after_unfusing_keep_the_cache(tmp_path):
    """Fused QKV, then a LoRA story: unfusing puts diffusers' old processors back; the cache
    wraps them again, and the K/V come from the weights each batch's LoRAs were merged into."""
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    jobs = jobs_of(write_story(tmp_path, LORA_STORY))
    reference = render_all(jobs)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    speed = speed_up(model, ["fused_qkv", "cross_kv_once"]).speed
    cross_kv = speed.cross_kv
    fast = {r.job.panel: r for r in render_with(jobs, QUIET, model=model)}
    assert speed.applied == [Speedup.CROSS_KV]  # fused_qkv went for the adapters
    assert all(isinstance(a.processor, CrossKVProcessor)
               for a in cross_kv.layers.values())
    assert cross_kv.calls >= 3  # the batches with different LoRA sets
    for pid, result in reference.items():
        assert np.array_equal(pixels(fast[pid]), pixels(result)), pid


def test_out_of_the_way_where_it_does_not_apply(caplog):
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    cross_kv = speed_up(model, ["fused_qkv", "cross_kv_once"]).speed.cross_kv
    unet = model.pipe.unet
    # A LoRA scale is applied inside the UNet's forward, after the hook: not cached.
    generate(model.pipe, cross_attention_kwargs={"scale": 0.5})
    assert cross_kv.calls == 0
    # Processors replaced behind its back: diffusers' own run, with no warning at every call
    # about an unexpected keyword.
    unet.unfuse_qkv_projections()
    with caplog.at_level(logging.WARNING):
        plain = generate(model.pipe)
    assert cross_kv.calls == 0
    assert not [r for r in caplog.records if KWARG in r.getMessage()]
    cross_kv.wrap()
    assert np.array_equal(generate(model.pipe), plain) and cross_kv.calls == 1
    # Removed: the original processors and no hook.
    cross_kv.remove()
    assert not any(isinstance(p, CrossKVProcessor) for p in unet.attn_processors.values())
    assert np.array_equal(generate(model.pipe), plain) and cross_kv.calls == 1
