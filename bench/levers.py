"""Which speed levers pay for the SDXL UNet on this GPU? One UNet step, timed per lever.

For batch sizes of 1, 4 and 8 panels (the UNet sees twice that with CFG) at 1024x1024, times one
UNet forward with CUDA events for: eager fp16; channels_last; + fused QKV projections; + regional
torch.compile of the repeated transformer blocks (compile seconds reported); full torch.compile
of the UNet. Also measures the GPU's bf16 matmul peak and the UNet's FLOPs per step (PyTorch's
FlopCounterMode), so each line reads as achieved TFLOP/s and a fraction of the peak.
Run on the GPU:  python bench/levers.py --out levers.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_models import SDXL_UNET  # noqa: E402


def matmul_peak(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (start.elapsed_time(end) / 1e3) / 1e12


def inputs(panels: int, dtype=torch.float16):
    b = 2 * panels
    return dict(sample=torch.randn(b, 4, 128, 128, device="cuda", dtype=dtype),
                timestep=torch.tensor(500.0, device="cuda"),
                encoder_hidden_states=torch.randn(b, 77, 2048, device="cuda", dtype=dtype),
                added_cond_kwargs={"text_embeds": torch.randn(b, 1280, device="cuda",
                                                              dtype=dtype),
                                   "time_ids": torch.randn(b, 6, device="cuda", dtype=dtype)})


@torch.inference_mode()
def time_call(fn, kw: dict, reps: int = 10) -> float:
    """Seconds per call of ``fn(**kw)`` on the GPU (CUDA events, after two warm-up calls)."""
    for _ in range(2):
        fn(**kw)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(reps):
        fn(**kw)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps / 1e3


def time_unet(unet, panels: int, reps: int = 10) -> float:
    return time_call(unet, inputs(panels), reps)


@torch.inference_mode()
def unet_flops(unet, panels: int = 1) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        unet(**inputs(panels))
    return counter.get_total_flops()


def round2(unet, record) -> None:
    import torch._inductor.config as inductor

    torch.backends.cudnn.benchmark = True
    record("eager+cudnn_benchmark")
    compiled = torch.compile(unet, fullgraph=True)
    t0 = time.perf_counter()
    time_unet(compiled, 1, reps=1)
    record("full_compile+cudnn_benchmark", {"first_call_s": round(time.perf_counter() - t0, 1)},
           compiled)
    torch._dynamo.reset()
    inductor.conv_1x1_as_mm = True
    inductor.epilogue_fusion = False
    inductor.coordinate_descent_tuning = True
    compiled = torch.compile(unet, fullgraph=True)
    t0 = time.perf_counter()
    time_unet(compiled, 1, reps=1)
    record("full_compile+cudnn+inductor_tuning",
           {"first_call_s": round(time.perf_counter() - t0, 1)}, compiled)


def main() -> None:
    from diffusers import UNet2DConditionModel

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--panels", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--skip-full-compile", action="store_true")
    ap.add_argument("--round2", action="store_true",
                    help="cuDNN autotuning, and compile variants without channels_last")
    args = ap.parse_args()
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["bf16_matmul_peak_tflops"] = round(matmul_peak(), 1)
    print(report, flush=True)

    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**SDXL_UNET).to(torch.float16).eval()
    flops = unet_flops(unet, 1)
    report["unet_tflop_per_step_per_panel"] = round(flops / 1e12, 2)
    rows = []

    def record(name: str, extra: dict | None = None, fn=None) -> None:
        for panels in args.panels:
            seconds = time_unet(fn or unet, panels)
            tflops = flops * panels / seconds / 1e12
            row = {"lever": name, "panels": panels, "ms_per_step": round(seconds * 1e3, 2),
                   "ms_per_panel_step": round(seconds * 1e3 / panels, 2),
                   "tflops": round(tflops, 1),
                   "fraction_of_peak": round(tflops / report["bf16_matmul_peak_tflops"], 3),
                   **(extra or {})}
            rows.append(row)
            print(json.dumps(row), flush=True)

    if args.round2:
        round2(unet, record)
        report["rows"] = rows
        report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
        return
    record("eager")
    unet.to(memory_format=torch.channels_last)
    record("channels_last")
    unet.fuse_qkv_projections()
    record("channels_last+fused_qkv")
    t0 = time.perf_counter()
    unet.compile_repeated_blocks(fullgraph=True)
    time_unet(unet, args.panels[0], reps=1)
    compile_s = time.perf_counter() - t0
    record("regional_compile", {"first_call_s": round(compile_s, 1)})
    if not args.skip_full_compile:
        torch.manual_seed(0)
        with torch.device("cuda"):
            full = UNet2DConditionModel(**SDXL_UNET).to(torch.float16).eval()
        full.to(memory_format=torch.channels_last)
        full.fuse_qkv_projections()
        unet = torch.compile(full, fullgraph=True)
        t0 = time.perf_counter()
        time_unet(unet, args.panels[0], reps=1)
        record("full_compile", {"first_call_s": round(time.perf_counter() - t0, 1)})
    report["rows"] = rows
    report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
