"""Which scaled-dot-product-attention kernel is fastest for SDXL's UNet on this GPU? A probe.

In: the batch (panels; CFG doubles it) and size. Out: one JSON object on stdout.

PyTorch picks flash attention first on most GPUs; on Hopper, cuDNN's fused attention can be
faster at SDXL's shapes (4096 and 1024 tokens of 64-dim heads), and that would shorten every
step of every panel. This probe builds the full-size SDXL UNet (random fp16 weights, diffusers'
own attention processor) and times, for each backend PyTorch offers here:
1. the attention alone at SDXL's self-attention shapes;
2. whole UNet calls, with the largest difference from the default backend's output.

    python bench/sdpa_probe.py --panels 8 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import SDXL_UNET  # noqa: E402

BACKENDS = {"default": None, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def timed(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def under(backend, fn):
    def run():
        if backend is None:
            return fn()
        with sdpa_kernel([backend]):
            return fn()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panels", type=int, nargs="+", default=[8])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    from diffusers import UNet2DConditionModel

    out: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                 "cudnn": torch.backends.cudnn.version(), "attention": {}, "unet": {},
                 # The order PyTorch tries the kernels in when none is chosen ("default").
                 "priority": [SDPBackend(int(b)).name for b in torch._C._get_sdp_priority_order()]}
    f16 = dict(device="cuda", dtype=torch.float16)
    # 1. The attention alone: SDXL's self-attention at the two resolutions it attends at.
    for tokens, heads in ((args.size // 16) ** 2, 10), ((args.size // 32) ** 2, 20):
        q, k, v = (torch.randn(2 * args.panels[0], heads, tokens, 64, **f16) for _ in range(3))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        row = {}
        for name, backend in BACKENDS.items():
            fn = under(backend, lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
            try:
                row[name] = {"ms": round(timed(fn, 50) * 1e3, 3),
                             "max_diff": float((fn() - ref).abs().max())}
            except RuntimeError as exc:
                row[name] = {"error": str(exc).splitlines()[0][:200]}
        out["attention"][f"{tokens}x{heads}"] = row
        print(json.dumps(row), file=sys.stderr, flush=True)
    # 2. Whole UNet calls.
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SDXL_UNET).to(**f16).eval()
    side = args.size // 8
    for panels in args.panels:
        b = 2 * panels
        g = torch.Generator("cuda").manual_seed(1)
        x = torch.randn(b, 4, side, side, generator=g, **f16)
        ctx = torch.randn(b, 77, 2048, generator=g, **f16)
        added = {"text_embeds": torch.randn(b, 1280, generator=g, **f16),
                 "time_ids": torch.tensor([[args.size, args.size, 0, 0, args.size, args.size]],
                                          **f16).repeat(b, 1)}
        t = torch.tensor(500.0, device="cuda")

        def call():
            with torch.inference_mode():
                return unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample

        ref = under(None, call)()
        row = {}
        for name, backend in BACKENDS.items():
            fn = under(backend, call)
            try:
                s = timed(fn, args.reps)
                y = fn()
                row[name] = {"ms_per_panel_step": round(s / panels * 1e3, 2),
                             "rel_diff": float((y - ref).norm() / ref.norm())}
            except RuntimeError as exc:
                row[name] = {"error": str(exc).splitlines()[0][:200]}
        out["unet"][f"{panels}_panels"] = row
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
