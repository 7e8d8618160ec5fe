"""Would FP8 with static activation scales, calibrated once per model, beat today's dynamic
rows? A probe.

In: a diffusers folder (bench/gpu_models.py) and its family, or ``builtin:tiny-sdxl`` on any
machine; the batch (panels, size); the calibration (steps). Out: one JSON object on stdout.

Today's opt-in FP8 (``dtype: fp8``: torchao, e4m3, each activation row scaled by its own
maximum, computed as it runs) renders an SDXL panel-step in 25.6 ms against 28.5 ms compiled in
16 bits, with a UNet step error of 3.9e-2: the matrix products halve (105 to 55 ms of a 224 ms
step) but quantising every activation (a row maximum, then a cast) adds Triton kernels (46 to
82 ms). With static scales (the MLPerf SDXL recipe: one scale per layer input, from the largest
value it saw in a calibration run; the time and added-condition embeddings left in 16 bits,
as are the convolutions, ``conv_in``/``conv_out`` and the shortcuts among them) quantising an
activation is a division and a cast, which inductor fuses into the kernel that made it. The
target for the opt-in path (issue 17): at most 1.15 s a panel (23 ms a panel-step at 50 steps)
with the step's relative error at most 5e-2.

1. Load the model with storyboard's ``load_model`` in fp16; keep the UNet's first-step inputs
   for a prompt not used to calibrate, and the plain fp16 UNet's output on them (the
   reference).
2. Calibrate: every eligible ``Linear``'s input absolute maximum (``--calib-steps`` steps of a
   pipeline call on the course's prompts), kept on the GPU.
3. For each way in ``--ways``, a copy of the UNet in ``--dtype`` (bf16, as storyboard's FP8
   today, or fp16), changed, then compiled like storyboard's (``torch.compile`` of its forward,
   static shapes; ``--tune``: with storyboard's kernel tuning): ``bf16`` (no change, in
   ``--dtype`` whatever its name), ``dynamic`` (storyboard's FP8 today, torchao's per-row
   dynamic scales), ``static`` (per-tensor scales for activations and weights,
   ``torch._scaled_mm``), ``static-rows`` (static activation scales, a scale per weight row),
   ``static-conv`` (``static``, and the 3x3 convolutions as FP8 products over their patches:
   ``fp8_conv.py``). For each: the first call's seconds (the compile), milliseconds per
   panel-step over ``--calls`` calls, and the relative error against the reference (the
   difference's norm over the reference's, as bench/speed.py reports it). ``--layout`` applies
   storyboard's compiled layout (channels_last, fused QKV projections) before step 2.

    python bench/fp8_static_probe.py builtin:tiny-sdxl sdxl --panels 2 --size 64 \\
        --calib-steps 2 --calls 2 --backend aot_eager          # any machine: the numbers work
    python bench/fp8_static_probe.py /tmp/sbe/weights/sdxl-fp16 sdxl --panels 8   # an H200
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from aoti_probe import (first_unet_call, map_tensors, model_arguments, sync,  # noqa: E402
                        timed_calls)
from fp8_conv import convertible, fp8_conv_module  # noqa: E402

FP8_MAX = 448.0  # the largest float8_e4m3fn
WAYS = ("bf16", "dynamic", "static", "static-rows", "static-conv")


def eligible(module, fqn: str) -> bool:
    """The layers storyboard's FP8 quantises (engine/speed/apply.py): Linears whose sizes
    divide by 16, not the time or added-condition embeddings, no LoRA factors."""
    from storyboard.engine.speed.apply import _fp8_layer

    return _fp8_layer(module, fqn)


def calibrate(model, panels: int, size: int, steps: int, convs: bool) -> dict:
    """Each eligible Linear's (and with ``convs`` each convertible convolution's) largest input
    magnitude over a pipeline call of the course's prompts, as a 0-d float32 tensor on the GPU
    (no synchronisation while it runs)."""
    import torch

    from reference import COURSE_PANELS

    unet = model.pipe.unet
    amax: dict = {}
    handles = []
    for name, module in unet.named_modules():
        if eligible(module, name) or (convs and convertible(module, name)):
            def hook(mod, args, name=name):
                seen = args[0].detach().abs().amax().float()
                amax[name] = torch.maximum(amax[name], seen) if name in amax else seen
            handles.append(module.register_forward_pre_hook(hook))
    prompts = [COURSE_PANELS[i % len(COURSE_PANELS)] for i in range(panels)]
    try:
        with torch.inference_mode():
            model.pipe(prompt=[p.prompt for p in prompts],
                       negative_prompt=[p.negative for p in prompts], num_inference_steps=steps,
                       guidance_scale=4.0, width=size, height=size, output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    return amax


def static_linear(linear, input_amax, rows: bool):
    """``linear`` as FP8 with a static input scale: its input divided by the scale and cast to
    e4m3, multiplied with its e4m3 weights by ``torch._scaled_mm``, the bias added there."""
    import torch

    class StaticFP8Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            weight = linear.weight.detach().float()
            amax = weight.abs().amax(dim=1, keepdim=True) if rows else weight.abs().amax()
            scale = (amax / FP8_MAX).clamp(min=1e-12)
            self.register_buffer("weight_fp8", (weight / scale).clamp(-FP8_MAX, FP8_MAX)
                                 .to(torch.float8_e4m3fn))  # (out, in): its .t() is col-major
            self.register_buffer("weight_scale", scale.reshape(1, -1) if rows
                                 else scale.reshape(()))
            self.register_buffer("input_scale",
                                 (input_amax.float() / FP8_MAX).clamp(min=1e-12).reshape(()))
            self.bias = linear.bias
            self.rows = rows

        def forward(self, x):
            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            q = (flat / self.input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            # Row-wise scaling wants a scale per row of each operand: the one static scale,
            # repeated (a copy inductor fuses).
            scale_a = (self.input_scale.reshape(1, 1).repeat(flat.shape[0], 1) if self.rows
                       else self.input_scale)
            out = torch._scaled_mm(q, self.weight_fp8.t(), scale_a=scale_a,
                                   scale_b=self.weight_scale, bias=self.bias,
                                   out_dtype=x.dtype)
            return out.reshape(*shape[:-1], out.shape[-1])

    return StaticFP8Linear()


def make_way(base, way: str, amax: dict):
    """A changed copy of ``base`` (the UNet in --dtype), and how many layers changed."""
    unet = copy.deepcopy(base)
    if way == "bf16":
        return unet, 0
    if way == "dynamic":
        from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig, PerRow,
                                          quantize_)

        quantize_(unet, Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False), filter_fn=eligible)
        return unet, sum(1 for n, m in base.named_modules() if eligible(m, n))
    changed = 0
    for name, module in list(unet.named_modules()):
        if name not in amax:
            continue
        if eligible(module, name):
            replacement = static_linear(module, amax[name], way == "static-rows")
        elif way == "static-conv" and convertible(module, name):
            replacement = fp8_conv_module(module, amax[name])
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name) if parent_name else unet
        setattr(parent, child, replacement)
        changed += 1
    return unet, changed


def to_bf16(value):
    import torch

    return map_tensors(lambda t: t.to(torch.bfloat16) if t.is_floating_point() else t, value)


def run(args) -> dict:
    import torch

    from storyboard.engine.loading import load_model
    from storyboard.options import RuntimeOptions
    from storyboard.plan.jobs import ModelRef

    report: dict = {"model": args.model, "panels": args.panels, "size": args.size,
                    "calib_steps": args.calib_steps, "backend": args.backend}
    if args.model.startswith("builtin:"):
        ref = ModelRef("builtin", args.model.split(":", 1)[1], dtype="fp16")
    else:
        ref = ModelRef("folder", args.model, family=args.family, dtype="fp16")
    t = time.perf_counter()
    model = load_model(ref, RuntimeOptions(progress=False, dtype="fp16"))
    report["load_s"] = round(time.perf_counter() - t, 2)
    if args.layout:  # before calibrating: fused QKV projections are layers of their own
        from storyboard.engine.speed.apply import apply_speedups
        from storyboard.plan import Speedup

        apply_speedups(model, [Speedup(n) for n in args.layout])
    report.update(dtype=args.dtype, layout=args.layout, tune=args.tune)
    # 1. The held-out inputs and the plain fp16 reference.
    call_args, call_kwargs = first_unet_call(model, None, args.panels, args.size, prepend=True)
    unet = model.pipe.unet
    with torch.inference_mode():
        reference = unet(*call_args, **call_kwargs)[0].float()
    # 2. Calibration, on the fp16 model (what a writer's build would run it on).
    t = time.perf_counter()
    amax = calibrate(model, args.panels, args.size, args.calib_steps,
                     convs="static-conv" in args.ways)
    sync()
    report["calibrate_s"] = round(time.perf_counter() - t, 2)
    print(f"[fp8] loaded in {report['load_s']} s, calibrated in {report['calibrate_s']} s",
          file=sys.stderr, flush=True)
    values = sorted(float(v) for v in amax.values())
    report["layers_calibrated"] = len(values)
    report["input_amax"] = {"min": values[0], "median": values[len(values) // 2],
                            "max": values[-1]} if values else None
    # 3. Each way on a copy in --dtype (bf16: storyboard's FP8 today), compiled.
    if args.dtype == "bf16":
        base = copy.deepcopy(unet).to(torch.bfloat16)
        base_args, base_kwargs = to_bf16(call_args), to_bf16(call_kwargs)
    else:  # the fp16 UNet itself: each way changes a copy of it
        base, base_args, base_kwargs = unet, call_args, call_kwargs
    model.pipe.unet = None  # the pipeline's UNet is no longer needed
    del unet
    options = None
    if args.tune:
        from storyboard.engine.speed.tuning import COMPILE_OPTIONS

        options = dict(COMPILE_OPTIONS)
    for way in args.ways:
        entry: dict = {}
        try:
            changed, layers = make_way(base, way, amax)
            entry["layers_changed"] = layers
            changed.forward = torch.compile(changed.forward, backend=args.backend,
                                            dynamic=False, options=options)
            t = time.perf_counter()
            with torch.inference_mode():
                got = changed(*base_args, **base_kwargs)[0].float()
            sync()
            entry["first_call_s"] = round(time.perf_counter() - t, 2)
            entry["relative_error"] = float((got - reference).norm() / reference.norm())
            entry["call_s"] = timed_calls(changed, base_args, base_kwargs, args.calls)
            entry["ms_per_panel_step"] = round(1000 * entry["call_s"] / args.panels, 2)
            del changed, got
        except Exception as exc:  # noqa: BLE001 - a probe reports what failed and goes on
            entry["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        report[way] = entry
        print(f"[fp8] {way}: {json.dumps(entry)}", file=sys.stderr, flush=True)
        if args.out:  # each way as it ends: a run stopped by a time limit keeps what it did
            args.out.write_text(json.dumps(report, indent=1))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(ap)
    ap.add_argument("--calib-steps", type=int, default=20)
    ap.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    ap.add_argument("--backend", default="inductor", help="torch.compile's (aot_eager on a CPU)")
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16",
                    help="what is not FP8 (bf16: storyboard's FP8 today)")
    ap.add_argument("--layout", nargs="*", default=[], choices=["channels_last", "fused_qkv"],
                    help="storyboard's compiled layout, applied before calibrating")
    ap.add_argument("--tune", action="store_true", help="storyboard's kernel tuning options")
    ap.add_argument("--out", type=Path, help="also write the report here, after each way")
    args = ap.parse_args()
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
