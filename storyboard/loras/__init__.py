"""LoRA files: what they are, and the same weights in the format another tool reads.

In: a LoRA file (``.safetensors``, ``.bin``, ``.pt``, ``.pth`` or ``.ckpt``) in one of four
formats:

- ``diffusers``: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (and ``text_encoder.``,
  ``text_encoder_2.``), as ``save_lora_weights`` writes; alpha, if any, in the safetensors
  metadata ``lora_adapter_metadata`` (diffusers >= 0.34). Older attention-processor names
  (``...attn1.processor.to_q_lora.down.weight``) are read too.
- ``peft``: the same module names without the ``unet.`` prefix (``base_model.model.`` and an
  adapter segment such as ``.default`` allowed), as PEFT's ``save_pretrained`` or
  ``get_peft_model_state_dict`` give; alpha from an ``adapter_config.json`` beside an
  ``adapter_model.*`` file.
- ``kohya`` (WebUI / ComfyUI): ``lora_unet_<module_with_underscores>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha``; SDXL files use the original SGM/LDM module names
  (``input_blocks_4_1_...``), SD1.5 files diffusers' names; ``lora_te_`` / ``lora_te1_`` /
  ``lora_te2_`` for the CLIP text encoders.
- ``diffsynth``: DiffSynth-Studio's training output (``train_kolors_lora.py`` and the other
  ``LightningModelForT2ILoRA`` scripts): a PyTorch Lightning ``.ckpt`` holding only the PEFT
  LoRA tensors of DiffSynth's own UNet (``blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default
  .weight``), with no alpha (see ``layout`` for DiffSynth's names).

Out: ``inspect_lora`` -> ``LoraInfo`` (format, base family, ranks, alphas, module kinds, sizes,
whether it touches a text encoder); ``to_diffusers`` -> a state dict that
``StableDiffusionXLPipeline.load_lora_weights`` / ``KolorsPipeline.load_lora_weights`` load with
no unexpected or missing keys, alpha already applied; ``convert_lora`` -> a ``.safetensors``
file in diffusers or kohya format, written atomically; ``diffsynth_names`` -> diffusers UNet
layer name -> DiffSynth-Studio's. Every problem with a file is a ``LoraFormatError`` naming it.

The modules, in the order a file passes through them:

- ``read``: the file's tensors (pickles only ever with ``torch.load(weights_only=True)``) parsed
  into layers under the format's own names, with the alphas the file stores (``.alpha``
  tensors, ``lora_adapter_metadata``, ``adapter_config.json``).
- ``layout``: a UNet's layers under diffusers', SGM (kohya SDXL) and DiffSynth names with their
  widths, from a walk of the UNet built on the meta device; raw names resolved to diffusers'
  and checked against it.
- ``detect``: which family a LoRA is for (``storyboard.families`` holds the families' UNets,
  what each accepts and the cross-attention widths), which UNet it fits, and ``inspect_lora``.
- ``convert``: alpha rules (a missing alpha is the rank; ``to_diffusers`` folds alpha/rank into
  ``lora_B``, the kohya writer stores ``.alpha``), ``to_diffusers`` and ``convert_lora``.
"""

from __future__ import annotations

from .convert import convert_lora, to_diffusers
from .detect import LoraInfo, inspect_lora
from .layout import diffsynth_names
from .read import PICKLE_SUFFIXES, SUFFIXES, LoraFormatError

__all__ = ["LoraFormatError", "LoraInfo", "inspect_lora", "to_diffusers", "convert_lora",
           "diffsynth_names", "SUFFIXES", "PICKLE_SUFFIXES"]
