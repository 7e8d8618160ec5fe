"""Make the two tiny demonstration LoRAs that examples/two-friends-sdxl.yaml uses.

They are real LoRA files in diffusers format, rank 4, on the self-attention projections of one
SDXL transformer block (``down_blocks.1.attentions.0``, width 640), with small random weights
from a fixed seed, so they load on any SDXL checkpoint and change an image only slightly.
Run: python examples/loras/make_demo_loras.py
"""

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

RANK, WIDTH = 4, 640
BLOCK = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1"


def make(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    tensors = {}
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        tensors[f"{BLOCK}.{proj}.lora_A.weight"] = (
            rng.standard_normal((RANK, WIDTH)) * 0.01).astype(np.float16)
        tensors[f"{BLOCK}.{proj}.lora_B.weight"] = (
            rng.standard_normal((WIDTH, RANK)) * 0.01).astype(np.float16)
    save_file(tensors, str(Path(__file__).with_name(f"{name}.safetensors")),
              metadata={"format": "pt", "storyboard_demo": "true"})


if __name__ == "__main__":
    make("mira", 1)
    make("bolt", 2)
