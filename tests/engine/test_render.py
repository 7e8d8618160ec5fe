"""Rendering on CPU with the built-in tiny models, through the real diffusers code paths.

Stated bound (README "Reproducibility"): a panel rendered in a batch differs from the same panel
rendered alone by at most BATCH_TOLERANCE levels of 255 per channel (float rounding of batched
matrix products; measured 1 on CPU fp32).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import run_cli  # noqa: E402
from storyboard.engine.loading import ModelError, family_from_checkpoint, load_model  # noqa: E402
from storyboard.engine.session import LoraError, ModelState, Session, render_jobs  # noqa: E402
from storyboard.engine.speed.apply import apply_speedups  # noqa: E402
from storyboard.engine.speed.artifacts import CompiledMethod  # noqa: E402
from storyboard.errors import UserError  # noqa: E402
from storyboard.options import RuntimeOptions  # noqa: E402
from storyboard.output.pnginfo import a1111_parameters, read_panel_png  # noqa: E402
from storyboard.plan import ModelRef, Speedup, compile_story  # noqa: E402
from storyboard.plan.speed import choose_speedups  # noqa: E402
from storyboard.samplers import sampler_names  # noqa: E402
from storyboard.story import load_story  # noqa: E402

BATCH_TOLERANCE = 2
QUIET = RuntimeOptions(progress=False)

# One engine session per loaded model, as a long-lived process keeps one: adapters load once
# and the weights' state is known across renders.
_SESSIONS: dict[int, tuple] = {}


def state_of(model, options: RuntimeOptions = QUIET) -> ModelState:
    if id(model) not in _SESSIONS:
        _SESSIONS[id(model)] = (model, Session())
    return _SESSIONS[id(model)][1].adopt(model, options)


def speed_up(model, names, *, backend: str = "inductor") -> ModelState:
    """Apply ``names`` to ``model`` as a render in its session would."""
    state = state_of(model)
    state.speed = apply_speedups(model, [Speedup(n) for n in names], backend=backend)
    return state


def render_with(jobs, options: RuntimeOptions = QUIET, *, model=None, batch_size=None,
                on_event=None):
    """Render ``jobs`` (in ``model``'s session when given); yields the results."""
    if batch_size:
        options = replace(options, batch_size=batch_size)
    session = None
    if model is not None:
        state_of(model, options)
        session = _SESSIONS[id(model)][1]
    return render_jobs(jobs, options, on_event=on_event, session=session)


pytestmark = pytest.mark.usefixtures("session_cache")


def write_story(folder: Path, body: str, model: str = "tiny-sdxl") -> Path:
    path = folder / "story.yaml"
    path.write_text(f"version: 1\nmodel: {model}\ndefaults:\n  steps: 3\n  width: 64\n"
                    f"  height: 64\n{body}", encoding="utf-8")
    return path


def jobs_of(path: Path):
    return compile_story(load_story(path))


def pixels(result) -> np.ndarray:
    return np.asarray(result.image).astype(np.int16)


def render_all(jobs, **kw):
    results = {r.job.panel: r for r in render_with(jobs, QUIET, **kw)}
    assert all(r.status == "rendered" for r in results.values()), \
        {k: r.error for k, r in results.items()}
    return results


PANELS4 = """panels:
  - {id: a, prompt: a red cat on a sofa, seed: 1}
  - {id: b, prompt: a blue boat on the sea, seed: 2}
  - {id: c, prompt: a girl reading in the rain, seed: 3}
  - {id: d, prompt: a lighthouse at night, seed: 4}
"""


# --- models --------------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("tiny-sdxl", "StableDiffusionXLPipeline"),
                                       ("tiny-kolors", "KolorsPipeline")])
def test_builtin_models_build_once_and_load_through_from_pretrained(name, cls):
    from storyboard.engine import builtin as tiny

    folder = tiny.builtin_folder(name)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == cls
    stamp = (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    model = load_model(ModelRef("builtin", name), QUIET)
    assert type(model.pipe).__name__ == cls
    assert (model.device, model.dtype) == ("cpu", "fp32")
    assert tiny.builtin_folder(name) == folder
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def test_builtin_recipe_is_deterministic(tmp_path):
    from storyboard.engine import builtin as tiny

    def digest(folder: Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes()
                for p in sorted(folder.rglob("*.safetensors"))}

    tiny._build_sdxl(tmp_path / "a")
    assert digest(tmp_path / "a") == digest(tiny.builtin_folder("tiny-sdxl"))


def test_local_folder_and_family_detection(tmp_path):
    from storyboard.engine import builtin as tiny

    shutil.copytree(tiny.builtin_folder("tiny-kolors"), tmp_path / "my-kolors")
    story = write_story(tmp_path, "panels:\n  - {id: a, prompt: 二次元，一只猫, seed: 5}\n",
                        model="./my-kolors")
    (job,) = jobs_of(story)
    assert job.model.kind == "folder" and job.model.family == "kolors"
    (result,) = render_all([job]).values()
    assert result.image.size == (64, 64)


def test_repo_id_loads_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    """A repo id resolves through huggingface_hub's cache layout, as a downloaded model does."""
    from storyboard.engine import builtin as tiny

    hub = tmp_path / "hub"
    snapshot = hub / "models--acme--tiny-sdxl" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny.builtin_folder("tiny-sdxl"), snapshot)
    (hub / "models--acme--tiny-sdxl" / "refs").mkdir()
    (hub / "models--acme--tiny-sdxl" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    model = load_model(ModelRef("repo", "acme/tiny-sdxl", revision="main"), QUIET)
    assert model.family == "sdxl"


def test_missing_repo_offline_says_how_to_get_it(tmp_path):
    story = write_story(tmp_path, "panels:\n  - {id: a, prompt: x}\n", model="acme/nothing")
    with pytest.raises(ModelError) as info:
        render_all(jobs_of(story))
    message = str(info.value.message)
    assert "acme/nothing" in message and "hf download acme/nothing" in message
    assert info.value.exit_code == 2

    result = run_cli("render", "-q", str(story))
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_missing_or_broken_model_folder(tmp_path):
    with pytest.raises(ModelError, match="no model_index.json"):
        load_model(ModelRef("folder", str(tmp_path)), QUIET)
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="bad.safetensors is unreadable: not a readable "
                                         ".safetensors"):
        load_model(ModelRef("file", str(tmp_path / "bad.safetensors")), QUIET)


def test_single_file_family_detection(tmp_path):
    from safetensors.torch import save_file

    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)},
              str(tmp_path / "xl.safetensors"))
    save_file({"cond_stage_model.transformer.x": torch.zeros(2)}, str(tmp_path / "v1.safetensors"))
    save_file({"something.else": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    assert family_from_checkpoint(tmp_path / "xl.safetensors") == "sdxl"
    assert family_from_checkpoint(tmp_path / "v1.safetensors") == "sd15"
    with pytest.raises(ModelError, match="not an SD1.5 or SDXL checkpoint"):
        family_from_checkpoint(tmp_path / "odd.safetensors")


# --- seeds and batching --------------------------------------------------------------------


def test_same_seed_same_pixels_and_seeds_matter(tmp_path):
    jobs = jobs_of(write_story(tmp_path, PANELS4))
    first = render_all(jobs, batch_size=4)
    again = render_all(jobs, batch_size=4)
    for pid in first:
        assert np.array_equal(pixels(first[pid]), pixels(again[pid]))
    assert np.abs(pixels(first["a"]) - pixels(first["b"])).max() > 20


def test_batch_versus_alone_within_stated_bound(tmp_path):
    jobs = jobs_of(write_story(tmp_path, PANELS4))
    batched = render_all(jobs, batch_size=4)
    assert {r.batch_size for r in batched.values()} == {4}
    alone = render_all(jobs, batch_size=1)
    reordered = render_all(list(reversed(jobs)), batch_size=3)
    for pid in batched:
        assert np.abs(pixels(batched[pid]) - pixels(alone[pid])).max() <= BATCH_TOLERANCE
        assert np.abs(pixels(reordered[pid]) - pixels(alone[pid])).max() <= BATCH_TOLERANCE


def test_pixels_quantised_on_the_device_match_diffusers_own_pil_output(tmp_path):
    """The renderer asks the pipeline for tensors and makes the 8-bit pixels itself; they must
    be exactly the pixels diffusers' output_type="pil" gives for the same call."""
    from diffusers.image_processor import VaeImageProcessor

    from storyboard.engine.runner import to_pil

    # Values that land on and around every level boundary, in both precisions the GPU uses.
    levels = (torch.arange(256 * 8, dtype=torch.float64) / (255 * 8)).clamp(0, 1)
    grid = torch.cat([levels, torch.rand(3 * 64 * 64 * 4 - levels.numel(), dtype=torch.float64)])
    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        images = grid.to(dtype).reshape(4, 3, 64, 64)
        ours = [np.asarray(i) for i in to_pil(images)]
        theirs = [np.asarray(i) for i in VaeImageProcessor(do_normalize=False).postprocess(
            images, output_type="pil")]
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), dtype

    # End to end: one panel through the renderer, then the same call asking for PIL images.
    jobs = jobs_of(write_story(tmp_path, PANELS4))[:1]
    model = load_model(jobs[0].model, QUIET)
    (ours,) = render_all(jobs, model=model).values()
    job = jobs[0]
    theirs = model.pipe(prompt=[job.prompt], negative_prompt=[job.negative_prompt],
                        num_inference_steps=job.steps, guidance_scale=job.guidance,
                        width=job.width, height=job.height,
                        generator=[torch.Generator("cpu").manual_seed(job.seed)]).images[0]
    assert np.array_equal(np.asarray(ours.image), np.asarray(theirs))


def test_global_rng_does_not_leak_into_panels(tmp_path):
    jobs = jobs_of(write_story(tmp_path, PANELS4))[:1]
    torch.manual_seed(123)
    a = render_all(jobs)["a"]
    torch.manual_seed(999)
    b = render_all(jobs)["a"]
    assert np.array_equal(pixels(a), pixels(b))


def test_incompatible_jobs_are_batched_separately(tmp_path):
    story = write_story(tmp_path, """panels:
  - {id: a, prompt: cat, seed: 1}
  - {id: b, prompt: dog, seed: 2, width: 128}
  - {id: c, prompt: bird, seed: 3, guidance: 2}
  - {id: d, prompt: fish, seed: 4}
""")
    results = render_all(jobs_of(story), batch_size=8)
    assert results["a"].batch_size == 2 and results["d"].batch_size == 2
    assert results["b"].batch_size == 1 and results["c"].batch_size == 1
    assert results["b"].image.size == (128, 64)


@pytest.mark.parametrize("sampler", sampler_names())
def test_every_sampler_renders_reproducibly(tmp_path, sampler):
    story = write_story(tmp_path, f"""panels:
  - {{id: a, prompt: a cat, seed: 7, scheduler: "{sampler}"}}
  - {{id: b, prompt: a cat, seed: 8, scheduler: "{sampler}"}}
""")
    jobs = jobs_of(story)
    first = render_all(jobs, batch_size=2)
    torch.manual_seed(4321)  # stochastic samplers must not draw from the global RNG
    second = render_all(jobs, batch_size=2)
    for pid in ("a", "b"):
        image = pixels(first[pid])
        assert image.std() > 1, "a real image, not a constant"
        assert np.abs(image - pixels(second[pid])).max() <= BATCH_TOLERANCE
    expected = "Euler" if sampler == "Default" else sampler  # the tiny models' own is Euler
    assert first["a"].sampler == expected


def test_samplers_differ(tmp_path):
    story = write_story(tmp_path, """panels:
  - {id: a, prompt: a cat, seed: 7, scheduler: Euler}
  - {id: b, prompt: a cat, seed: 7, scheduler: Euler a}
  - {id: c, prompt: a cat, seed: 7, scheduler: DPM++ 2M Karras}
""")
    r = render_all(jobs_of(story))
    assert np.abs(pixels(r["a"]) - pixels(r["b"])).max() > 5
    assert np.abs(pixels(r["a"]) - pixels(r["c"])).max() > 5


# --- LoRA ----------------------------------------------------------------------------------


def make_lora(folder: Path, name: str, seed: int, cross_dim: int | None = None,
              targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")) -> Path:
    """A real diffusers-format LoRA for the tiny SDXL UNet (or, with ``cross_dim``, for a UNet
    of another shape, as an SD1.5 LoRA is to SDXL)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from storyboard.engine import builtin as tiny

    unet = UNet2DConditionModel.from_pretrained(tiny.builtin_folder("tiny-sdxl"),
                                                subfolder="unet")
    if cross_dim:
        config = dict(unet.config)
        config["cross_attention_dim"] = cross_dim
        unet = UNet2DConditionModel.from_config(config)
    torch.manual_seed(seed)
    # init_lora_weights=False: B starts random too, so the LoRA really changes the output.
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=list(targets)))
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out = folder / name
    StableDiffusionXLPipeline.save_lora_weights(str(out), unet_lora_layers=state)
    path = folder / f"{name}.safetensors"
    (out / "pytorch_lora_weights.safetensors").rename(path)
    shutil.rmtree(out)
    return path


LORA_STORY = """characters:
  alice: {loras: [{file: alice.safetensors, weight: 0.8}]}
  bob: {loras: [bob.safetensors]}
panels:
  - {id: none, prompt: a garden, seed: 11}
  - {id: with-alice, characters: [alice], prompt: a garden, seed: 11}
  - {id: with-bob, characters: [bob], prompt: a garden, seed: 11}
  - {id: both, characters: [alice, bob], prompt: a garden, seed: 11}
  - {id: none-again, prompt: a garden, seed: 11}
"""


def test_lora_changes_exactly_the_panels_of_its_character(tmp_path):
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    r = render_all(jobs_of(write_story(tmp_path, LORA_STORY)), batch_size=4)
    base = pixels(r["none"])
    assert np.array_equal(base, pixels(r["none-again"]))
    for pid in ("with-alice", "with-bob", "both"):
        assert np.abs(pixels(r[pid]) - base).max() > 10, pid
    assert np.abs(pixels(r["with-alice"]) - pixels(r["with-bob"])).max() > 10
    assert np.abs(pixels(r["both"]) - pixels(r["with-alice"])).max() > 10

    # The same panels in a story without any LoRA: the base model, to the pixel.
    plain = write_story(tmp_path, "panels:\n  - {id: none, prompt: a garden, seed: 11}\n")
    assert np.abs(pixels(render_all(jobs_of(plain))["none"]) - base).max() <= BATCH_TOLERANCE


def test_lora_weight_is_applied(tmp_path):
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    r08 = render_all(jobs_of(write_story(tmp_path, LORA_STORY)))["with-alice"]
    r10 = render_all(jobs_of(write_story(tmp_path, LORA_STORY.replace("weight: 0.8",
                                                                       "weight: 1.0"))))
    assert np.abs(pixels(r08) - pixels(r10["with-alice"])).max() > 2


def test_merged_loras_match_live_adapters_and_leave_no_trace(tmp_path):
    """The default merges each batch's LoRAs into the weights; --no-fuse keeps them as live
    adapters. Same panels either way (float rounding), and the base weights come back exactly,
    whatever order the batches ran in."""
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    jobs = jobs_of(write_story(tmp_path, LORA_STORY))
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    base = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}
    merged = {r.job.panel: r for r in render_with(jobs, QUIET, model=model, batch_size=1)}
    assert state_of(model).adapters.merge and state_of(model).adapters.merged is not None
    live = render_all(jobs, batch_size=1)
    for pid in merged:
        assert np.abs(pixels(merged[pid]) - pixels(live[pid])).max() <= BATCH_TOLERANCE, pid

    # Another order on the same model: the same pixels, to the bit.
    again = {r.job.panel: r for r in render_with(jobs[::-1], QUIET, model=model, batch_size=1)}
    for pid in merged:
        assert np.array_equal(pixels(again[pid]), pixels(merged[pid])), pid
    state_of(model).adapters.activate(())
    after = {k.replace(".base_layer", ""): v for k, v in model.pipe.unet.state_dict().items()
             if "lora_" not in k}
    assert after.keys() == base.keys()
    assert all(torch.equal(after[k], v) for k, v in base.items())


def test_live_adapters_with_no_fuse(tmp_path):
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    options = RuntimeOptions(progress=False, fuse=False)
    r = {x.job.panel: x for x in render_with(jobs_of(write_story(tmp_path, LORA_STORY)),
                                              options, model=model)}
    state = _SESSIONS[id(model)][1].adopt(model, options)
    assert not state.adapters.merge and state.adapters.merged is None
    assert np.abs(pixels(r["with-alice"]) - pixels(r["none"])).max() > 10


@pytest.mark.parametrize("with_lora", [False, True], ids=["plain", "lora"])
def test_compiled_speedups_trace_and_match_eager(tmp_path, with_lora):
    """The CUDA speed-ups (channels_last, fused QKV, torch.compile of UNet and VAE decoder) on
    CPU through dynamo and AOTAutograd ("aot_eager": the same graph capture, no kernel
    generation): no graph breaks that fail, and the panels match eager rendering."""
    torch._dynamo.reset()
    body = PANELS4
    if with_lora:
        make_lora(tmp_path, "alice", 1)
        make_lora(tmp_path, "bob", 2)
        body = LORA_STORY
    jobs = jobs_of(write_story(tmp_path, body))
    eager = render_all(jobs, batch_size=2)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    # What a render on a GPU gets (the choice is by device name).
    wanted = list(choose_speedups(device="cuda", dtype="fp16", options=RuntimeOptions(
        compile=True), loras=with_lora, work={}))
    # Kernel tuning is inductor's: with another backend it is left out, and the list says so.
    assert Speedup.TUNED_KERNELS in wanted
    wanted.remove(Speedup.TUNED_KERNELS)
    if with_lora:
        state_of(model).adapters.load(jobs)
        assert Speedup.FUSED_QKV not in wanted
    assert speed_up(model, wanted, backend="aot_eager").speed.applied == wanted
    assert isinstance(model.pipe.unet.forward, CompiledMethod)  # saved artifacts
    fast = {r.job.panel: r for r in render_with(jobs, QUIET, model=model, batch_size=2)}
    for pid in eager:
        assert fast[pid].status == "rendered"
        assert np.abs(pixels(fast[pid]) - pixels(eager[pid])).max() <= BATCH_TOLERANCE, pid
    torch._dynamo.reset()


def test_each_batch_shape_compiles_to_a_static_graph(tmp_path):
    """A second batch size gets a graph of its own with fixed shapes (cached on disk like the
    first), not dynamo's automatic dynamic-shape graph, which is compiled from scratch."""
    torch._dynamo.reset()
    symbolic = []

    def backend(gm, example_inputs):  # records whether dynamo made any size symbolic
        values = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        symbolic.append(any(isinstance(v, torch.SymInt) or (isinstance(v, torch.Tensor) and any(
            isinstance(size, torch.SymInt) for size in v.shape)) for v in values))
        return gm.forward

    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    speed_up(model, ["torch.compile"], backend=backend)
    jobs = jobs_of(write_story(tmp_path, PANELS4))
    assert len(list(render_with(jobs[:2], QUIET, model=model, batch_size=2))) == 2
    first = len(symbolic)
    assert len(list(render_with(jobs[2:3], QUIET, model=model, batch_size=1))) == 1
    assert first and len(symbolic) > first and not any(symbolic)
    torch._dynamo.reset()


def test_lora_loaded_after_fused_qkv_unfuses_first(tmp_path):
    """A model sped up without LoRAs, then given a LoRA story: the fused projections go (the
    adapters attach to to_q/to_k/to_v) and the LoRA really acts."""
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    speed_up(model, ["channels_last", "fused_qkv"])
    r = {x.job.panel: x for x in render_with(jobs_of(write_story(tmp_path, LORA_STORY)),
                                              QUIET, model=model)}
    assert state_of(model).speed.applied == [Speedup.CHANNELS_LAST]
    assert np.abs(pixels(r["with-alice"]) - pixels(r["none"])).max() > 10
    reference = render_all(jobs_of(write_story(tmp_path, LORA_STORY)))
    assert np.abs(pixels(r["with-alice"]) - pixels(reference["with-alice"])).max() \
        <= BATCH_TOLERANCE


def test_wrong_lora_is_named_before_rendering(tmp_path):
    make_lora(tmp_path, "alice", 1, cross_dim=48)  # another model's shapes
    make_lora(tmp_path, "bob", 2)
    events = []
    with pytest.raises(LoraError) as info:
        list(render_with(jobs_of(write_story(tmp_path, LORA_STORY)), QUIET,
                         on_event=events.append))
    message = info.value.message
    assert "character 'alice'" in message and "alice.safetensors" in message
    assert "bob" not in message.split("\n", 1)[1]
    assert not any(e["event"] in ("batch_start", "step") for e in events)

    result = run_cli("render", "-q", str(tmp_path / "story.yaml"))
    assert result.exit_code == 2 and "alice.safetensors" in result.output


def test_lora_with_unknown_keys_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    path = make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    state = load_file(str(path))
    key = sorted(state)[0]
    bogus = re.sub(r"(down|up)_blocks\.\d+", r"\1_blocks.7", key)
    assert bogus != key
    state[bogus] = state[key].clone()
    save_file(state, str(path))
    with pytest.raises(LoraError, match="alice"):
        list(render_with(jobs_of(write_story(tmp_path, LORA_STORY)), QUIET))


def test_missing_lora_file_is_a_validation_error(tmp_path):
    story = write_story(tmp_path, LORA_STORY)
    result = run_cli("render", str(story))
    assert result.exit_code == 2
    assert "LoRA file not found: 'alice.safetensors'" in result.output


# --- out of memory -------------------------------------------------------------------------


def test_out_of_memory_splits_the_batch_and_reports_what_still_fails(tmp_path):
    jobs = jobs_of(write_story(tmp_path, PANELS4))
    model = load_model(jobs[0].model, QUIET)
    original = model.pipe

    class OOMPipe:
        """The real pipeline, but its memory holds one panel, and never panel 'c'."""

        def __getattr__(self, name):
            return getattr(original, name)

        def __setattr__(self, name, value):
            setattr(original, name, value)

        def __call__(self, **kwargs):
            if len(kwargs["prompt"]) > 1 or "girl" in kwargs["prompt"][0]:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return original(**kwargs)

    events = []
    results = {r.job.panel: r for r in render_with(jobs, QUIET, batch_size=4,
                                                    model=replace(model, pipe=OOMPipe()),
                                                    on_event=events.append)}
    assert {p: r.status for p, r in results.items()} == {
        "a": "rendered", "b": "rendered", "c": "failed", "d": "rendered"}
    assert "out of GPU memory" in results["c"].error
    assert all(r.batch_size == 1 for r in results.values())
    assert sum(e["event"] == "oom_split" for e in events) == 3

    alone = render_all(jobs, batch_size=1)
    for pid in ("a", "b", "d"):
        assert np.array_equal(pixels(results[pid]), pixels(alone[pid]))


# --- PNG metadata and the CLI --------------------------------------------------------------


def parse_a1111(text: str) -> tuple[str, str, dict[str, str]]:
    """What WebUI's PNG Info does (modules/infotext_utils.parse_generation_parameters)."""
    *lines, last = text.strip().split("\n")
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    pattern = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
    fields = {k: (json.loads(v) if v.startswith('"') else v) for k, v in pattern.findall(last)}
    return "\n".join(prompt), "\n".join(negative), fields


def test_cli_render_writes_pngs_with_a1111_parameters(tmp_path):
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    story = write_story(tmp_path, LORA_STORY.replace("a garden, seed: 11}",
                                                     "一个花园, seed: 11, scheduler: Euler a}"))
    result = run_cli("render", "-q", str(story), "--only", "both,none")
    assert result.exit_code == 0, result.output
    panels = tmp_path / "story.out" / "panels"
    assert sorted(p.name for p in panels.iterdir()) == ["both.png", "none.png"]

    from PIL import Image

    with Image.open(panels / "both.png") as im:
        assert im.size == (64, 64)
        parameters = im.info["parameters"]
        record = json.loads(im.info["storyboard"])
    prompt, negative, fields = parse_a1111(parameters)
    assert prompt == "一个花园"
    assert fields["Steps"] == "3" and fields["Sampler"] == "Euler a"
    assert fields["CFG scale"] == "5" and fields["Seed"] == "11" and fields["Size"] == "64x64"
    assert fields["Model"] == "tiny-sdxl"
    assert re.fullmatch(r"alice: [0-9a-f]{12}, bob: [0-9a-f]{12}", fields["Lora hashes"])
    assert record["panel"] == "both" and record["story"] == str(story.resolve())
    assert record["hash"] == next(j.hash for j in jobs_of(story) if j.panel == "both")
    assert parameters == a1111_parameters(jobs_of(story)[3], "Euler a")


def test_a1111_text_has_negative_prompt_line():
    from storyboard.plan import PanelJob

    job = PanelJob(panel="p", index=0, prompt="a cat", negative_prompt="blurry, ugly", seed=5,
                   seed_derived=False, width=1024, height=1024, steps=50, guidance=4.0,
                   scheduler="DPM++ 2M Karras", model=ModelRef("repo", "org/m"), loras=(),
                   characters=(), caption="")
    assert a1111_parameters(job, "DPM++ 2M Karras") == (
        "a cat\nNegative prompt: blurry, ugly\nSteps: 50, Sampler: DPM++ 2M Karras, "
        "CFG scale: 4, Seed: 5, Size: 1024x1024, Model: org/m, Version: storyboard 0.1.0")


def test_inspect_and_render_from_png(tmp_path):
    story = write_story(tmp_path, PANELS4)
    assert run_cli("render", "-q", "--only", "c", str(story)).exit_code == 0
    png = tmp_path / "story.out" / "panels" / "c.png"
    shown = run_cli("inspect", str(png))
    assert shown.exit_code == 0
    assert shown.output.startswith("a girl reading in the rain\nSteps: 3, Sampler: Euler")
    assert "storyboard: panel c of" in shown.output

    story.unlink()  # the PNG alone is enough
    again = run_cli("render", "-q", "--from-png", str(png))
    assert again.exit_code == 0, again.output
    redo = tmp_path / "story.out" / "panels" / "c.rerender.png"
    from PIL import Image

    a = np.asarray(Image.open(png)).astype(int)
    b = np.asarray(Image.open(redo)).astype(int)
    assert np.abs(a - b).max() <= BATCH_TOLERANCE
    assert read_panel_png(redo)[1].hash == read_panel_png(png)[1].hash


def test_render_from_png_refuses_foreign_or_tampered_files(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    result = run_cli("render", "--from-png", str(plain))
    assert result.exit_code == 2 and "not made by storyboard" in result.output
    assert run_cli("inspect", str(plain)).exit_code == 2

    story = write_story(tmp_path, PANELS4)
    run_cli("render", "-q", "--only", "a", str(story))
    png = tmp_path / "story.out" / "panels" / "a.png"
    record = read_panel_png(png)[1].model_dump()
    record["job"]["seed"] += 1
    info = PngInfo()
    info.add_text("storyboard", json.dumps(record))
    Image.open(png).save(tmp_path / "edited.png", pnginfo=info)
    result = run_cli("render", "--from-png", str(tmp_path / "edited.png"))
    assert result.exit_code == 2 and "does not match its hash" in result.output


def test_render_json_events(tmp_path):
    story = write_story(tmp_path, PANELS4)
    result = run_cli("render", "--json", "--only", "a,b", "--batch-size", "2", str(story))
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["plan", "model_loaded"] and kinds[-1] == "done"
    assert kinds.count("step") == 3 and kinds.count("panel") == 2
    assert events[-1]["rendered"] == 2 and events[-1]["failed"] == 0


def test_unknown_panel_in_only(tmp_path):
    story = write_story(tmp_path, PANELS4)
    result = run_cli("render", "--only", "a,zz", str(story))
    assert result.exit_code == 2 and "no panel named 'zz'" in result.output


def test_cuda_requested_without_gpu_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    story = write_story(tmp_path, PANELS4)
    result = run_cli("render", "--device", "cuda", str(story))
    assert result.exit_code == 2 and "no CUDA GPU" in result.output


def test_user_error_type():
    assert issubclass(LoraError, UserError) and issubclass(ModelError, UserError)


# --- prompt length warnings (validate/plan, no torch needed) -------------------------------

LONG_EN = ("a girl sits in a concert hall full of people watching singers on a bright stage "
           "with lights and music and a crowd of happy fans waving glowing sticks in the dark "
           "while the band plays loud songs late into the night and she dreams of the day she "
           "will sing there too with her friends, the final words are here")


def test_long_prompt_warns_with_the_cut_for_clip(tmp_path):
    from storyboard.engine import builtin as tiny

    tiny.builtin_folder("tiny-sdxl")
    story = write_story(tmp_path, f"panels:\n  - id: long\n    prompt: {LONG_EN}\n"
                                  "  - {id: short, prompt: a cat}\n")
    result = run_cli("validate", str(story))
    assert result.exit_code == 0
    warning = next(line for line in result.output.splitlines() if "warning" in line)
    assert ":9:13: warning: panels[0].prompt: panel 'long'" in warning
    assert "the sdxl text encoder reads 77, so it ignores:" in warning
    assert "short" not in result.output.split("ok")[0]
    assert run_cli("validate", "--strict", str(story)).exit_code == 2


def test_long_prompt_warns_for_kolors(tmp_path):
    from storyboard.engine import builtin as tiny

    tiny.builtin_folder("tiny-kolors")
    rare = "鹦鹉螺号潜艇穿越珊瑚礁" * 12  # characters the tiny tokenizer never saw: ~3 tokens each
    story = write_story(tmp_path, f"panels:\n  - id: deep\n    prompt: {rare}终\n",
                        model="tiny-kolors")
    result = run_cli("plan", str(story))
    assert "the kolors text encoder reads 256, so it ignores:" in result.output
    assert "终" in result.output.split("ignores:")[1]


def test_no_tokenizer_on_disk_means_no_warning_and_no_build(tmp_path, monkeypatch):
    monkeypatch.setenv("STORYBOARD_CACHE", str(tmp_path / "empty-cache"))
    story = write_story(tmp_path, f"panels:\n  - id: long\n    prompt: {LONG_EN}\n")
    result = run_cli("validate", str(story))
    assert result.exit_code == 0 and "warning" not in result.output
    assert not (tmp_path / "empty-cache").exists()


# --- FP8 (opt-in; runs on Ada/Hopper GPUs only, so here: where it is refused and why) --------


FP8 = "{builtin: tiny-sdxl, dtype: fp8}"


def test_fp8_is_refused_where_it_cannot_run(tmp_path):
    story = write_story(tmp_path, PANELS4, model=FP8)
    result = run_cli("build", "-q", str(story))
    assert result.exit_code == 2, result.output
    assert "dtype fp8 needs an NVIDIA GPU" in result.output and "Traceback" not in result.output
    plain = write_story(tmp_path, PANELS4)
    result = run_cli("build", "-q", "--dtype", "fp8", str(plain))
    assert result.exit_code == 2 and "dtype fp8" in result.output


def test_fp8_is_part_of_the_panel_hash(tmp_path):
    fp8 = jobs_of(write_story(tmp_path, PANELS4, model=FP8))
    fp16 = jobs_of(write_story(tmp_path, PANELS4, model="{builtin: tiny-sdxl, dtype: fp16}"))
    assert {j.hash for j in fp8}.isdisjoint(j.hash for j in fp16)


def test_fp8_with_several_lora_sets_is_refused_before_rendering(tmp_path):
    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    # As if loaded on a GPU that has FP8.
    model = replace(load_model(ModelRef("builtin", "tiny-sdxl"), QUIET), dtype="fp8")
    events = []
    with pytest.raises(LoraError, match="these use 4 sets") as info:
        list(render_with(jobs_of(write_story(tmp_path, LORA_STORY)), QUIET, model=model,
                         on_event=events.append))
    assert "alice 0.8" in info.value.message and "none" in info.value.message
    assert not any(e["event"] in ("batch_start", "step") for e in events)
    assert state_of(model).speed is None  # nothing was quantized


def test_fp8_model_reused_with_other_loras_is_refused_up_front(tmp_path, monkeypatch):
    import storyboard.engine.session as session_module

    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    model = replace(load_model(ModelRef("builtin", "tiny-sdxl"), QUIET), dtype="fp8")

    def quantized(model, names, backend, into):  # the record only (no GPU here)
        into.applied.extend(names)
        return into

    monkeypatch.setattr(session_module, "apply_speedups", quantized)
    jobs = jobs_of(write_story(tmp_path, LORA_STORY))
    alice = [j for j in jobs if j.panel == "with-alice"]
    assert [r.status for r in render_with(alice, QUIET, model=model)] == ["rendered"]
    adapters = state_of(model).adapters
    assert adapters.frozen and adapters.merged == (("alice", 0.8),)
    events = []
    with pytest.raises(LoraError, match=r"these panels use none, not the same as the render "
                                        r"before on this model \(alice 0.8\)"):
        list(render_with([j for j in jobs if j.panel == "none"], QUIET, model=model,
                         on_event=events.append))
    assert not any(e["event"] == "batch_start" for e in events)


def test_an_fp8_model_takes_no_new_lora_even_when_a_later_speedup_failed(tmp_path,
                                                                         monkeypatch):
    """Quantized, then torch.compile failed: the weights are FP8 all the same, so the session
    must refuse to merge other LoRAs into them afterwards."""
    import storyboard.engine.session as session_module

    make_lora(tmp_path, "alice", 1)
    make_lora(tmp_path, "bob", 2)
    model = replace(load_model(ModelRef("builtin", "tiny-sdxl"), QUIET), dtype="fp8")

    def quantized_then_failed(model, names, backend, into):
        into.applied.append(Speedup.FP8)
        raise RuntimeError("compile failed")

    monkeypatch.setattr(session_module, "apply_speedups", quantized_then_failed)
    jobs = {j.panel: j for j in jobs_of(write_story(tmp_path, LORA_STORY))}
    with pytest.raises(RuntimeError, match="compile failed"):
        list(render_with([jobs["with-alice"]], QUIET, model=model))
    assert state_of(model).adapters.frozen
    with pytest.raises(LoraError, match="already in FP8"):
        list(render_with([jobs["with-bob"]], QUIET, model=model))


def test_a_session_keeps_a_model_per_way_of_using_its_loras():
    """--no-fuse keeps LoRAs live, the default merges them: another state of the model."""
    session = Session()
    ref = ModelRef("builtin", "tiny-sdxl")
    merged, _ = session.state(ref, QUIET)
    again, seconds = session.state(ref, replace(QUIET, batch_size=3))
    live, _ = session.state(ref, replace(QUIET, fuse=False))
    assert again is merged and seconds == 0.0
    assert live is not merged and merged.adapters.merge and not live.adapters.merge


def test_failed_speedup_leaves_a_truthful_record():
    if importlib.util.find_spec("torchao") is not None:
        pytest.skip("torchao is installed here; this checks the failure path without it")
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    from storyboard.engine.speed.apply import AppliedSpeedups

    names = [Speedup.CHANNELS_LAST, Speedup.FUSED_QKV, Speedup.FP8, Speedup.TORCH_COMPILE]
    done = AppliedSpeedups()
    with pytest.raises(ImportError):
        apply_speedups(model, names, into=done)
    # So a later LoRA unfuses first.
    assert done.applied == [Speedup.CHANNELS_LAST, Speedup.FUSED_QKV]


def test_lora_loaded_by_a_later_render_on_the_same_model(tmp_path):
    """The renderer stays with the model: a LoRA that arrives with a later render must not act
    twice (live and merged) nor leak into panels without it."""
    make_lora(tmp_path, "alice", 1, targets=("to_q",))
    make_lora(tmp_path, "bob", 2, targets=("to_k", "to_v"))  # layers alice left unwrapped
    jobs = jobs_of(write_story(tmp_path, LORA_STORY))
    pick = {j.panel: j for j in jobs}
    model = load_model(ModelRef("builtin", "tiny-sdxl"), QUIET)
    list(render_with([pick["with-alice"]], QUIET, model=model))
    later = {r.job.panel: r for r in render_with([pick["none"], pick["with-bob"]], QUIET,
                                                 model=model, batch_size=1)}
    fresh = render_all([pick["none"], pick["with-bob"]], batch_size=1)
    for pid in ("none", "with-bob"):
        assert np.abs(pixels(later[pid]) - pixels(fresh[pid])).max() <= BATCH_TOLERANCE, pid


def test_the_command_line_switches_reach_the_options(tmp_path, monkeypatch):
    story = write_story(tmp_path, "render: {compile: false, batch_size: 3}\n"
                                  "panels:\n  - {id: a, prompt: x}\n")
    result = run_cli("build", "--no-compile", "--no-fuse", "-q", str(story))
    assert result.exit_code == 0, result.output
    from storyboard.cli import flags, render_cmds

    seen = []
    monkeypatch.setattr(render_cmds, "_run_build",
                        lambda story, out, only, force, pages, f, no_train: seen.append(
                            (flags.runtime_options(f), no_train)))
    for args in ([], ["--tune", "--compile"], ["--no-tune", "--no-compile", "--batch-size",
                                                  "5", "--no-train"]):
        assert run_cli("build", *args, "-q", str(story)).exit_code == 0
    assert [(o.compile, o.tune, o.batch_size, no_train) for o, no_train in seen] == [
        ("auto", None, None, False), (True, True, None, False), (False, False, 5, True)]


def test_the_engine_renders_the_batches_it_planned(tmp_path):
    panels = "".join(f"  - {{id: p{i}, prompt: cat {i}, seed: {i}, steps: 2}}\n"
                     for i in range(3))
    jobs = jobs_of(write_story(tmp_path, "panels:\n" + panels))
    prepared = Session().prepare(jobs, replace(QUIET, batch_size=2))
    assert [b.panels for b in prepared.info.plan.batches] == [["p0", "p1"], ["p2"]]
    assert (prepared.info.device, prepared.info.dtype) == ("cpu", "fp32")
    assert prepared.info.speedups == () and not prepared.info.plan.compiles
    results = list(prepared.results())
    assert [(r.job.panel, r.batch_size) for r in results] == [("p0", 2), ("p1", 2), ("p2", 1)]


def test_a_sampler_whose_package_is_missing_is_reported_not_a_traceback(tmp_path, monkeypatch):
    import diffusers

    class Missing:  # what diffusers puts in place of a scheduler whose backend is missing
        def __getattr__(self, name):
            raise ImportError("DPMSolverSDEScheduler requires the torchsde library")

        def from_config(self, *a, **k):
            raise ImportError("DPMSolverSDEScheduler requires the torchsde library")

    monkeypatch.setattr(diffusers, "DPMSolverSDEScheduler", Missing())
    story = write_story(tmp_path, "panels:\n  - {id: a, prompt: x, scheduler: DPM++ SDE}\n")
    result = run_cli("render", str(story))
    assert "needs the torchsde package" in result.output, result.output
    assert "Traceback" not in result.output and result.exit_code != 0


def test_vae_tiling_option_reaches_the_vae_and_still_renders(tmp_path):
    options = RuntimeOptions(progress=False, vae_tiling=True)
    model = load_model(ModelRef("builtin", "tiny-sdxl"), options)
    assert model.pipe.vae.use_tiling
    jobs = jobs_of(write_story(tmp_path, PANELS4))[:1]
    (result,) = list(render_with(jobs, options, model=model))
    assert result.status == "rendered" and pixels(result).std() > 1
