"""Full-size SDXL and Kolors architectures with random weights, saved as diffusers folders.

No checkpoint can be downloaded on the GPU machines, so benchmarks and smoke tests build the real
architectures (SDXL: 2.6B-parameter UNet, CLIP ViT-L and OpenCLIP ViT-bigG text encoders; Kolors:
the SDXL UNet with a 4096->2048 text projection and the 6B-parameter ChatGLM3 text encoder) with
random weights on the GPU, save them with ``save_pretrained`` and let storyboard load them from
disk like any local model. Random weights give meaningless pictures but the same arithmetic as a
real checkpoint. Tokenizers are the tiny models' locally made ones (small vocabularies: token ids
index only the start of the full-size embedding tables).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

SDXL_UNET = dict(
    act_fn="silu", addition_embed_type="text_time", addition_embed_type_num_heads=64,
    addition_time_embed_dim=256, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D",
                                                "CrossAttnDownBlock2D"],
    in_channels=4, out_channels=4, layers_per_block=2, projection_class_embeddings_input_dim=2816,
    sample_size=128, transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
# Kolors' UNet: SDXL's, attending to ChatGLM's 4096-wide text through a projection to 2048.
KOLORS_UNET = {**SDXL_UNET, "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj",
               "projection_class_embeddings_input_dim": 5632}
SDXL_VAE = dict(
    block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, layers_per_block=2,
    sample_size=1024, scaling_factor=0.13025, force_upcast=False,
)


def _scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  steps_offset=1, timestep_spacing="leading")


def build_sdxl(folder: Path, device: str = "cuda", dtype=torch.float16) -> Path:
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from storyboard.tiny import _clip_tokenizer

    with tempfile.TemporaryDirectory() as work:
        tok = _clip_tokenizer(Path(work) / "a")
        tok2 = _clip_tokenizer(Path(work) / "b")
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        te1 = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
            projection_dim=768, **ids))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu",
            projection_dim=1280, **ids))
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                     tokenizer_2=tok2, unet=unet, scheduler=_scheduler())
    pipe.to(dtype=dtype)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_kolors(folder: Path, device: str = "cuda", dtype=torch.float16) -> Path:
    from diffusers import AutoencoderKL, KolorsPipeline, UNet2DConditionModel
    from diffusers.pipelines.kolors import ChatGLMModel, ChatGLMTokenizer
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, RMSNorm

    from storyboard.tiny import _sentencepiece_model

    with tempfile.TemporaryDirectory() as work:
        tokenizer = ChatGLMTokenizer(vocab_file=str(_sentencepiece_model(
            Path(work) / "tokenizer.model")), model_max_length=256)
        config = ChatGLMConfig(  # ChatGLM3-6B, as Kolors ships it
            num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
            kv_channels=128, num_attention_heads=32, seq_length=32768,
            multi_query_attention=True, multi_query_group_num=2, add_qkv_bias=True,
            add_bias_linear=False, rmsnorm=True, post_layer_norm=True, original_rope=True,
            apply_residual_connection_post_layernorm=False, layernorm_epsilon=1e-5,
            use_cache=False, torch_dtype="float16")
        torch.manual_seed(0)
        with torch.device(device):
            text_encoder = ChatGLMModel(config, empty_init=False)
            with torch.no_grad():
                for module in text_encoder.modules():
                    if isinstance(module, RMSNorm):
                        module.weight.fill_(1.0)
                # Default init of a 28-layer random residual stream overflows fp16; real weights
                # do not, so scale the random ones down to keep activations in range.
                for name, param in text_encoder.named_parameters():
                    if param.dim() == 2 and "embedding" not in name:
                        param.mul_(0.1)
            unet = UNet2DConditionModel(**KOLORS_UNET)
            vae = AutoencoderKL(**SDXL_VAE)
        pipe = KolorsPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=_scheduler(), image_encoder=None, feature_extractor=None,
                              force_zeros_for_empty_prompt=False)
        pipe.to(dtype=dtype)
        pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def random_lora(unet, path: Path, rank: int = 16, seed: int = 1) -> Path:
    """A diffusers-format LoRA with random weights on every attention projection of ``unet``
    (to_q, to_k, to_v, to_out.0), the layers a character LoRA trains: the same shapes, files
    and arithmetic as a real one. B is small, so the random delta keeps fp16 activations in
    range."""
    from safetensors.torch import save_file

    g = torch.Generator("cpu").manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if name.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or name.endswith("to_out.0"):
            state[f"unet.{name}.lora_A.weight"] = (
                torch.randn(rank, module.in_features, generator=g) / module.in_features ** 0.5)
            state[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, rank,
                                                              generator=g) * 1e-2
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(path))
    return path


BUILDERS = {"sdxl": build_sdxl, "kolors": build_kolors}
