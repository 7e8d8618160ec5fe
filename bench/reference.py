"""The course notebook's loop: the workload storyboard's speed is measured against.

In: a diffusers text-to-image pipeline (SDXL or Kolors architecture, any device and dtype) and
the panels of a story, each a seed, a prompt and a negative prompt (``Panel``; the course's own
8 are ``COURSE_PANELS``). Out: ``naive_render`` returns one PIL image per panel, in story
order, and the wall-clock seconds of the whole loop, with a CUDA device synchronised before and
after (the seconds are the GPU's work, not the time to queue it).

Why this loop: the summer course whose notebook storyboard replaces renders its 8-panel story
by pasting one cell per panel, ``torch.manual_seed(seed)`` followed by ``pipe(prompt=...,
negative_prompt=..., cfg_scale=4, num_inference_steps=50, height=1024, width=1024)``, on Kolors
in fp16 on CUDA. Each panel is a pipeline call of its own: the text encoders run for every
panel, the UNet sees a batch of two (prompt and negative prompt, classifier-free guidance at 4),
nothing is batched across panels or compiled, and the seed goes through torch's global
generator. ``naive_render`` does that and nothing else, so that "storyboard is N times faster"
(bench/speed.py) compares storyboard with what a student of the course runs today, on the same
weights, in the same process.

No checkpoint can be downloaded on the GPU machines, so ``sdxl_pipeline`` and
``kolors_pipeline`` build the full-size architectures with random weights: SDXL (a
2.6B-parameter UNet, CLIP ViT-L and OpenCLIP ViT-bigG text encoders, the SDXL VAE) and Kolors
(the same UNet reading ChatGLM3-6B's 4096-wide text through a projection to 2048, and the SDXL
VAE). Random weights draw meaningless pictures with the same arithmetic, memory traffic and
kernels as a real checkpoint, so the timings carry over. The tokenizers are made here too
(byte-level CLIP, a small sentencepiece model for ChatGLM); both pipelines pad every prompt to
the full context (77 and 256 tokens), so the vocabulary changes no timing. bench/gpu_models.py
saves these pipelines to disk for the benchmarks that load them the way storyboard does.

    pipe = sdxl_pipeline()                                  # CUDA, fp16, about 1 minute
    images, seconds = naive_render(pipe)                    # 8 panels, 50 steps, 1024x1024
    images, seconds = naive_render(pipe, COURSE_PANELS[:2], steps=2, size=64)  # a quick check

Run on a GPU (the loop alone, seconds per panel as JSON):
    python bench/reference.py sdxl [--panels 8] [--steps 50] [--size 1024] [--out naive.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import torch

# --- the course's story and settings -------------------------------------------------------

GUIDANCE = 4.0  # the notebook's cfg_scale
STEPS = 50
SIZE = 1024  # height and width, pixels

# Every panel's negative prompt starts with this (ugly, deformed, noisy, blurry, low contrast).
COURSE_NEGATIVE = "丑陋、变形、嘈杂、模糊、低对比度"


class Panel(NamedTuple):
    seed: int
    prompt: str
    negative: str = COURSE_NEGATIVE


def _more_negative(*extra: str) -> str:
    return "，".join((COURSE_NEGATIVE, *extra))


# The course's story (a purple-haired girl who dreams of singing on stage), panel by panel as
# the notebook renders it. The seeds repeat (0 three times, 1 twice) as they do there.
COURSE_PANELS: list[Panel] = [
    Panel(0, "二次元，一个紫色短发小女孩，在家中沙发上坐着，双手托着腮，很无聊，全身，粉色连衣裙"),
    Panel(1, "二次元，日系动漫，演唱会的观众席，人山人海，一个紫色短发小女孩穿着粉色吊带漏肩连衣裙"
             "坐在演唱会的观众席，舞台上衣着华丽的歌星们在唱歌"),
    Panel(2, "二次元，一个紫色短发小女孩穿着粉色吊带漏肩连衣裙坐在演唱会的观众席，露出憧憬的神情",
          _more_negative("色情擦边")),
    Panel(5, "二次元，一个紫色短发小女孩穿着粉色吊带漏肩连衣裙，对着流星许愿，闭着眼睛，十指交叉，"
             "侧面", _more_negative("扭曲的手指", "多余的手指")),
    Panel(0, "二次元，一个紫色中等长度头发小女孩穿着粉色吊带漏肩连衣裙，在练习室练习唱歌"),
    Panel(1, "二次元，一个紫色长发小女孩穿着粉色吊带漏肩连衣裙，在练习室练习唱歌，手持话筒"),
    Panel(7, "二次元，紫色长发少女，穿着黑色连衣裙，试衣间，心情忐忑"),
    Panel(0, "二次元，紫色长发少女，穿着黑色礼服，连衣裙，在台上唱歌"),
]


# --- the loop ------------------------------------------------------------------------------


def _sync(pipe) -> None:
    if pipe.device.type == "cuda":
        torch.cuda.synchronize(pipe.device)


def naive_render(pipe, panels: list[Panel] | list[tuple] = COURSE_PANELS, *,
                 steps: int = STEPS, guidance: float = GUIDANCE,
                 size: int = SIZE) -> tuple[list, float]:
    """Render ``panels`` the course notebook's way: for each one, seed torch's global generator,
    then one pipeline call with that panel's prompt and negative prompt. Returns the images in
    order and the seconds the loop took. ``steps`` and ``size`` are there for quick checks on a
    small pipeline; the workload is their defaults."""
    images = []
    _sync(pipe)
    start = time.perf_counter()
    for seed, prompt, negative in panels:
        torch.manual_seed(seed)
        result = pipe(prompt=prompt, negative_prompt=negative, guidance_scale=guidance,
                      num_inference_steps=steps, height=size, width=size)
        images.append(result.images[0])
    _sync(pipe)
    return images, time.perf_counter() - start


# --- full-size architectures, random weights -----------------------------------------------

SDXL_UNET = dict(
    in_channels=4, out_channels=4, sample_size=128, act_fn="silu",
    block_out_channels=[320, 640, 1280], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048, use_linear_projection=True,
    # SDXL's micro-conditioning: pooled text (1280) and six size/crop ids (6 x 256).
    addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
# Kolors' UNet: SDXL's, attending to ChatGLM's 4096-wide text through a projection to 2048.
KOLORS_UNET = {**SDXL_UNET, "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj",
               "projection_class_embeddings_input_dim": 5632}
SDXL_VAE = dict(
    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
    sample_size=1024, scaling_factor=0.13025, force_upcast=False,
)
# SDXL's two text encoders: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 (with its projection).
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
              projection_dim=768)
CLIP_BIGG = dict(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                 num_hidden_layers=32, num_attention_heads=20, max_position_embeddings=77,
                 hidden_act="gelu", projection_dim=1280)
# ChatGLM3-6B as Kolors ships it.
CHATGLM3 = dict(
    num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
    kv_channels=128, num_attention_heads=32, seq_length=32768, multi_query_attention=True,
    multi_query_group_num=2, add_qkv_bias=True, add_bias_linear=False, rmsnorm=True,
    post_layer_norm=True, original_rope=True, apply_residual_connection_post_layernorm=False,
    layernorm_epsilon=1e-5, use_cache=False, torch_dtype="float16",
)
# SDXL's and Kolors' scheduler as their checkpoints configure it.
EULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
             timestep_spacing="leading")


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, CLIP) stands each byte for."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in kept else chr(next(shifted)) for b in range(256)]


def clip_tokenizer():
    """A CLIP tokenizer whose vocabulary is the 256 bytes, each alone and ending a word, with no
    merges: every byte of a prompt is one token. Made in memory, nothing downloaded."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    pieces = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[],
                         model_max_length=77)


def chatglm_tokenizer():
    """ChatGLM's tokenizer over a small sentencepiece model trained here on the course's own
    prompts, bytes falling back for anything else. The model file stays in a temporary folder
    of its own: the tokenizer reads it again when the pipeline is saved."""
    import io

    import sentencepiece as spm
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    corpus = [text for p in COURSE_PANELS for text in (p.prompt, p.negative)]
    corpus += ["a girl with short purple hair sings on a stage at night, anime style"]
    model = io.BytesIO()
    spm.set_random_generator_seed(0)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 8), model_writer=model, model_type="bpe",
        vocab_size=600, hard_vocab_limit=False, character_coverage=1.0, byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    path = Path(tempfile.mkdtemp(prefix="reference-chatglm-")) / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return ChatGLMTokenizer(vocab_file=str(path), model_max_length=256)


def sdxl_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16):
    """Full-size SDXL with random weights (seeded, so the same every time), on ``device``."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = clip_tokenizer()
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        text_l = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids))
        text_g = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG, **ids))
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_l, text_encoder_2=text_g, tokenizer=tokenizer,
        tokenizer_2=clip_tokenizer(), unet=unet, scheduler=EulerDiscreteScheduler(**EULER))
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def kolors_pipeline(device: str = "cuda", dtype: torch.dtype = torch.float16):
    """Full-size Kolors with random weights (seeded), on ``device``. ChatGLM's random matrices
    are scaled down: at their default size 28 layers of random residual stream overflow fp16,
    which a trained model's do not."""
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, KolorsPipeline,
                           UNet2DConditionModel)
    from diffusers.pipelines.kolors import ChatGLMModel
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, RMSNorm

    tokenizer = chatglm_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        # empty_init=False: the default leaves the weights as whatever memory held.
        text_encoder = ChatGLMModel(ChatGLMConfig(**CHATGLM3), empty_init=False)
        with torch.no_grad():
            for module in text_encoder.modules():
                if isinstance(module, RMSNorm):  # made with torch.empty, never initialised
                    module.weight.fill_(1.0)
            for name, param in text_encoder.named_parameters():
                if param.dim() == 2 and "embedding" not in name:
                    param.mul_(0.1)
        unet = UNet2DConditionModel(**KOLORS_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
    pipe = KolorsPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=EulerDiscreteScheduler(**EULER), image_encoder=None,
                          feature_extractor=None, force_zeros_for_empty_prompt=False)
    pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PIPELINES = {"sdxl": sdxl_pipeline, "kolors": kolors_pipeline}


def main() -> None:
    ap = argparse.ArgumentParser(description="Time the course notebook's loop alone on a "
                                 "full-size random-weight pipeline.")
    ap.add_argument("arch", choices=sorted(PIPELINES))
    ap.add_argument("--panels", type=int, default=len(COURSE_PANELS),
                    help="the first N course panels (default: all 8)")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--size", type=int, default=SIZE)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    pipe = PIPELINES[args.arch](args.device)
    report = {"arch": args.arch, "device": str(pipe.device), "torch": torch.__version__,
              "build_s": round(time.perf_counter() - t0, 1),
              "settings": f"{args.steps} steps, {args.size}x{args.size}, CFG {GUIDANCE:g}, fp16"}
    if pipe.device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(pipe.device)
    panels = COURSE_PANELS[:args.panels]
    naive_render(pipe, panels[:1], steps=args.steps, size=args.size)  # warm-up, not timed
    _, seconds = naive_render(pipe, panels, steps=args.steps, size=args.size)
    report["panels"] = len(panels)
    report["naive_s_per_panel"] = round(seconds / len(panels), 3)
    if pipe.device.type == "cuda":
        report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(pipe.device) / 1e9, 1)
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
