"""Full-size SDXL and Kolors architectures with random weights, saved as diffusers folders.

No checkpoint can be downloaded on the GPU machines, so benchmarks and smoke tests build the real
architectures with random weights (bench/reference.py: ``sdxl_pipeline``, ``kolors_pipeline``;
SDXL: 2.6B-parameter UNet, CLIP ViT-L and OpenCLIP ViT-bigG text encoders; Kolors: the SDXL UNet
with a 4096->2048 text projection and the 6B-parameter ChatGLM3 text encoder) on the GPU, save
them with ``save_pretrained`` and let storyboard load them from disk like any local model.
Random weights give meaningless pictures but the same arithmetic as a real checkpoint. The
tokenizers are reference.py's, made locally (small vocabularies: token ids index only the start
of the full-size embedding tables). Also ``random_lora``: a character LoRA's shapes, random.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The architectures live in reference.py; their configs stay importable from here.
from reference import (  # noqa: E402,F401
    KOLORS_UNET,
    SDXL_UNET,
    SDXL_VAE,
    kolors_pipeline,
    sdxl_pipeline,
)


def build_sdxl(folder: Path, device: str = "cuda", dtype=torch.float16) -> Path:
    """Full-size SDXL with random weights, saved to ``folder``."""
    sdxl_pipeline(device, dtype).save_pretrained(folder, safe_serialization=True)
    return folder


def build_kolors(folder: Path, device: str = "cuda", dtype=torch.float16) -> Path:
    """Full-size Kolors with random weights, saved to ``folder``."""
    kolors_pipeline(device, dtype).save_pretrained(folder, safe_serialization=True)
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
