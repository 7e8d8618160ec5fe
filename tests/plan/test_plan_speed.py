"""Batch planning and the speed policy: pure functions of the jobs and options (no model, no
torch), so `storyboard plan` shows exactly what a build will do. Every speed-up list the
policy can produce is asserted here, in one table."""

from __future__ import annotations

from pathlib import Path

import pytest

from storyboard.options import RuntimeOptions
from storyboard.plan import Speedup, compile_story, plan_render
from storyboard.plan.batches import default_batch_size, plan_batches
from storyboard.plan.speed import (WARM_COMPILE_PRIOR_S, ShapeTimings, choose_speedups,
                                   compile_pays, unet_work)
from storyboard.story import load_story

S = Speedup
COMPILED = [S.CHANNELS_LAST, S.FUSED_QKV, S.TUNED_KERNELS, S.TORCH_COMPILE, S.VAE_COMPILE,
            S.CROSS_KV]
COURSE = {(8, 1024, 1024, True): 400}  # the course story: 8 panels of 50 steps, one call
BIG = {(8, 1024, 1024, True): 2000}  # 40 panels of 50 steps in batches of 8
# What an H200 measured for that shape: seconds per panel-step eager and compiled, and the
# extra seconds of a first compiled batch with the cache warm.
H200 = {(8, 1024, 1024, True): ShapeTimings(eager=0.0376, compiled=0.0290, warm_compile=12.3,
                                            cold_compile=170.0)}


def jobs(tmp_path: Path, panels: str, extra: str = "") -> list:
    path = tmp_path / "story.yaml"
    path.write_text(f"version: 1\nmodel: tiny-sdxl\ndefaults: {{steps: 3, width: 64, height: 64}}"
                    f"\n{extra}panels:\n{panels}", encoding="utf-8")
    return compile_story(load_story(path))


def many(count: int, steps: int = 3, prefix: str = "p", extra: str = "") -> str:
    return "".join(f"  - {{id: {prefix}{i}, prompt: cat {i}, seed: {i}, steps: {steps}{extra}}}\n"
                   for i in range(count))


# (device, dtype, options, loras, work) -> speed-ups, in the order they are applied
TABLE = [
    # Only on CUDA, where they were measured.
    ("cpu", "fp32", RuntimeOptions(compile=True), False, BIG, []),
    ("mps", "fp16", RuntimeOptions(compile=True), False, BIG, []),
    # Compiled: channels_last and fused QKV only with the compiler; tuning when compiling.
    ("cuda", "fp16", RuntimeOptions(compile=True), False, COURSE, COMPILED),
    ("cuda:1", "bf16", RuntimeOptions(compile=True), False, {}, COMPILED),
    ("cuda", "fp16", RuntimeOptions(compile=True, tune=False), False, COURSE,
     [S.CHANNELS_LAST, S.FUSED_QKV, S.TORCH_COMPILE, S.VAE_COMPILE, S.CROSS_KV]),
    # Fused projections replace the layers LoRA adapters attach to.
    ("cuda", "fp16", RuntimeOptions(compile=True), True, COURSE,
     [S.CHANNELS_LAST, S.TUNED_KERNELS, S.TORCH_COMPILE, S.VAE_COMPILE, S.CROSS_KV]),
    # Eager: only the K/V cache (channels_last and fused QKV were slower or no faster).
    ("cuda", "fp16", RuntimeOptions(compile=False), False, BIG, [S.CROSS_KV]),
    # auto, with nothing measured on this machine: never a compile whose cost is unknown here
    # (the first compile on a machine blocks a build for minutes).
    ("cuda", "fp16", RuntimeOptions(), False, COURSE, [S.CROSS_KV]),
    ("cuda", "fp16", RuntimeOptions(), False, BIG, [S.CROSS_KV]),
    ("cuda", "fp16", RuntimeOptions(), False, {}, [S.CROSS_KV]),
    # --no-fuse: nothing (and so no compile either).
    ("cuda", "fp16", RuntimeOptions(fuse=False, compile=True), False, BIG, []),
    # Offloading's hooks move the UNet as a whole, which the K/V cache's direct calls bypass.
    ("cuda", "fp16", RuntimeOptions(offload=True, compile=True), True, BIG, []),
    # FP8: measured compiled only, and untuned; "auto" compiles it however small the render.
    ("cuda", "fp8", RuntimeOptions(), False, COURSE,
     [S.CHANNELS_LAST, S.FUSED_QKV, S.FP8, S.TORCH_COMPILE, S.VAE_COMPILE, S.CROSS_KV]),
    ("cuda", "fp8", RuntimeOptions(compile=True), False, {},
     [S.CHANNELS_LAST, S.FUSED_QKV, S.FP8, S.TORCH_COMPILE, S.VAE_COMPILE, S.CROSS_KV]),
    ("cuda", "fp8", RuntimeOptions(compile=False), False, BIG, [S.FP8, S.CROSS_KV]),
    # A precision the story chose, not a speed switch: --no-fuse keeps it.
    ("cuda", "fp8", RuntimeOptions(fuse=False), True, BIG, [S.FP8]),
]


@pytest.mark.parametrize("device, dtype, options, loras, work, expected", TABLE)
def test_the_speedups_a_render_gets(device, dtype, options, loras, work, expected):
    assert list(choose_speedups(device=device, dtype=dtype, options=options, loras=loras,
                                work=work)) == expected


def test_speedups_print_as_the_names_manifests_have_always_used():
    assert [str(s) for s in COMPILED] == ["channels_last", "fused_qkv", "tuned_kernels",
                                          "torch.compile", "vae.compile", "cross_kv_once"]
    assert S("cross_kv_once") is S.CROSS_KV and S.FP8 == "fp8"


def test_batches_are_split_evenly_and_keep_story_order(tmp_path):
    js = jobs(tmp_path, many(10))
    assert [len(b.jobs) for b in plan_batches(js, 8)] == [5, 5]
    assert [len(b.jobs) for b in plan_batches(js, 4)] == [4, 3, 3]
    assert [p for b in plan_batches(js, 4) for p in b.panels] == [f"p{i}" for i in range(10)]
    with pytest.raises(ValueError):
        plan_batches(js, 0)


def test_incompatible_jobs_are_batched_separately(tmp_path):
    js = jobs(tmp_path, """  - {id: a, prompt: cat, seed: 1}
  - {id: b, prompt: dog, seed: 2, width: 128}
  - {id: c, prompt: bird, seed: 3, guidance: 2}
  - {id: d, prompt: fish, seed: 4}
  - {id: e, prompt: fish, seed: 5, scheduler: DPM++ SDE}
  - {id: f, prompt: fish, seed: 6, scheduler: DPM++ SDE}
""")
    # DPM++ SDE draws the noise of a whole batch from one Brownian tree: a batch per panel.
    assert [b.panels for b in plan_batches(js, 8)] == [["a", "d"], ["b"], ["c"], ["e"], ["f"]]


def test_panels_with_other_loras_or_weights_are_other_batches(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"a")
    (tmp_path / "b.safetensors").write_bytes(b"b")
    js = jobs(tmp_path, """  - {id: p1, characters: [alice], prompt: x}
  - {id: p2, characters: [bob], prompt: x}
  - {id: p3, prompt: x}
  - {id: p4, characters: [alice], prompt: y}
""", extra="characters:\n  alice: {loras: [{file: a.safetensors, weight: 0.5}]}\n"
           "  bob: {loras: [b.safetensors]}\n")
    batches = plan_batches(js, 8)
    assert [b.panels for b in batches] == [["p1", "p4"], ["p2"], ["p3"]]
    assert batches[0].loras == (("alice", str(tmp_path / "a.safetensors"), 0.5),)
    assert batches[2].loras == ()


def test_auto_compiles_what_this_machine_measured_pays(tmp_path):
    def work(count: int, steps: int, batch: int = 8, extra: str = "") -> dict:
        return unet_work(plan_batches(jobs(tmp_path, many(count, steps) + extra), batch))

    def auto(work: dict, measured: dict) -> bool:
        return S.TORCH_COMPILE in choose_speedups(device="cuda", dtype="fp16", loras=False,
                                                  options=RuntimeOptions(), work=work,
                                                  measured=measured)

    course = work(8, 50)
    assert course == {(8, 64, 64, True): 400}
    big = work(40, 50)
    assert big == {(8, 64, 64, True): 2000}
    shape = (8, 64, 64, True)
    h200 = {shape: H200[(8, 1024, 1024, True)]}
    # 2000 panel-steps save 2000 x 8.6 ms = 17.2 s, more than the 12.3 s warm compile.
    assert compile_pays(big, h200) and auto(big, h200)
    assert not compile_pays(course, h200)  # 3.4 s saved: not worth 12.3 s
    assert not compile_pays(big, None) and not compile_pays(big, {}) and not compile_pays({}, h200)
    # Never compiled here: the kernels are not in the cache, and a cold compile blocks.
    eager_only = {shape: ShapeTimings(eager=0.0376, compiled=0.0290)}
    assert not compile_pays(big, eager_only) and not auto(big, eager_only)
    # Compiled here once (cold), warm compile not measured yet: the H200's figure stands in.
    cold_only = {shape: ShapeTimings(eager=0.0376, compiled=0.0290, cold_compile=160.0)}
    assert compile_pays(big, cold_only) == (2000 * (0.0376 - 0.0290) > WARM_COMPILE_PRIOR_S)
    # A slow warm compile measured here wins over the prior.
    slow = {shape: ShapeTimings(eager=0.0376, compiled=0.0290, warm_compile=30.0)}
    assert not compile_pays(big, slow)
    # Each batch shape is a graph of its own to compile: 41 panels make batches of 7 and 6,
    # and every one of them must have been measured.
    split = work(41, 50)
    assert split == {(7, 64, 64, True): 1750, (6, 64, 64, True): 300}
    assert not compile_pays(split, {(7, 64, 64, True): h200[shape]})
    # An explicit --compile / --no-compile is the writer's, whatever was measured.
    assert S.TORCH_COMPILE in choose_speedups(device="cuda", dtype="fp16", loras=False,
                                              options=RuntimeOptions(compile=True),
                                              work=course, measured={})
    assert S.TORCH_COMPILE not in choose_speedups(device="cuda", dtype="fp16", loras=False,
                                                  options=RuntimeOptions(compile=False),
                                                  work=big, measured=h200)
    wide = "  - {id: wide, prompt: a wide cat, width: 128, guidance: 1}\n"
    assert work(1, 50, extra=wide) == {(1, 64, 64, True): 50, (1, 128, 64, False): 3}
    # Heun calls the UNet twice per step: 20 panels of 50 steps count as 2000 panel-steps.
    heun = unet_work(plan_batches(jobs(tmp_path, many(20, 50, "h", ", scheduler: Heun")), 8))
    assert heun == {(7, 64, 64, True): 1400, (6, 64, 64, True): 600}


def test_default_batch_size_by_device_and_free_memory():
    assert default_batch_size("cuda", 80e9) == 8
    assert default_batch_size("cuda:0", 30e9) == 4
    assert default_batch_size("cuda", 10e9) == 2
    assert default_batch_size("cuda") == 8  # plan: a large GPU is assumed, and says so
    assert (default_batch_size("mps"), default_batch_size("cpu")) == (4, 2)


def test_the_render_plan(tmp_path):
    js = jobs(tmp_path, many(40, 50))
    plan = plan_render(js, RuntimeOptions(), device="cuda", dtype="fp16", free_bytes=80e9)
    assert plan.batch_size == 8 and [len(b.jobs) for b in plan.batches] == [8] * 5
    assert not plan.compiles and plan.batch_of(js[9]) == 1  # nothing measured here yet
    measured = {(8, 64, 64, True): H200[(8, 1024, 1024, True)]}
    assert plan_render(js, RuntimeOptions(), device="cuda", dtype="fp16", free_bytes=80e9,
                       measured=measured).compiles
    assert plan_render(js[:8], RuntimeOptions(), device="cuda", dtype="fp16").batch_of(js[9]) \
        is None
    small = plan_render(js[:8], RuntimeOptions(batch_size=3), device="cuda", dtype="fp16")
    assert [len(b.jobs) for b in small.batches] == [3, 3, 2] and not small.compiles
    assert small.refusal is None


def test_fp8_refuses_several_lora_sets_in_one_render(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(b"a")
    js = jobs(tmp_path, "  - {id: p1, characters: [alice], prompt: x}\n"
                        "  - {id: p2, prompt: x}\n",
              extra="characters:\n  alice: {loras: [{file: a.safetensors, weight: 0.8}]}\n")
    plan = plan_render(js, RuntimeOptions(), device="cuda", dtype="fp8")
    assert "these use 2 sets: none; alice 0.8" in plan.refusal
    assert plan_render(js[:1], RuntimeOptions(), device="cuda", dtype="fp8").refusal is None
    # Live adapters (--no-fuse) are not merged: nothing to refuse.
    assert plan_render(js, RuntimeOptions(fuse=False), device="cuda",
                       dtype="fp8").refusal is None


def test_runtime_options_are_checked_and_merged_with_the_story_once(tmp_path):
    with pytest.raises(ValueError):
        RuntimeOptions(compile="false")  # not a truthy string
    with pytest.raises(ValueError):
        RuntimeOptions(compile=1)
    with pytest.raises(ValueError):
        RuntimeOptions(dtype="fp64")
    path = tmp_path / "story.yaml"
    path.write_text("version: 1\nmodel: tiny-sdxl\nrender: {compile: false, batch_size: 3}\n"
                    "panels:\n  - {id: a, prompt: x}\n", encoding="utf-8")
    render = load_story(path).spec.render
    merged = RuntimeOptions().with_story(render)
    assert (merged.compile, merged.fuse, merged.tune, merged.batch_size) == (False, True, True, 3)
    assert RuntimeOptions(fuse=False).with_story(render).fuse is False
    # The command line, where given, replaces the story's compile, tune and batch size.
    given = RuntimeOptions(compile=True, tune=False, batch_size=5).with_story(render)
    assert (given.compile, given.tune, given.batch_size) == (True, False, 5)
    path.write_text("version: 1\nmodel: tiny-sdxl\nrender: {tune: false, fuse: false}\n"
                    "panels:\n  - {id: a, prompt: x}\n", encoding="utf-8")
    untuned = load_story(path).spec.render
    assert RuntimeOptions().with_story(untuned).compile == "auto"
    assert RuntimeOptions().with_story(untuned).tune is False
    assert RuntimeOptions(tune=True).with_story(untuned).tune is True
    assert RuntimeOptions().with_story(untuned).fuse is False
