"""Round 3 of the SDXL UNet levers: where the compiled step spends its time, and what is left.

One process on the GPU, all at 8 panels (a CFG batch of 16), 1024x1024, same inputs throughout:
1. attention kernels at the SDXL shapes (head dim 64; 4096 and 1024 tokens; cross-attention on
   77 tokens) for each SDPA backend, and which one PyTorch picks by default;
2. the UNet as storyboard runs it today (fp16, channels_last, fused QKV, torch.compile): time,
   error against eager, and a profile of one step split into GEMMs, convolutions, attention and
   Triton (fused elementwise/normalisation) kernels;
3. the same with the fastest attention backend forced, if it is not the default;
4. a UNet with a LoRA (rank 32 on the attention projections, peft), as storyboard ran such
   stories so far (eager, adapter live), and with the LoRA merged into the weights and compiled;
5. an opt-in FP8 path: torchao's dynamic float8 (e4m3, per-row scales) on every Linear layer of
   a bf16 UNet, compiled: time and error against eager fp16.
Run on the GPU:  python bench/levers3.py --out levers3.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_models import SDXL_UNET  # noqa: E402
from levers import inputs, matmul_peak, time_call, unet_flops  # noqa: E402

PANELS = 8


def rel_err(out, ref) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm())


def fresh_unet(dtype=torch.float16):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device("cuda"):
        return UNet2DConditionModel(**SDXL_UNET).to(dtype).eval()


def free() -> None:
    torch._dynamo.reset()
    gc.collect()
    torch.cuda.empty_cache()


def attention_table() -> tuple[list, str | None]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows, wins = [], {}
    for name, b, h, n, m in [("self 64x64", 16, 10, 4096, 4096), ("self 32x32", 16, 20, 1024, 1024),
                             ("cross 64x64", 16, 10, 4096, 77), ("cross 32x32", 16, 20, 1024, 77)]:
        # The layout diffusers' fused processor hands SDPA: views into one projection output.
        q = torch.randn(b, n, 3 * h * 64, device="cuda", dtype=torch.float16)
        q = q[..., : h * 64].view(b, n, h, 64).transpose(1, 2)
        kv = torch.randn(b, m, 2 * h * 64, device="cuda", dtype=torch.float16)
        k, v = (t.view(b, m, h, 64).transpose(1, 2) for t in kv.chunk(2, dim=-1))
        flops = 4 * b * h * n * m * 64
        row = {"shape": name}
        try:
            row["default"] = SDPBackend(torch._fused_sdp_choice(q, k, v)).name
        except Exception as exc:  # noqa: BLE001 - private API, informative only
            row["default"] = f"? {type(exc).__name__}"
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            ref = F.scaled_dot_product_attention(q, k, v)
        for backend in (None, SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                        SDPBackend.EFFICIENT_ATTENTION):
            label = backend.name if backend else "default"
            try:
                with sdpa_kernel(backend) if backend else contextlib.nullcontext():
                    s = time_call(lambda: F.scaled_dot_product_attention(q, k, v), {}, reps=20)
                    err = rel_err(F.scaled_dot_product_attention(q, k, v), ref)
                row[label] = {"ms": round(s * 1e3, 3), "tflops": round(flops / s / 1e12, 1),
                              "rel_err_vs_flash": float(f"{err:.2e}")}
                if backend and name.startswith("self"):
                    wins[backend] = wins.get(backend, 0) + s
            except RuntimeError as exc:
                row[label] = f"unsupported: {str(exc).splitlines()[0][:120]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    best = min(wins, key=wins.get) if wins else None
    return rows, best


def profile_step(fn, kw) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        fn(**kw)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(**kw)
            torch.cuda.synchronize()
    kernels: dict[str, float] = {}
    launches = 0
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", 0) or 0
        if us > 0:
            kernels[evt.key] = kernels.get(evt.key, 0) + us
            launches += evt.count
    total = sum(kernels.values())

    def kind(name: str) -> str:
        low = name.lower()
        if any(s in low for s in ("flash", "fmha", "sdpa", "attention", "attn")):
            return "attention"
        if low.startswith("triton"):
            return "triton"
        if any(s in low for s in ("fprop", "conv", "dgrad", "implicit")):
            return "conv"
        if any(s in low for s in ("gemm", "nvjet", "cutlass", "xmma", "cublas", "scaled_mm")):
            return "gemm"
        return "other"

    split: dict[str, float] = {}
    for name, us in kernels.items():
        split[kind(name)] = split.get(kind(name), 0) + us
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    return {"total_ms": round(total / 1e3, 2), "launches": launches,
            "split_ms": {k: round(v / 1e3, 2) for k, v in sorted(split.items())},
            "top": [[name[:110], round(us / 1e3, 2), kind(name)] for name, us in top]}


def timed_compile(fn, kw, ctx=contextlib.nullcontext) -> tuple:
    compiled = torch.compile(fn)
    t0 = time.perf_counter()
    with ctx(), torch.inference_mode():
        out = compiled(**kw).sample
    torch.cuda.synchronize()
    return compiled, out, round(time.perf_counter() - t0, 1)


def fp8(kw, row, report, save, how=("regional", "full")) -> None:
    """torchao's dynamic float8 (e4m3, per-row scales) on every Linear of a bf16 UNet with
    channels_last and fused QKV: regional compilation of the repeated transformer blocks first
    (seconds to compile), then the whole UNet (torchao's inductor settings left off, since they
    slow compilation down)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    kwb = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point()
               and k != "timestep" else v) for k, v in kw.items()}
    kwb["added_cond_kwargs"] = {k: v.to(torch.bfloat16) for k, v in kw["added_cond_kwargs"].items()}
    for mode in how:
        torch._dynamo.reset()
        unet = fresh_unet(torch.bfloat16)
        if mode == how[0]:
            with torch.inference_mode():
                row("eager bf16", time_call(unet, kwb), unet(**kwb).sample)
        unet.to(memory_format=torch.channels_last)
        unet.fuse_qkv_projections()
        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False),
            filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear)
            and m.in_features % 16 == 0 and m.out_features % 16 == 0)
        try:
            t0 = time.perf_counter()
            if mode == "regional":
                unet.compile_repeated_blocks(fullgraph=True)
                fn = unet
            else:
                fn = torch.compile(unet)
            with torch.inference_mode():
                out = fn(**kwb).sample
            torch.cuda.synchronize()
            first = round(time.perf_counter() - t0, 1)
            row(f"fp8 linears (torchao rowwise), bf16, channels_last+fused_qkv, {mode} compile",
                time_call(fn, kwb), out, first_call_s=first)
            report[f"profile_fp8_{mode}"] = profile_step(fn, kwb)
            print(json.dumps(report[f"profile_fp8_{mode}"]["split_ms"]), flush=True)
            save()
        except Exception as exc:  # noqa: BLE001 - a lever that fails is a result too
            report.setdefault("unet", {})[f"fp8 {mode}"] = f"failed: {type(exc).__name__}: " \
                + str(exc).splitlines()[0][:300]
            print(report["unet"][f"fp8 {mode}"], flush=True)
            save()
        fn = out = unet = None  # release the GPU memory before the next variant
        free()


def start_report(out: Path | None, **extra) -> tuple[dict, Callable[[], None]]:
    """The report's header (GPU, versions, the bf16 matmul peak measured now) and a ``save()``
    that writes it to ``out`` with the peak GPU memory so far, for saving after every section."""
    report: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "cudnn": torch.backends.cudnn.version(), "panels": PANELS, **extra}
    report["bf16_matmul_peak_tflops"] = round(matmul_peak(), 1)
    print(json.dumps(report), flush=True)

    def save() -> None:
        report["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 1)
        if out:
            out.write_text(json.dumps(report, indent=2))

    return report, save


def main() -> None:
    from torch.nn.attention import sdpa_kernel

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--skip", nargs="*", default=[], choices=["lora", "fp8", "backend"])
    ap.add_argument("--only-fp8", action="store_true",
                    help="eager fp16 reference, then the FP8 variants only")
    args = ap.parse_args()
    report, save = start_report(args.out)
    if not args.only_fp8:
        report["attention"], best = attention_table()
        save()

    torch.manual_seed(1)
    kw = inputs(PANELS)
    unet = fresh_unet()
    flops = unet_flops(unet, 1)
    report["unet_tflop_per_panel_step"] = round(flops / 1e12, 2)

    def row(name, seconds, out=None, **extra):
        r = {"ms_per_panel_step": round(seconds * 1e3 / PANELS, 2),
             "fraction_of_peak": round(flops * PANELS / seconds / 1e12
                                       / report["bf16_matmul_peak_tflops"], 3), **extra}
        if out is not None:
            r["rel_err_vs_eager_fp16"] = float(f"{rel_err(out, ref):.2e}")
        report.setdefault("unet", {})[name] = r
        print(name, json.dumps(r), flush=True)
        save()

    with torch.inference_mode():
        ref = unet(**kw).sample
    row("eager fp16", time_call(unet, kw))
    if args.only_fp8:
        del unet
        free()
        fp8(kw, row, report, save)
        return
    report["profile_eager"] = profile_step(unet, kw)
    print(json.dumps(report["profile_eager"]["split_ms"]), flush=True)

    # 2. As storyboard runs it.
    unet.to(memory_format=torch.channels_last)
    unet.fuse_qkv_projections()
    compiled, out, first = timed_compile(unet, kw)
    row("storyboard: channels_last+fused_qkv+compile", time_call(compiled, kw), out,
        first_call_s=first)
    report["profile_storyboard"] = profile_step(compiled, kw)
    print(json.dumps(report["profile_storyboard"], indent=1), flush=True)
    save()

    # 3. Another attention backend, if one was faster on the self-attention shapes.
    default = report["attention"][0].get("default")
    report["fastest_self_attention_backend"] = best.name if best else None
    if "backend" not in args.skip and best is not None and best.name != default:
        torch._dynamo.reset()

        def forced():
            return sdpa_kernel([best], set_priority=True)

        compiled, out, first = timed_compile(unet, kw, forced)
        with forced():
            seconds = time_call(compiled, kw)
        row(f"storyboard + sdpa {best.name}", seconds, out, first_call_s=first)
    del compiled, unet, out
    free()

    # 4. A LoRA: live adapter in eager mode, then merged into the weights and compiled.
    if "lora" not in args.skip:
        from peft import LoraConfig

        unet = fresh_unet()
        unet.add_adapter(LoraConfig(r=32, lora_alpha=32, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
                         adapter_name="hero")
        with torch.inference_mode():
            live = unet(**kw).sample
        row("lora live, eager (storyboard so far)", time_call(unet, kw))
        unet.fuse_lora(lora_scale=1.0)
        unet.to(memory_format=torch.channels_last)
        compiled, out, first = timed_compile(unet, kw)
        seconds = time_call(compiled, kw)
        row("lora merged, channels_last+compile", seconds, first_call_s=first,
            rel_err_vs_live_lora=float(f"{rel_err(out, live):.2e}"))
        del compiled, unet, live, out
        free()

    # 5. FP8 linears (torchao), bf16 elsewhere.
    if "fp8" not in args.skip:
        fp8(kw, row, report, save)
    save()


if __name__ == "__main__":
    main()
