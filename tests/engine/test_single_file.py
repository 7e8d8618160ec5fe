"""Single-file (original LDM/SGM "A1111-style") checkpoints load through diffusers'
``from_single_file`` exactly: every weight, and the pictures.

The checkpoints are made here from tiny diffusers pipelines by ``single_file.to_single_file``.
Findings pinned by these tests (diffusers 0.42):

* Offline, ``from_single_file(path)`` needs ``config=``: a local diffusers folder of the same
  architecture (its json/txt files are enough: configs, tokenizer, scheduler). Without it,
  diffusers guesses a hub repo from the checkpoint's keys and tries to fetch its configs:
  ``huggingface_hub.errors.LocalEntryNotFoundError`` with HF_HUB_OFFLINE=1.
* Without ``config=`` it does work offline when that guessed repo's config files are already in
  the Hugging Face cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

torch = pytest.importorskip("torch")

from single_file import build_tiny_sd15, to_single_file  # noqa: E402

HUB_REPO = {"sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
            "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5"}
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


# The hub is off for every test (conftest.py sets HF_HUB_OFFLINE before any import).
pytestmark = pytest.mark.usefixtures("session_cache")


def _pipeline_class(family):
    import diffusers

    return getattr(diffusers, {"sdxl": "StableDiffusionXLPipeline",
                               "sd15": "StableDiffusionPipeline"}[family])


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """family -> (diffusers folder, single-file checkpoint made from it)."""
    root = tmp_path_factory.mktemp("single_file")
    out = {}
    from storyboard.engine import builtin as tiny

    def builtin_sdxl(folder):
        return Path(shutil.copytree(tiny.builtin_folder("tiny-sdxl"), folder))

    for family, build in (("sdxl", builtin_sdxl), ("sd15", build_tiny_sd15)):
        folder = build(root / f"tiny-{family}")
        out[family] = folder, to_single_file(folder, root / f"tiny-{family}.safetensors", family)
    return out


@pytest.fixture(scope="session")
def pipes(made):
    """family -> (folder-loaded pipeline, single-file-loaded pipeline)."""
    out = {}
    for family, (folder, ckpt) in made.items():
        cls = _pipeline_class(family)
        out[family] = (cls.from_pretrained(str(folder)),
                       cls.from_single_file(str(ckpt), config=str(folder)))
    return out


def _assert_same_weights(reference, loaded):
    compared = 0
    for name in COMPONENTS:
        ref = getattr(reference, name, None)
        if ref is None:
            continue
        got = getattr(loaded, name).state_dict()
        want = ref.state_dict()
        assert got.keys() == want.keys(), name
        for key, tensor in want.items():
            assert got[key].device.type != "meta", f"{name}.{key} was never loaded"
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), \
                f"{name}.{key} differs"
            compared += 1
    return compared


def _render(pipe, seed=7):
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red cat on a blue sofa", negative_prompt="blurry", num_inference_steps=2,
               width=64, height=64, guidance_scale=5.0, output_type="np",
               generator=torch.Generator("cpu").manual_seed(seed))
    return out.images[0]


# --- the checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_checkpoint_has_original_key_names(made, family):
    from diffusers.loaders.single_file_utils import (CHECKPOINT_KEY_NAMES, fetch_diffusers_config,
                                                     infer_diffusers_model_type)
    from safetensors import safe_open

    from storyboard.engine.loading import family_from_checkpoint

    _, ckpt = made[family]
    with safe_open(str(ckpt), framework="pt") as fh:
        keys = set(fh.keys())
        state = {k: fh.get_tensor(k) for k in keys}
    prefixes = {"sd15": ("model.diffusion_model.", "first_stage_model.",
                         "cond_stage_model.transformer.text_model."),
                "sdxl": ("model.diffusion_model.", "first_stage_model.",
                         "conditioner.embedders.0.transformer.text_model.",
                         "conditioner.embedders.1.model.")}[family]
    assert all(k.startswith(prefixes) for k in keys)
    assert all(any(k.startswith(p) for k in keys) for p in prefixes)
    # Names diffusers' and storyboard's own detection key on.
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
            "model.diffusion_model.middle_block.1.proj_in.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight"} <= keys
    assert state["first_stage_model.decoder.mid.attn_1.proj_out.weight"].ndim == 4  # 1x1 conv
    if family == "sdxl":
        assert CHECKPOINT_KEY_NAMES["xl_base"] in keys
        assert {CHECKPOINT_KEY_NAMES["clip_sdxl"], CHECKPOINT_KEY_NAMES["open_clip_sdxl"],
                "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection",
                "model.diffusion_model.label_emb.0.0.weight"} <= keys
        assert not any(".q_proj." in k for k in keys if k.startswith("conditioner.embedders.1."))
    else:
        assert CHECKPOINT_KEY_NAMES["clip"] in keys
        assert not any("label_emb" in k for k in keys)
    assert infer_diffusers_model_type(state) == {"sdxl": "xl_base", "sd15": "v1"}[family]
    assert fetch_diffusers_config(state)["pretrained_model_name_or_path"] == HUB_REPO[family]
    assert family_from_checkpoint(Path(ckpt)) == family  # storyboard's own sniffing


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_diffusers_converters_consume_every_key(made, family):
    """diffusers' own ldm->diffusers converters map the file onto exactly each model's
    parameters: nothing missing, nothing left over."""
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint,
                                                     convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint,
                                                     convert_open_clip_checkpoint,
                                                     load_single_file_checkpoint)

    folder, ckpt = made[family]
    pipe = _pipeline_class(family).from_pretrained(str(folder))
    state = load_single_file_checkpoint(str(ckpt))

    def check(model, converted, prefix):
        want = {k.removeprefix("text_model.") if not hasattr(model, "text_model") else k
                for k in model.state_dict()}
        got = {k.removeprefix("text_model.") if not hasattr(model, "text_model") else k
               for k in converted}
        assert got == want, (sorted(want - got)[:5], sorted(got - want)[:5])
        assert len(converted) == sum(k.startswith(prefix) for k in state) + (
            # open_clip holds q, k, v in one in_proj tensor per layer (weight and bias)
            2 * 2 * model.config.num_hidden_layers if prefix.endswith(".1.model.") else 0)

    check(pipe.unet, convert_ldm_unet_checkpoint(state, dict(pipe.unet.config)),
          "model.diffusion_model.")
    check(pipe.vae, convert_ldm_vae_checkpoint(state, dict(pipe.vae.config)),
          "first_stage_model.")
    clip_prefix = {"sd15": "cond_stage_model.", "sdxl": "conditioner.embedders.0."}[family]
    check(pipe.text_encoder, convert_ldm_clip_checkpoint(
        {k: v for k, v in state.items() if k.startswith(clip_prefix)}), clip_prefix)
    if family == "sdxl":
        check(pipe.text_encoder_2, convert_open_clip_checkpoint(
            pipe.text_encoder_2, state, prefix="conditioner.embedders.1.model."),
            "conditioner.embedders.1.model.")


# --- loading and rendering ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_from_single_file_loads_every_weight(pipes, family):
    reference, loaded = pipes[family]
    assert type(loaded) is type(reference)
    assert _assert_same_weights(reference, loaded) > 100
    assert loaded.vae.config.scaling_factor == reference.vae.config.scaling_factor
    assert type(loaded.scheduler) is type(reference.scheduler)
    assert dict(loaded.scheduler.config) == dict(reference.scheduler.config)


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_single_file_renders_the_same_pixels(pipes, family):
    reference, loaded = pipes[family]
    want, got = _render(reference), _render(loaded)
    assert want.shape == (64, 64, 3) and np.isfinite(want).all() and want.std() > 0.05
    assert not np.array_equal(want, _render(reference, seed=8))  # the seed matters
    assert np.array_equal(want, got)


def test_storyboard_style_kwargs_load_offline(made):
    """What storyboard passes (dtype=...), plus config=, is enough offline."""
    folder, ckpt = made["sd15"]
    pipe = _pipeline_class("sd15").from_single_file(str(ckpt), config=str(folder),
                                                    dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32


# --- offline behaviour without config= --------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"local_files_only": True}])
@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_without_config_offline_fails_with_local_entry_not_found(made, tmp_path, family, kwargs):
    """With no `config`, diffusers infers the model type from the keys, picks that type's hub
    repo (HUB_REPO) and snapshot_downloads its json/txt files; offline and not cached, that is a
    LocalEntryNotFoundError (an OSError). local_files_only=True does not help: diffusers retries
    with local_files_only=False when the cache lacks the files."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    _, ckpt = made[family]
    with pytest.raises(LocalEntryNotFoundError,
                       match="Cannot find an appropriate cached snapshot folder") as info:
        _pipeline_class(family).from_single_file(str(ckpt), cache_dir=str(tmp_path), **kwargs)
    assert isinstance(info.value, OSError)
    assert "HF_HUB_OFFLINE=0" in str(info.value)


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_without_config_offline_uses_cached_hub_configs(made, pipes, tmp_path, family):
    """The same call works offline once the inferred repo's config files are in the Hugging Face
    cache (as after `hf download <repo> --include "*.json" "*.txt"`)."""
    folder, ckpt = made[family]
    repo = tmp_path / ("models--" + HUB_REPO[family].replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / commit,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = _pipeline_class(family).from_single_file(str(ckpt), cache_dir=str(tmp_path))
    _assert_same_weights(pipes[family][0], loaded)


# --- through a story: what storyboard users write ---------------------------------------------


def _story(folder: Path, model: str) -> Path:
    path = folder / "story.yaml"
    path.write_text(f"version: 1\nmodel:\n{model}defaults: {{steps: 2, width: 64, height: 64}}\n"
                    "panels:\n  - {id: a, prompt: a cat, seed: 3}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_story_with_a_single_file_checkpoint_renders_like_the_folder(made, tmp_path, family):
    from storyboard.commands import build
    from storyboard.options import RuntimeOptions

    folder, ckpt = made[family]
    by_file = _story(tmp_path, f"  path: {ckpt}\n  config: {folder}\n")
    (tmp_path / "f").mkdir()
    by_folder = _story(tmp_path / "f", f"  path: {folder}\n")
    quiet = RuntimeOptions(progress=False)
    a, b = build(by_file, options=quiet), build(by_folder, options=quiet)
    assert a.outcomes[0].job.model.kind == "file" and a.outcomes[0].job.model.family == family
    assert b.outcomes[0].job.model.kind == "folder"
    with Image.open(a.outcomes[0].path) as x, Image.open(b.outcomes[0].path) as y:
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_single_file_without_cached_configs_says_what_to_download(made, tmp_path):
    from click.testing import CliRunner

    from storyboard.cli import cli

    _, ckpt = made["sdxl"]
    story = _story(tmp_path, f"  path: {ckpt}\n")
    result = CliRunner().invoke(cli, ["build", "-q", str(story)])
    assert result.exit_code == 2, result.output
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0 --include" in result.output
    assert "Traceback" not in result.output


def test_config_only_for_single_files(tmp_path):
    from storyboard.errors import StoryError
    from storyboard.story import load_story

    story = _story(tmp_path, "  repo: org/name\n  config: org/other\n")
    with pytest.raises(StoryError) as info:
        load_story(story)
    assert "'config' only applies to a single-file checkpoint" in info.value.format_message()


# --- checkpoints that are damaged or hostile -----------------------------------------------------


def _load(path: Path, **kwargs):
    from storyboard.engine.loading import ModelError, load_model
    from storyboard.options import RuntimeOptions
    from storyboard.plan.jobs import ModelRef

    with pytest.raises(ModelError) as info:
        load_model(ModelRef("file", str(path), family="sdxl", **kwargs),
                   RuntimeOptions(progress=False))
    return info.value.message


def _damaged_pickle(path: Path) -> Path:
    """A zip as torch.save writes it whose data.pkl is garbage."""
    import io
    import zipfile

    source = io.BytesIO()
    torch.save({"model.diffusion_model.x": torch.zeros(2)}, source)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            out.writestr(info, b"\x80\x02garbage" if info.filename.endswith("data.pkl")
                         else src.read(info))
    return path


class _System:
    def __reduce__(self):
        return (os.system, ("echo the pickle ran > pwned",))


def test_a_cut_short_checkpoint_is_unreadable_not_a_missing_config(made, tmp_path):
    """Named with its family, a damaged file reached diffusers, whose OSError was taken for
    missing configs: the message said to `hf download` them."""
    _, ckpt = made["sdxl"]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    message = _load(cut)
    assert f"checkpoint {cut} is unreadable: not a readable .safetensors file: " in message
    assert "cover" in message or "outside" in message
    assert "hf download" not in message and "configs" not in message


def test_a_damaged_or_hostile_pickle_checkpoint_says_so(made, tmp_path, monkeypatch):
    folder, _ = made["sdxl"]
    damaged = _damaged_pickle(tmp_path / "damaged.ckpt")
    message = _load(damaged)
    assert f"checkpoint {damaged} is unreadable: " in message and "hf download" not in message
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": _System()}}, evil)
    assert "asks to run or construct `os.system`, which a weights file never needs" in \
        _load(evil)
    # Without torch's static scan (torch < 2.5), diffusers' own refusal is unwrapped.
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    message = _load(evil, config=str(folder))
    assert "is unreadable: refused: the file asks to run or construct `os.system`" in message
    message = _load(damaged, config=str(folder))
    assert "is unreadable: refused by torch's weights-only loader (Unsupported operand" \
        in message and "hf download" not in message
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()


def test_a_checkpoint_that_is_no_regular_file_is_refused(tmp_path):
    os.mkfifo(tmp_path / "pipe.safetensors")
    assert "pipe.safetensors is unreadable: is a named pipe (FIFO), not a regular file" in \
        _load(tmp_path / "pipe.safetensors")
    (tmp_path / "folder.ckpt").mkdir()
    assert "folder.ckpt is unreadable: is a folder" in _load(tmp_path / "folder.ckpt")
    assert "checkpoint not found" in _load(tmp_path / "missing.safetensors")


def test_a_broken_checkpoint_through_build_is_one_line_without_a_download_hint(tmp_path):
    from click.testing import CliRunner

    from storyboard.cli import cli

    _damaged_pickle(tmp_path / "m.ckpt")
    story = _story(tmp_path, "  path: m.ckpt\n  family: sdxl\n")
    result = CliRunner().invoke(cli, ["build", "-q", str(story)])
    assert result.exit_code == 2, result.output
    assert "m.ckpt is unreadable" in result.output and "hf download" not in result.output
    assert "Traceback" not in result.output


def test_a_checkpoint_missing_a_component_is_one_line(made, tmp_path):
    from safetensors.torch import save_file

    folder, _ = made["sdxl"]
    path = tmp_path / "part.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(path))
    message = _load(path, config=str(folder))
    assert f"checkpoint {path} is not a whole sdxl pipeline: " in message
