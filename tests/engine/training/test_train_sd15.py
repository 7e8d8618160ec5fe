"""Text encoders that learn (``train_text_encoder``), on an SD1.5 pipeline (a toy one built here:
no added time ids, one CLIP encoder) and on the tiny SDXL's two encoders."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import trainkit  # noqa: E402
from storyboard.engine.builtin import builtin_folder  # noqa: E402
from storyboard.engine.training import train_lora  # noqa: E402
from storyboard.families import FAMILIES  # noqa: E402
from storyboard.loras import inspect_lora, to_diffusers  # noqa: E402
from storyboard.plan import ModelRef  # noqa: E402

pytestmark = pytest.mark.usefixtures("session_cache")


def tiny_sd15(folder):
    """An SD1.5 pipeline folder at toy size: tiny SDXL's VAE, first CLIP encoder, tokenizer
    and scheduler around a two-level UNet that has cross-attention in its first down block,
    as SD1.5's does, and no added conditioning."""
    import diffusers
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    src = builtin_folder("tiny-sdxl")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=8)
    pipeline = getattr(diffusers, FAMILIES["sd15"].pipeline)
    pipeline(vae=AutoencoderKL.from_pretrained(src, subfolder="vae"),
             text_encoder=CLIPTextModel.from_pretrained(src, subfolder="text_encoder"),
             tokenizer=CLIPTokenizer.from_pretrained(src, subfolder="tokenizer"), unet=unet,
             scheduler=EulerDiscreteScheduler.from_pretrained(src, subfolder="scheduler"),
             safety_checker=None, feature_extractor=None,
             requires_safety_checker=False).save_pretrained(folder)
    return ModelRef("folder", str(folder), family="sd15")


def test_sd15_with_its_text_encoder_learns_and_renders(tmp_path):
    ref = tiny_sd15(tmp_path / "sd15")
    job = trainkit.job(trainkit.pictures(tmp_path / "pictures", [(64, 64), (128, 64)]),
                       model=ref, steps=40, train_text_encoder=True)
    result = train_lora(job, tmp_path / "out", device="cpu")
    print(f"sd15 loss: first 10 {np.mean(result.losses[:10]):.3f}, last 10 "
          f"{np.mean(result.losses[-10:]):.3f}, {result.seconds:.1f} s")

    for path, fmt in ((result.lora_file, "diffusers"), (result.kohya_file, "kohya")):
        info = inspect_lora(path, unet_config=ref.ref)
        assert (info.format, info.ranks, info.alphas) == (fmt, (4,), (8.0,))
        assert info.text_encoder and {"q_proj", "to_q"} <= set(info.modules)
    a = to_diffusers(result.lora_file, family="sd15", unet_config=ref.ref)
    b = to_diffusers(result.kohya_file, family="sd15", unet_config=ref.ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    text_b = [v for k, v in a.items() if k.startswith("text_encoder.") and "lora_B" in k]
    assert text_b and all(v.abs().max() > 0 for v in text_b)  # B starts at zero: it learned

    story = trainkit.story(tmp_path, f"{{path: {ref.ref}}}", {
        "dif": str(result.lora_file), "koh": str(result.kohya_file)})
    base, trained = trainkit.held_out_with_loras(story, ref, job.images)
    print(f"sd15 held-out denoising loss: base {base:.3f}, trained {trained}")
    assert trained["dif"] < 0.96 * base
    assert abs(trained["koh"] - trained["dif"]) < 1e-4
    r = trainkit.render(story)
    assert np.abs(r["dif"] - r["base"]).max() > 10
    assert np.abs(r["dif"] - r["koh"]).max() <= 2


def test_sdxl_text_encoders_train_and_export_under_standard_names(tmp_path):
    """Both SDXL CLIP encoders get a LoRA; the files name them as every tool does
    (``text_encoder[_2].text_model.encoder...``, kohya's ``lora_te1_`` / ``lora_te2_``), and
    storyboard loads them into the model. (Also through bf16 autocast and gradient
    checkpointing, the paths a GPU takes, here on the CPU.)"""
    from safetensors import safe_open

    from storyboard.engine.adapters import Adapters
    from storyboard.engine.loading import load_model
    from storyboard.plan import compile_story
    from storyboard.story import load_story

    job = trainkit.job(trainkit.pictures(tmp_path / "pictures", [(64, 64)]), steps=3,
                       train_text_encoder=True, mixed_precision="bf16")
    seen = []

    def look(view):
        seen.append(view.pipeline.unet.is_gradient_checkpointing)

    result = train_lora(job, tmp_path / "out", device="cpu", gradient_checkpointing=True,
                        on_checkpoint=look)
    assert result.dtype == "fp32" and all(np.isfinite(result.losses)) and seen == [True]
    prefixes = {}
    for path in result.files:
        with safe_open(str(path), "pt") as fh:
            prefixes[path.name] = {k.split(".")[0].split("_text_model")[0] for k in fh.keys()}
    assert prefixes["lora.safetensors"] == {"unet", "text_encoder", "text_encoder_2"}
    assert {"lora_te1", "lora_te2"} <= prefixes["lora-kohya.safetensors"]
    info = inspect_lora(result.kohya_file, unet_config=builtin_folder("tiny-sdxl"))
    assert info.family == "sdxl" and info.text_encoder
    story = trainkit.story(tmp_path, "tiny-sdxl", {"dif": str(result.lora_file),
                                                   "koh": str(result.kohya_file)})
    model = load_model(trainkit.builtin("tiny-sdxl"), trainkit.QUIET)
    Adapters(model, merge=False).load(compile_story(load_story(story)))  # raises on a misfit
