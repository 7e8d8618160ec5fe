"""Would torch.compile's ahead-of-time artifacts (``aot_compile``) give a new process a compiled
UNet in a second or two? A probe.

In: a diffusers folder (bench/gpu_models.py) and its family, or ``builtin:tiny-sdxl`` on any
machine; the batch (panels, size). Out: one JSON object on stdout.

With a warm compile cache a new process still pays about 9-12 s before its first compiled step
on an H200, most of it dynamo tracing the UNet again (bench/warm_compile_probe.py splits it);
an AOTInductor package skips the tracing but loaded in 22.3 s (aoti_probe.py, round 6).
``torch.compile(fn, fullgraph=True).aot_compile(example_inputs)`` (experimental in torch 2.13)
traces and compiles once and saves the result, guards and kernels included; a new process loads
it with ``torch.compiler.load_compiled_function`` and calls it without tracing. What the
diffusers UNet needs (found on the CPU with torch 2.13):
- the function compiled is a module-level wrapper taking the UNet as its first argument
  (``unet_call`` below): the UNet's own ``forward`` is wrapped by a diffusers decorator, and
  the artifact, which pickles the function it compiled, cannot pickle it;
- guards kept to the portable ones (``torch.compiler.keep_portable_guards_unsafe``):
  diffusers' attention inspects its processor's signature on every call, which makes guards
  on code objects that cannot be saved;
- the saved guards check each tensor's dispatch keys as the compile saw them, so the artifact
  is called in the context it was made in (here ``torch.no_grad()``, inputs that are not
  inference-mode tensors).

1. load the model with storyboard's ``load_model`` and its compiled layout (``--layout``,
   default channels_last and fused QKV projections); keep the UNet's first call's inputs;
2. ``aot_compile`` the UNet on them and save the artifact (one per architecture and batch
   shape; the weights are arguments, not part of it);
3. in new processes (``--loads``), one after another on an inductor cache of their own (empty
   for the first): load the model, load the artifact, compare its output with
   the eager UNet's, check that a weight changed in place (a LoRA merged) is seen, and time UNet
   calls eagerly and through the artifact.

    python bench/aot_compile_probe.py builtin:tiny-sdxl sdxl --panels 2 --size 64 --calls 3
    python bench/aot_compile_probe.py /tmp/sbe/weights/sdxl-fp16 sdxl --panels 8 --loads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from aoti_probe import (compare_with_eager, first_unet_call, map_tensors,  # noqa: E402
                        model_arguments, run_child, sync, timed_calls)
from regional_probe import load  # noqa: E402


def unet_call(unet, *args, **kwargs):
    """The UNet called as a module: what is compiled (importable, so the artifact can name it)."""
    return unet(*args, **kwargs)


def plain(value):
    """``value`` with each tensor copied outside inference mode, as ``torch.load`` gives them
    back in the loading process: the artifact's guards check the inputs' dispatch keys."""
    return map_tensors(lambda t: t.clone(), value)


def options(args) -> dict:
    import torch

    # torch 2.11 hides ``aot_compile`` behind this switch; later versions have it always.
    if hasattr(torch._dynamo.config, "enable_aot_compile"):
        torch._dynamo.config.enable_aot_compile = True
    chosen = {"guard_filter_fn": torch.compiler.keep_portable_guards_unsafe}
    if args.tune:
        from storyboard.engine.speed.tuning import COMPILE_OPTIONS

        chosen.update(COMPILE_OPTIONS)
    return chosen


def build(args) -> dict:
    import torch

    report: dict = {}
    t = time.perf_counter()
    model = load(args.model, args.family, args.layout)
    report["load_s"] = round(time.perf_counter() - t, 2)
    call_args, call_kwargs = plain(first_unet_call(model, None, args.panels, args.size,
                                                   prepend=True))
    unet = model.pipe.unet
    with torch.no_grad():
        expected = unet(*call_args, **call_kwargs)[0]
    t = time.perf_counter()
    with torch.no_grad():
        compiled = torch.compile(unet_call, fullgraph=True, dynamic=False,
                                 options=options(args)).aot_compile(
            ((unet, *call_args), call_kwargs))
    report["aot_compile_s"] = round(time.perf_counter() - t, 2)
    with torch.no_grad():
        got = compiled(unet, *call_args, **call_kwargs)[0]
    report["rel_diff_vs_eager_same_process"] = (
        (got.float() - expected.float()).abs().max().item() / expected.float().abs().max().item())
    t = time.perf_counter()
    compiled.save_compiled_function(str(args.work / "unet.aot"))
    report["save_s"] = round(time.perf_counter() - t, 2)
    report["artifact_bytes"] = (args.work / "unet.aot").stat().st_size
    torch.save({"args": call_args, "kwargs": call_kwargs, "expected": expected},
               args.work / "io.pt")
    return report


def load_and_run(args) -> dict:
    """What a later build would do, in a process of its own."""
    import torch

    model = load(args.model, args.family, args.layout)
    io = torch.load(args.work / "io.pt", map_location=model.device)
    unet = model.pipe.unet
    t = time.perf_counter()
    with open(args.work / "unet.aot", "rb") as f:
        compiled = torch.compiler.load_compiled_function(f)
    sync()
    report: dict = {"artifact_load_s": round(time.perf_counter() - t, 3)}
    call_args, call_kwargs = io["args"], io["kwargs"]
    t = time.perf_counter()
    with torch.no_grad():
        compiled(unet, *call_args, **call_kwargs)
    sync()
    report["first_call_s"] = round(time.perf_counter() - t, 3)
    # The artifact's guards were made outside inference mode: everything under no_grad.
    call = lambda *a, **k: compiled(unet, *a, **k)  # noqa: E731
    report.update(compare_with_eager(call, unet, unet, call_args, call_kwargs, io["expected"],
                                     mode=torch.no_grad))
    report["eager_call_s"] = timed_calls(unet, call_args, call_kwargs, args.calls,
                                         mode=torch.no_grad)
    report["compiled_call_s"] = timed_calls(call, call_args, call_kwargs, args.calls,
                                            mode=torch.no_grad)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(ap)
    ap.add_argument("--layout", type=lambda s: [x for x in s.split(",") if x],
                    default=["channels_last", "fused_qkv"],
                    help="storyboard speed-ups applied before compiling, comma-separated")
    ap.add_argument("--tune", action="store_true", help="storyboard's kernel tuning options")
    ap.add_argument("--loads", type=int, default=1, help="new processes that load the artifact")
    ap.add_argument("--work", type=Path, default=Path("/tmp/storyboard-aot-compile"))
    ap.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.load:
        print(json.dumps(load_and_run(args)))
        return
    report: dict = {"model": args.model, "panels": args.panels, "size": args.size,
                    "layout": args.layout, "tune": args.tune}
    try:
        report.update(build(args))
    except Exception as exc:  # noqa: BLE001 - a probe reports what failed
        report["build_error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        print(json.dumps(report))
        return
    report["loads"] = []
    # The loads share an inductor cache that is not the builder's: the first finds it empty
    # (the artifact must not need the builder's cache), the later ones find what it left.
    shutil.rmtree(args.work / "inductor-loads", ignore_errors=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(args.work / "inductor-loads")}
    for _ in range(args.loads):
        report["loads"].append(run_child(__file__, [*sys.argv[1:], "--load"],
                                         "aot-compile load", env))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
