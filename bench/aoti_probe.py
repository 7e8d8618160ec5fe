"""Would an AOTInductor package give a new process a compiled UNet in seconds? A probe.

In: a diffusers folder (bench/gpu_models.py) and its family, or ``builtin:tiny-sdxl`` on any
machine; the batch (panels, size). Out: one JSON object on stdout.

torch.compile's warm cache still costs a new process about 12 s on an H200 (dynamo traces the
UNet again on the main thread before it can use the cached kernels), which is why compiling
pays only for long renders, and compiling on a thread while the first batches render measured
slower than not compiling at all (results/nvidia-h200-2026-12-01-e2e-round3.json). An
AOTInductor package is the compiled UNet as a shared library: loading it needs no tracing.
This probe does what storyboard would do, in storyboard's compiled layout (channels_last, fused
QKV projections, the cross-attention K/V cache passing K/V in as inputs):
1. load the model with storyboard's ``load_model`` and apply those speed-ups;
2. run one pipeline call and keep the UNet's first call's inputs, after storyboard's hooks;
3. ``torch.export`` the UNet on them and ``aoti_compile_and_package`` it without its weights
   (``package_constants_in_so=False``: one package per architecture and batch shape, whatever
   the weights or merged LoRAs);
4. in a new process (``--load``, what a later build would do): load the model, load the package,
   point it at the module's own weights (``load_constants(..., user_managed=True)``, no copy),
   compare its output with the eager UNet's, check that a weight changed in place (a LoRA
   merged) is seen, and time UNet calls eagerly and through the package.

    python bench/aoti_probe.py builtin:tiny-sdxl sdxl --panels 2 --size 64
    python bench/aoti_probe.py /tmp/sbe/weights/sdxl-fp16 sdxl --panels 8 --size 1024 --loads 2

Each load runs in a new process (``--loads``), and reports inductor's import apart from the
package's load; ``--reuse`` loads the package ``--work`` already holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load(model_arg: str, family: str):
    """storyboard's model, in storyboard's compiled layout."""
    from storyboard.engine.loading import load_model
    from storyboard.engine.speed.apply import apply_speedups
    from storyboard.options import RuntimeOptions
    from storyboard.plan import Speedup
    from storyboard.plan.jobs import ModelRef

    if model_arg.startswith("builtin:"):
        ref = ModelRef("builtin", model_arg.split(":", 1)[1])
    else:
        ref = ModelRef("folder", model_arg, family=family, dtype="fp16")
    model = load_model(ref, RuntimeOptions(progress=False))
    speed = apply_speedups(model, [Speedup.CHANNELS_LAST, Speedup.FUSED_QKV, Speedup.CROSS_KV])
    return model, speed


def map_tensors(fn, value):
    """``value`` (a tensor, or dicts, tuples and lists holding them) with ``fn`` applied to
    each tensor; everything else as it is."""
    import torch

    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_tensors(fn, v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(fn, v) for v in value)
    return value


def first_unet_call(model, speed, panels: int, size: int, *,
                    prepend: bool = False) -> tuple[tuple, dict]:
    """The UNet's first call's arguments in one pipeline call, as its forward receives them
    (after the K/V cache's hook has put K/V into ``cross_attention_kwargs``), or with
    ``prepend`` as the pipeline passes them (before any hook)."""
    import torch

    seen: dict = {}

    def clone(value):
        return map_tensors(lambda t: t.detach().clone(), value)

    def keep(module, args, kwargs):
        if not seen:
            seen["args"], seen["kwargs"] = clone(args), clone(kwargs)

    unet = model.pipe.unet
    handle = unet.register_forward_pre_hook(keep, with_kwargs=True, prepend=prepend)
    try:
        with torch.inference_mode():
            if speed is not None and speed.cross_kv is not None:
                speed.cross_kv.reset()
            model.pipe(prompt=["a lighthouse at dawn"] * panels,
                       negative_prompt=["blurry"] * panels, num_inference_steps=2,
                       guidance_scale=4.0, width=size, height=size, output_type="pt")
    finally:
        handle.remove()
    return seen["args"], seen["kwargs"]


def compare_with_eager(compiled, eager, unet, args, kwargs, expected, mode=None) -> dict:
    """``compiled`` against ``eager`` (each called with the UNet call's arguments, under
    ``mode``, inference mode by default): the largest difference relative to eager's largest
    value, eager's against ``expected`` (the first process's), and whether a weight of ``unet``
    changed in place (as a LoRA merge does) is seen by ``compiled``."""
    import torch

    mode = mode or torch.inference_mode
    with mode():
        got = compiled(*args, **kwargs)[0]
        reference = eager(*args, **kwargs)[0]
    scale = reference.float().abs().max().item()
    report = {"rel_diff_vs_eager": (got.float() - reference.float()).abs().max().item() / scale,
              "rel_diff_vs_first_process": (
                  (reference.float() - expected.float()).abs().max().item() / scale)}
    with mode():
        weight = unet.conv_in.weight
        weight.mul_(1.5)
        changed = eager(*args, **kwargs)[0]
        got = compiled(*args, **kwargs)[0]
        weight.div_(1.5)
    report["sees_weights_changed_in_place"] = bool(
        (got.float() - changed.float()).abs().max().item()
        < 0.1 * (changed.float() - reference.float()).abs().max().item())
    return report


def timed_calls(fn, args, kwargs, n: int, mode=None) -> float:
    """Seconds per call of ``fn`` over ``n`` calls after one, under ``mode`` (inference mode
    by default)."""
    import torch

    with (mode or torch.inference_mode)():
        fn(*args, **kwargs)  # the first call pays for starting up
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn(*args, **kwargs)
        sync()
    return round((time.perf_counter() - t) / n, 4)


def build(args) -> dict:
    import torch

    report: dict = {}
    t = time.perf_counter()
    model, speed = load(args.model, args.family)
    report["load_s"] = round(time.perf_counter() - t, 2)
    call_args, call_kwargs = first_unet_call(model, speed, args.panels, args.size)
    unet = model.pipe.unet
    with torch.inference_mode():
        expected = unet.forward(*call_args, **call_kwargs)[0]
    t = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(unet, call_args, call_kwargs, strict=False)
    report["export_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    torch._inductor.aoti_compile_and_package(
        program, package_path=str(args.work / "unet.pt2"),
        inductor_configs={"aot_inductor.package_constants_in_so": False})
    report["package_s"] = round(time.perf_counter() - t, 2)
    report["package_bytes"] = (args.work / "unet.pt2").stat().st_size
    torch.save({"args": call_args, "kwargs": call_kwargs, "expected": expected},
               args.work / "io.pt")
    return report


def load_and_run(args) -> dict:
    """What a later build would do, in a process of its own."""
    import torch

    model, _ = load(args.model, args.family)
    io = torch.load(args.work / "io.pt", map_location=model.device)
    unet = model.pipe.unet
    # Round 6 measured 22.3 s for the package's load on an H200 (0.7 s on a CPU, tiny model):
    # inductor's own import, kept apart here, and the load itself, first and later processes
    # (``--loads``: a driver's compiled-kernel cache would make only the first slow).
    t = time.perf_counter()
    import torch._inductor.package  # noqa: F401

    report: dict = {"inductor_import_s": round(time.perf_counter() - t, 3)}
    # The load asks which vector instructions this CPU has, by compiling probe programs with
    # the host's C++ compiler (pytorch/pytorch#191715): timed apart (cached for the process).
    t = time.perf_counter()
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    valid_vec_isa_list()
    report["cpu_isa_probe_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    compiled = torch._inductor.aoti_load_package(str(args.work / "unet.pt2"))
    sync()
    report["package_load_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    weights = dict(unet.named_parameters())
    weights.update(unet.named_buffers())
    names = compiled.get_constant_fqns()
    missing = [n for n in names if n not in weights]
    compiled.load_constants({n: weights[n] for n in names if n in weights},
                            check_full_update=not missing, user_managed=True)
    report["constants_s"] = round(time.perf_counter() - t, 3)
    report["constants"] = len(names)
    report["constants_missing"] = missing[:10]
    call_args, call_kwargs = io["args"], io["kwargs"]
    report.update(compare_with_eager(compiled, unet.forward, unet, call_args, call_kwargs,
                                     io["expected"]))
    n = args.calls
    report["eager_call_s"] = timed_calls(unet.forward, call_args, call_kwargs, n)
    report["package_call_s"] = timed_calls(compiled, call_args, call_kwargs, n)
    return report


def run_child(script: str, argv: list[str], tag: str, env: dict | None = None) -> dict:
    """Run ``script`` with ``argv`` in a new Python process; its last stdout line as JSON, with
    ``process_s`` (the whole process's seconds) or ``error`` (its stderr's end). Printed to
    stderr with ``tag`` as it ends."""
    t = time.perf_counter()
    child = subprocess.run([sys.executable, script, *argv], env=env, capture_output=True,
                           text=True)
    entry: dict = {"process_s": round(time.perf_counter() - t, 2)}
    if child.returncode:
        entry["error"] = child.stderr[-3000:]
    else:
        entry.update(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"[{tag}] {json.dumps(entry)}", file=sys.stderr, flush=True)
    return entry


def model_arguments(ap: argparse.ArgumentParser) -> None:
    """The model and batch arguments the probes share."""
    ap.add_argument("model", help="a diffusers folder, or builtin:tiny-sdxl")
    ap.add_argument("family", choices=["sdxl", "kolors"])
    ap.add_argument("--panels", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--calls", type=int, default=10, help="UNet calls timed each way")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(ap)
    ap.add_argument("--work", type=Path, default=Path("/tmp/storyboard-aoti"))
    ap.add_argument("--loads", type=int, default=1, help="new processes that load the package")
    ap.add_argument("--reuse", action="store_true",
                    help="load the package --work already holds instead of building one")
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.load:
        print(json.dumps(load_and_run(args)))
        return
    report = {"model": args.model, "panels": args.panels, "size": args.size}
    if not (args.reuse and (args.work / "unet.pt2").is_file()):
        report.update(build(args))
    argv = [a for a in sys.argv[1:] if a != "--reuse"]
    report["loads"] = []
    for _ in range(args.loads):
        report["loads"].append(run_child(__file__, [*argv, "--load"], "aoti load"))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
