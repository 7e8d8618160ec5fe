"""Round 4 of the SDXL UNet levers: cheap compiler and library settings on top of storyboard's path.

Round 2 (bench/levers.py --round2) meant to time these but its compiled rows timed the eager
UNet (the timing closure held the uncompiled module), so they were never measured. Here every
variant starts from the UNet as storyboard runs it (fp16, channels_last, fused QKV projections,
torch.compile of the whole UNet), 8 panels (a CFG batch of 16), 1024x1024, the same inputs, and
changes one thing:
- cudnn_benchmark: cuDNN times its convolution algorithms for each shape and keeps the fastest;
- coordinate_descent_tuning: inductor tunes the block sizes of its Triton kernels (normalisation,
  GEGLU, residual adds) by coordinate descent, results kept in the compile cache;
- conv_1x1_as_mm: 1x1 convolutions as matrix multiplications;
- cudagraphs: inductor's CUDA graphs (mode "reduce-overhead"), to close the gaps between kernels;
- combinations of those;
- max_autotune_gemm: inductor benchmarks its Triton matmul templates against cuBLAS for each
  matmul shape and may fuse the following pointwise work into a template's epilogue;
- split_geglu: each GEGLU's projection (one Linear to 2x the width, then chunk, GELU and multiply)
  as two Linears, hidden and gate, so that with max_autotune_gemm the GELU and the multiply can
  become the gate matmul's epilogue instead of a separate pass over the doubled activation;
- max_autotune_pointwise: inductor benchmarks a few block sizes for each Triton kernel;
- cdt_backport: coordinate descent again, with storyboard/tuning.py's backport of the upstream
  fix applied first, to see whether a warm cache then keeps the tuning.
For each: first call (compile) seconds into an empty cache for that setting, the same again after
`torch._dynamo.reset()` with the cache warm (what a second `storyboard build` process pays, short
of the process start), ms per panel-step, the fraction of the bf16 matmul peak, the summed kernel
time of one step (the gap to the measured time is GPU idle time), and the relative error
against eager fp16.
Run on the GPU:  python bench/levers4.py --out levers4.json [--variants base cudnn_benchmark ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# An empty compile cache of its own, so that first-call seconds really are cold.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="levers4-inductor-")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from levers import inputs, time_call, unet_flops  # noqa: E402
from levers3 import PANELS, fresh_unet, profile_step, rel_err, start_report  # noqa: E402

# name -> (torch.compile options for inductor, cudnn.benchmark); "split_geglu" in a name swaps the
# GEGLU modules first (and for every variant after it: list those last).
MAG = {"max_autotune_gemm": True}
VARIANTS: dict[str, tuple[dict, bool]] = {
    "base": ({}, False),
    "cudnn_benchmark": ({}, True),
    "coordinate_descent_tuning": ({"coordinate_descent_tuning": True}, False),
    "conv_1x1_as_mm": ({"conv_1x1_as_mm": True}, False),
    "cudagraphs": ({"triton.cudagraphs": True}, False),
    "cdt+cudnn_benchmark": ({"coordinate_descent_tuning": True}, True),
    "cdt+cudnn_benchmark+cudagraphs": ({"coordinate_descent_tuning": True,
                                        "triton.cudagraphs": True}, True),
    "max_autotune_gemm": (MAG, False),
    "split_geglu": ({}, False),
    "split_geglu+max_autotune_gemm": (MAG, False),
    # Inductor benchmarks a few block sizes for each normalisation/activation kernel (a
    # multi-config autotune, whose result a warm cache finds).
    "max_autotune_pointwise": ({"max_autotune_pointwise": True}, False),
    # Coordinate descent with storyboard/tuning.py's backport (pytorch#173391 for torch 2.11)
    # applied first: does a warm cache then load as fast as without tuning? List it last.
    "cdt_backport": ({"coordinate_descent_tuning": True}, False),
}


class SplitGEGLU(torch.nn.Module):
    """diffusers' GEGLU with its projection split in two Linears (same weights, same maths)."""

    def __init__(self, geglu):
        super().__init__()
        weight, bias = geglu.proj.weight.detach(), geglu.proj.bias.detach()
        n = weight.shape[0] // 2
        self.hidden = torch.nn.Linear(weight.shape[1], n, device=weight.device, dtype=weight.dtype)
        self.gate = torch.nn.Linear(weight.shape[1], n, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.hidden.weight.copy_(weight[:n])
            self.hidden.bias.copy_(bias[:n])
            self.gate.weight.copy_(weight[n:])
            self.gate.bias.copy_(bias[n:])

    def forward(self, x, *args, **kwargs):
        return self.hidden(x) * torch.nn.functional.gelu(self.gate(x))


def split_geglu(unet) -> int:
    from diffusers.models.activations import GEGLU

    swapped = 0
    for module in list(unet.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GEGLU):
                setattr(module, name, SplitGEGLU(child))
                swapped += 1
    return swapped


def first_call(unet, kw, options: dict) -> tuple:
    compiled = torch.compile(unet, options=dict(options) or None)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = compiled(**kw).sample.clone()  # cudagraph outputs are overwritten by the next run
    torch.cuda.synchronize()
    return compiled, out, round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()
    report, save = start_report(
        args.out, baseline="fp16, channels_last, fused QKV, torch.compile (storyboard today)")
    torch.manual_seed(1)
    kw = inputs(PANELS)
    unet = fresh_unet()
    flops = unet_flops(unet, 1)
    report["unet_tflop_per_panel_step"] = round(flops / 1e12, 2)
    with torch.inference_mode():
        ref = unet(**kw).sample
    eager = time_call(unet, kw)
    report["eager_fp16_ms_per_panel_step"] = round(eager * 1e3 / PANELS, 2)
    unet.to(memory_format=torch.channels_last)
    unet.fuse_qkv_projections()
    save()

    for name in args.variants:
        options, bench_cudnn = VARIANTS[name]
        if "backport" in name:
            from storyboard.tuning import warm_cache_keeps_tuning

            report["backport_applied"] = warm_cache_keeps_tuning()
        if "split_geglu" in name and "split_geglu_modules" not in report:
            report["split_geglu_modules"] = split_geglu(unet)
        torch.backends.cudnn.benchmark = bench_cudnn
        row: dict = {"options": options, "cudnn_benchmark": bench_cudnn}
        try:
            torch._dynamo.reset()
            compiled, out, row["first_call_s"] = first_call(unet, kw, options)
            row["rel_err_vs_eager_fp16"] = float(f"{rel_err(out, ref):.2e}")
            seconds = time_call(compiled, kw, reps=20)
            row["ms_per_panel_step"] = round(seconds * 1e3 / PANELS, 2)
            row["fraction_of_peak"] = round(flops * PANELS / seconds / 1e12
                                            / report["bf16_matmul_peak_tflops"], 3)
            prof = profile_step(compiled, kw)
            row["kernel_ms_per_step"] = prof["total_ms"]
            row["measured_ms_per_step"] = round(seconds * 1e3, 2)
            row["split_ms"] = prof["split_ms"]
            torch._dynamo.reset()
            from torch._dynamo.utils import counters
            before = counters["inductor"]["coordesc_tuning_bench"]
            compiled, _, row["first_call_warm_cache_s"] = first_call(unet, kw, options)
            row["coordesc_benchmarks_on_warm_cache"] = \
                counters["inductor"]["coordesc_tuning_bench"] - before
        except Exception as exc:  # noqa: BLE001 - a lever that fails is a result too
            row["failed"] = f"{type(exc).__name__}: " + str(exc).splitlines()[0][:300]
        compiled = out = None
        report.setdefault("variants", {})[name] = row
        print(name, json.dumps(row), flush=True)
        save()
    torch.backends.cudnn.benchmark = False
    save()


if __name__ == "__main__":
    main()
