"""Start the GPU's libraries on a thread while the model's Python libraries import.

In: the device and dtype a model is about to be loaded on (``loading.load_model``, straight
after torch is imported). Out: a running ``Warmup``; ``join()`` returns a ``WarmupResult`` (the
seconds it took, or why it stopped). It changes nothing a render computes: no random numbers,
no settings, only libraries and kernels loaded that the first batch would otherwise load.

Why: a process's first batch pays seconds its later ones do not (``bench/first_batch.py``, an
8-panel SDXL batch on an H200: the first prompt encoding 1.5 s more, the first denoising step
1.8 s more): the CUDA context, cuBLAS and cuDNN start, and each kernel is loaded at first use.
None of that needs the model's weights, and all of it can happen while diffusers and
transformers import, which takes seconds of the main thread. A thread suits this work where it
did not suit compiling (the background compile measured 2.3x slower batches and was removed):
here the main thread is importing, not rendering, and the warm-up spends its time inside CUDA
and its libraries, which run without Python's GIL; it takes the GIL only between a few dozen
operations.

The operations are the kinds a diffusion pipeline runs, in the model's dtype, at sizes like its
own: matrix products with bias (the text encoders, attention projections, feed-forwards),
batched products, attention (causal, masked and plain), convolutions (3x3 and 1x1), group and
layer norms, the activations, softmax, nearest upsampling. Inputs are filled with constants:
the warm-up must not draw from any random generator. ``STORYBOARD_WARMUP=0`` turns it off (to
measure what it saves).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupResult:
    seconds: float
    error: str | None = None  # why it stopped early (it never fails a load)


def enabled() -> bool:
    return os.environ.get("STORYBOARD_WARMUP", "1").strip().lower() not in ("0", "false", "no",
                                                                           "off")


class Warmup:
    """The warm-up's thread: ``start`` it, ``join`` it before rendering."""

    def __init__(self, device: str, dtype: str) -> None:
        self.device = device
        self.dtype = dtype
        self._result: WarmupResult | None = None
        self._thread = threading.Thread(target=self._run, name="storyboard-warmup", daemon=True)

    @classmethod
    def start(cls, device: str, dtype: str) -> Warmup | None:
        """A started warm-up for a CUDA ``device``, or None (another device, or turned off)."""
        if not device.startswith("cuda") or not enabled():
            return None
        warmup = cls(device, dtype)
        warmup._thread.start()
        return warmup

    def join(self) -> WarmupResult:
        self._thread.join()
        assert self._result is not None
        return self._result

    def _run(self) -> None:
        t0 = time.perf_counter()
        error = None
        try:
            run_operations(self.device, self.dtype)
        except Exception as exc:  # noqa: BLE001 - a warm-up only saves time; the load reports
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        self._result = WarmupResult(round(time.perf_counter() - t0, 3), error)


# fp8 models load in bf16 (loading.TORCH_DTYPES); fp32 renders in fp32.
_TORCH_DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp8": "bfloat16", "fp32": "float32"}


def run_operations(device: str, dtype: str, *, prompts: int = 8, latent: int = 64) -> None:
    """The operations, once, then wait for the device to finish them: for a batch of
    ``prompts`` prompts (and as many negatives) at latents of side ``latent`` (64: a 512-pixel
    image's). Tests on the CPU use less."""
    import torch
    import torch.nn.functional as F

    dev = torch.device(device)
    dt = getattr(torch, _TORCH_DTYPES.get(dtype, "float32"))

    def full(*shape: int, value: float = 0.01, dtype=dt):
        return torch.full(shape, value, dtype=dtype, device=dev)

    pixels, half, text = latent * latent, (latent // 2) ** 2, 2 * prompts * 77

    with torch.inference_mode():
        # Matrix products with and without bias: a CLIP layer's (77 tokens a prompt),
        # attention projections and a feed-forward at latent resolution.
        for rows, inner, outer in ((text, 768, 3072), (text, 1280, 1280),
                                   (pixels, 640, 640), (half, 1280, 5120)):
            F.linear(full(rows, inner), full(outer, inner), full(outer))
            F.linear(full(rows, inner), full(outer, inner))
        torch.bmm(full(2 * prompts, 77, 64), full(2 * prompts, 64, 77))
        torch.baddbmm(full(2 * prompts, 77, 77), full(2 * prompts, 77, 64),
                      full(2 * prompts, 64, 77))
        # Attention: the text encoder's (causal, and with a mask), the UNet's self- and
        # cross-attention.
        q = full(2, 12, 77, 64)
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
        F.scaled_dot_product_attention(q, q, q, attn_mask=full(2, 1, 77, 77, value=0.0))
        for tokens, context in ((pixels, pixels), (half, half), (pixels, 77)):
            F.scaled_dot_product_attention(full(2, 10, tokens, 64), full(2, 10, context, 64),
                                           full(2, 10, context, 64))
        # Convolutions as a UNet and a VAE run them.
        image = full(2, 4, latent, latent)
        F.conv2d(image, full(320, 4, 3, 3), full(320), padding=1)
        hidden = full(2, 320, latent, latent)
        F.conv2d(hidden, full(320, 320, 3, 3), full(320), padding=1)
        F.conv2d(hidden, full(640, 320, 1, 1), full(640))
        F.conv2d(hidden, full(320, 320, 3, 3), full(320), stride=2, padding=1)
        # Norms, activations, softmax, upsampling, the element-wise kernels in between.
        F.group_norm(hidden, 32, full(320), full(320), eps=1e-5)
        tokens = full(2, pixels, 320)
        F.layer_norm(tokens, (320,), full(320), full(320))
        F.silu(hidden)
        F.gelu(tokens)
        F.gelu(tokens, approximate="tanh")
        torch.softmax(full(2, 77, 77), dim=-1)
        F.interpolate(hidden, scale_factor=2.0, mode="nearest")
        torch.cat([hidden, hidden], dim=1) * 0.5 + hidden.repeat(1, 2, 1, 1)
        hidden.float()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
