"""Every fact storyboard knows about a model family, in one table.

In: nothing. Out: ``FAMILIES`` (name -> ``Family``), ``BUILTINS`` (built-in model name ->
``Builtin``), each with its training defaults (``TrainDefaults``), and small look-ups over
them. Validation, compilation, loading, LoRA conversion, token warnings and training all read
their family knowledge from here, so adding a family is one ``Family`` entry plus its tests
(ARCHITECTURE.md, "How to add a family").

Plain data only: no torch, no diffusers, so `validate` and `plan` can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

# The released UNets, as their diffusers config.json files give them (the fields that shape
# modules). SDXL: stabilityai/stable-diffusion-xl-base-1.0; Kolors: Kwai-Kolors/Kolors-diffusers
# (SDXL's UNet with a 4096->2048 text projection and 5632-wide added conditioning, as
# DiffSynth's SDXLUNet(is_kolors=True) also builds it); SD1.5: runwayml/stable-diffusion-v1-5.
_SDXL_UNET: dict[str, Any] = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280], attention_head_dim=[5, 10, 20],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
_KOLORS_UNET: dict[str, Any] = {**_SDXL_UNET, "projection_class_embeddings_input_dim": 5632,
                                "encoder_hid_dim": 4096, "encoder_hid_dim_type": "text_proj"}
_SD15_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768,
)

# The UNet attention projections a character LoRA adapts (what the course trains, and what
# DreamBooth-LoRA scripts target).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class TrainDefaults:
    """What `storyboard train` uses where a character's `train:` section says nothing, and the
    data filter its pictures go through."""

    resolution: int  # pixels: the bucket area is resolution**2 (the model's native size)
    steps: int = 1000
    rank: int = 16
    # None: alpha = rank, a LoRA scale of 1. diffusers' DreamBooth LoRA scripts train that way
    # (lora_alpha=rank), their learning rate of 1e-4 is tuned for it, and a diffusers-format
    # file carries no alphas: any loader reads it at scale 1, so the LoRA behaves the same in
    # storyboard, diffusers, WebUI and ComfyUI. (The course's rank 16, alpha 4 is a scale of
    # 0.25: the same update needs four times the learning rate.)
    alpha: float | None = None
    learning_rate: float = 1e-4
    batch_size: int = 1
    min_snr_gamma: float | None = 5.0  # Min-SNR loss weighting (Hang et al. 2023); None: MSE
    mixed_precision: str = "bf16"  # no loss scaling, and SDXL's VAE does not overflow in it
    checkpoint_every: int = 250  # steps
    # The course's data filter (data-juicer): pictures smaller than this on their shorter side,
    # or wider/taller than these aspect ratios (width / height), are left out with a warning.
    min_side: int = 1024
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    min_images: int = 5  # fewer usable pictures than this: a warning (one is enough to run)
    class_prompt: str = "a photo of a {class_word}"  # prior preservation's class pictures
    prior_images: int = 100
    prior_weight: float = 1.0
    # None: the text encoders may be trained (`train_text_encoder: true`); else why not.
    frozen_text_encoder: str | None = None


@dataclass(frozen=True)
class Family:
    """One pipeline family."""

    name: str  # as written in a story: `model.family`
    pipeline: str  # the diffusers pipeline class
    native_size: int  # pixels, what the model was trained at: a panel's default width/height
    token_limit: int  # tokens the text encoder reads, special tokens included
    special_tokens: int  # of those, added around the text (CLIP: start/end; ChatGLM: gMASK sop)
    tokenizer: str  # "clip" (tokenizer.json or vocab.json + merges.txt) | "sentencepiece"
    text_encoders: tuple[str, ...]  # pipeline components that encode the prompt
    unet: dict[str, Any]  # the released UNet's layout (config.json fields that shape modules)
    lora_targets: tuple[str, ...] = ATTENTION_PROJECTIONS
    # What a LoRA inspected as one of these families may be loaded into this one: SDXL and
    # Kolors share a UNet, so a LoRA that adapts nothing that differs fits both.
    lora_accepts: frozenset[str] = field(default_factory=frozenset)
    # Single-file checkpoints (from_single_file): the repo whose configs describe the pipeline,
    # and the tensor-name prefix that tells this family's checkpoints apart (None: diffusers
    # folders and repos only).
    single_file_config: str | None = None
    single_file_marker: str | None = None
    train: TrainDefaults = TrainDefaults(resolution=1024)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sdxl", "StableDiffusionXLPipeline", 1024, 77, 2, "clip",
           ("text_encoder", "text_encoder_2"), _SDXL_UNET,
           lora_accepts=frozenset({"sdxl", "sdxl-or-kolors"}),
           single_file_config="stabilityai/stable-diffusion-xl-base-1.0",
           # SDXL carries a second text encoder under `conditioner.embedders.1`
           single_file_marker="conditioner.embedders.1.",
           train=TrainDefaults(resolution=1024)),
    Family("kolors", "KolorsPipeline", 1024, 256, 2, "sentencepiece", ("text_encoder",),
           _KOLORS_UNET, lora_accepts=frozenset({"kolors", "sdxl-or-kolors"}),
           train=TrainDefaults(resolution=1024, frozen_text_encoder=(
               "Kolors' text encoder is ChatGLM3-6B, six billion parameters: storyboard trains "
               "the UNet's LoRA only"))),
    Family("sd15", "StableDiffusionPipeline", 512, 77, 2, "clip", ("text_encoder",),
           _SD15_UNET, lora_accepts=frozenset({"sd15"}),
           single_file_config="stable-diffusion-v1-5/stable-diffusion-v1-5",
           single_file_marker="cond_stage_model.",
           train=TrainDefaults(resolution=512, min_side=512)),
)}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

# What a LoRA's cross-attention input width says about its base model.
CROSS_ATTENTION_WIDTHS = {768: "sd15", 1024: "sd2", 2048: "sdxl-or-kolors"}


@dataclass(frozen=True)
class Builtin:
    """A built-in offline model: a real architecture at toy width with random weights."""

    name: str
    family: str
    recipe: int  # version of the recipe that builds it; part of every job hash
    native_size: int = 128  # pixels: small enough that a CPU renders a story in seconds
    # Trains in seconds on a CPU, from small pictures: for tests and trying the workflow.
    train: TrainDefaults = TrainDefaults(resolution=64, steps=20, rank=4, checkpoint_every=10,
                                         min_side=32, mixed_precision="no", prior_images=4)


BUILTINS: dict[str, Builtin] = {b.name: b for b in (
    # Changing a recipe (engine/builtin.py) must bump its version: panels then re-render.
    Builtin("tiny-sdxl", "sdxl", 2),
    Builtin("tiny-kolors", "kolors", 2),
)}


def train_defaults(builtin: str | None, family: str) -> TrainDefaults:
    """The training defaults of a built-in model, else of its family. A built-in keeps its
    family's rules on what may be trained (Kolors' ChatGLM stays frozen)."""
    if builtin:
        return replace(BUILTINS[builtin].train,
                       frozen_text_encoder=FAMILIES[family].train.frozen_text_encoder)
    return FAMILIES[family].train


def family_of_pipeline(class_name: object) -> str | None:
    """The family whose pipeline class is ``class_name`` (from a model_index.json), or None."""
    return next((f.name for f in FAMILIES.values() if f.pipeline == class_name), None)


def family_of_checkpoint_keys(keys: list[str]) -> str | None:
    """The family of a single-file checkpoint, from its tensor names alone, or None."""
    for family in FAMILIES.values():
        marker = family.single_file_marker
        if marker and any(k.startswith(marker) for k in keys):
            return family.name
    return None
