"""Tiny original-format ("A1111-style") checkpoints for testing single-file loading.

In: a diffusers pipeline folder (``save_pretrained`` layout). Out: one ``.safetensors`` file with
the key names of the original repos, the format users download from model sites:

* SD1.5 (CompVis LDM): ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE),
  ``cond_stage_model.transformer.text_model.*`` (CLIP ViT-L, transformers names).
* SDXL (Stability SGM): ``model.diffusion_model.*``, ``first_stage_model.*``,
  ``conditioner.embedders.0.transformer.text_model.*`` (CLIP ViT-L, transformers names) and
  ``conditioner.embedders.1.model.*`` (OpenCLIP ViT-bigG names: ``transformer.resblocks.N``
  with ``attn.in_proj_weight``/``in_proj_bias`` = q, k, v concatenated, ``ln_1``/``ln_2``,
  ``mlp.c_fc``/``mlp.c_proj``, ``token_embedding``, ``positional_embedding``, ``ln_final``,
  ``text_projection`` stored transposed).

The mapping is the inverse of what diffusers' loader does (``diffusers.loaders.single_file_utils``:
``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``,
``convert_open_clip_checkpoint``), cross-checked with diffusers' ``scripts/convert_diffusers_to_
original_{sdxl,stable_diffusion}.py``, but derived from each model's config instead of SD's
hard-coded block counts, so it works for the toy architectures. Every diffusers key must map to
exactly one original key, or ``to_single_file`` raises: nothing is silently dropped.

Model-type detection (``infer_diffusers_model_type``) keys on names only real-size models have:
``xl_base`` needs ``conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias`` (a
text encoder 2 of at least 10 layers); anything unrecognised is ``v1``. It only matters when
``from_single_file`` is called without ``config=``. The built-in ``tiny-sdxl`` makes its text
encoder 2 ten layers deep so its checkpoints are typed ``xl_base`` like real ones.

A tiny-model pitfall the built-in recipe avoids: diffusers tells SDXL's two text encoders apart
in a single file only by width (``create_diffusers_clip_model_from_ldm`` compares the file's
position-embedding width with the model's), so they must differ (32 and 48 in ``tiny-sdxl``);
with equal widths ``from_single_file`` fills ``text_encoder_2`` with CLIP-L's weights and leaves
its projection on the meta device, and renders turn NaN.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch

SEED = 0

# --- building tiny pipelines ------------------------------------------------------------------


def _tokenizer():
    from storyboard.engine.builtin import clip_tokenizer

    with tempfile.TemporaryDirectory() as work:
        return clip_tokenizer(Path(work))


def _clip_config(tok, hidden: int, layers: int, heads: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, hidden_size=hidden, intermediate_size=hidden * 2 + 5,
        num_attention_heads=heads, num_hidden_layers=layers, max_position_embeddings=77,
        layer_norm_eps=1e-5, hidden_act="quick_gelu" if projection_dim is None else "gelu",
        **extra)


def build_tiny_sd15(folder) -> Path:
    """A toy SD1.5 pipeline (real SD1.5's layout and settings at toy width, random weights) saved
    with ``save_pretrained``: CLIP-L-style text encoder, UNet with cross-attention on the
    high-resolution level and conv ``proj_in``, VAE with two resnets per encoder level, PNDM."""
    from diffusers import (AutoencoderKL, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextModel

    folder = Path(folder)
    tok = _tokenizer()
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_clip_config(tok, hidden=32, layers=2, heads=4))
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        layers_per_block=2, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=4,
        cross_attention_dim=32, norm_num_groups=8, use_linear_projection=False)
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=2, norm_num_groups=8, sample_size=64, scaling_factor=0.18215)
    # SD1.5's own scheduler settings (stable-diffusion-v1-5/scheduler/scheduler_config.json).
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False,
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


class _Renamer:
    """diffusers name -> original name by module prefix (longest prefix wins), with optional
    renames of the parameter path inside the matched module. A key no rule covers raises."""

    def __init__(self):
        self.rules: list[tuple[str, str, tuple]] = []

    def add(self, src: str, dst: str, inner=()) -> None:
        self.rules.append((src, dst, tuple(inner)))
        self.rules.sort(key=lambda rule: -len(rule[0]))

    def __call__(self, key: str) -> str:
        for src, dst, inner in self.rules:
            if key.startswith(src):
                rest = key[len(src):]
                for old, new in inner:
                    if rest.startswith(old):
                        rest = new + rest[len(old):]
                        break
                return dst + rest
        raise KeyError(f"no original name for {key!r}")


# Inside a UNet ResnetBlock2D (diffusers) / ResBlock (LDM).
_UNET_RESNET = [("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."),
                ("time_emb_proj.", "emb_layers.1."), ("norm2.", "out_layers.0."),
                ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")]
# Inside a VAE ResnetBlock2D: the same names but the shortcut.
_VAE_RESNET = [("conv_shortcut.", "nin_shortcut.")]
# Inside the VAE's mid-block attention (LDM AttnBlock).
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
             ("to_out.0.", "proj_out.")]


def _unet_to_ldm(sd: dict, config: dict) -> dict:
    """UNet2DConditionModel -> openaimodel.UNetModel (``input_blocks``/``middle_block``/
    ``output_blocks``), following the block/layer numbering convert_ldm_unet_checkpoint undoes."""
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("per-block layers_per_block has no LDM equivalent")
    down, up = config["down_block_types"], config["up_block_types"]
    r = _Renamer()
    r.add("time_embedding.linear_1.", "time_embed.0.")
    r.add("time_embedding.linear_2.", "time_embed.2.")
    r.add("add_embedding.linear_1.", "label_emb.0.0.")  # SDXL's text_time embedding
    r.add("add_embedding.linear_2.", "label_emb.0.2.")
    r.add("class_embedding.linear_1.", "label_emb.0.0.")
    r.add("class_embedding.linear_2.", "label_emb.0.2.")
    r.add("conv_in.", "input_blocks.0.0.")
    r.add("conv_norm_out.", "out.0.")
    r.add("conv_out.", "out.2.")
    n = 1
    for i in range(len(down)):
        for j in range(lpb):
            r.add(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{n}.0.", _UNET_RESNET)
            r.add(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{n}.1.")
            n += 1
        if f"down_blocks.{i}.downsamplers.0.conv.weight" in sd:
            r.add(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{n}.0.op.")
            n += 1
    r.add("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET)
    r.add("mid_block.attentions.0.", "middle_block.1.")
    r.add("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET)
    n = 0
    for i in range(len(up)):
        for j in range(lpb + 1):
            r.add(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{n}.0.", _UNET_RESNET)
            has_attn = any(k.startswith(f"up_blocks.{i}.attentions.{j}.") for k in sd)
            if has_attn:
                r.add(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{n}.1.")
            if j == lpb:  # the upsampler follows the block's last layer
                r.add(f"up_blocks.{i}.upsamplers.0.conv.",
                      f"output_blocks.{n}.{2 if has_attn else 1}.conv.")
            n += 1
    return {r(k): v for k, v in sd.items()}


def _vae_to_ldm(sd: dict, config: dict) -> dict:
    """AutoencoderKL -> ldm.modules.diffusionmodules.model Encoder/Decoder (decoder levels
    numbered in reverse; attention projections as 1x1 convolutions)."""
    r = _Renamer()
    for side in ("encoder", "decoder"):
        for name in ("conv_in.", "conv_out."):
            r.add(f"{side}.{name}", f"{side}.{name}")
        r.add(f"{side}.conv_norm_out.", f"{side}.norm_out.")
        r.add(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.", _VAE_RESNET)
        r.add(f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.", _VAE_RESNET)
        r.add(f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", _VAE_ATTN)
    for name in ("quant_conv.", "post_quant_conv."):
        r.add(name, name)
    levels = len(config["down_block_types"])
    for i in range(levels):
        for j in range(config["layers_per_block"] + 1):
            r.add(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.",
                  _VAE_RESNET)
        r.add(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
    for i in range(len(config["up_block_types"])):
        ldm = len(config["up_block_types"]) - 1 - i
        for j in range(config["layers_per_block"] + 2):
            r.add(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{ldm}.block.{j}.",
                  _VAE_RESNET)
        r.add(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{ldm}.upsample.")
    out = {}
    for k, v in sd.items():
        name = r(k)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", name) and v.ndim == 2:
            v = v.reshape(*v.shape, 1, 1)  # original stores these as 1x1 convolutions
        out[name] = v
    return out


def _hf_clip_names(sd: dict) -> dict:
    """transformers >= 5.6 saves CLIPTextModel without its ``text_model.`` level; single files
    (and diffusers' loader) use the transformers 4 names."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in sd.items()}


_OPENCLIP_LAYER = [("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                   ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."),
                   ("self_attn.out_proj.", "attn.out_proj.")]


def _clip_to_openclip(sd: dict) -> dict:
    """CLIPTextModelWithProjection -> open_clip's text tower (as SGM's FrozenOpenCLIPEmbedder2
    holds it under ``model.``)."""
    sd = _hf_clip_names(sd)
    out, qkv = {}, {}
    for k, v in sd.items():
        if k == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = v
        elif k == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.rsplit(".", 1)[1]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.T.contiguous()  # open_clip: x @ text_projection
        elif k == "text_model.embeddings.position_ids":
            continue
        else:
            m = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", k)
            if not m:
                raise KeyError(f"no open_clip name for {k!r}")
            layer, rest = m.groups()
            prefix = f"transformer.resblocks.{layer}."
            p = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if p:
                qkv.setdefault((prefix, p.group(2)), {})[p.group(1)] = v
                continue
            for old, new in _OPENCLIP_LAYER:
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = v
                    break
            else:
                raise KeyError(f"no open_clip name for {k!r}")
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


# --- the converter ----------------------------------------------------------------------------


def _load_component(folder: Path, name: str):
    """(state dict, config dict) of one component of a diffusers folder, loaded by the class
    its model_index.json names."""
    import importlib

    index = json.loads((folder / "model_index.json").read_text("utf-8"))
    library, cls_name = index[name]
    cls = getattr(importlib.import_module(library), cls_name)
    model = cls.from_pretrained(folder, subfolder=name)
    config = dict(model.config) if library == "diffusers" else model.config.to_dict()
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, config


FAMILIES = ("sd15", "sdxl")


def to_single_file(folder, out_path, family: str) -> Path:
    """Write the pipeline in ``folder`` (``family`` "sd15" or "sdxl") as one original-format
    ``.safetensors`` checkpoint at ``out_path``; returns ``out_path``."""
    from safetensors.torch import save_file

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    folder, out_path = Path(folder), Path(out_path)
    state: dict[str, torch.Tensor] = {}

    def put(prefix: str, sd: dict):
        for k, v in sd.items():
            if prefix + k in state:
                raise KeyError(f"two tensors map to {prefix + k}")
            state[prefix + k] = v

    unet, unet_cfg = _load_component(folder, "unet")
    put("model.diffusion_model.", _unet_to_ldm(unet, unet_cfg))
    vae, vae_cfg = _load_component(folder, "vae")
    put("first_stage_model.", _vae_to_ldm(vae, vae_cfg))
    text, _ = _load_component(folder, "text_encoder")
    if family == "sd15":
        put("cond_stage_model.transformer.", _hf_clip_names(text))
    else:
        put("conditioner.embedders.0.transformer.", _hf_clip_names(text))
        text2, _ = _load_component(folder, "text_encoder_2")
        put("conditioner.embedders.1.model.", _clip_to_openclip(text2))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out_path),
              metadata={"format": "pt"})
    return out_path
