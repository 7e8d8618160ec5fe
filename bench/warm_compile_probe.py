"""Where do the seconds of a warm compile go? A probe.

In: a diffusers folder (bench/gpu_models.py) and its family, or ``builtin:tiny-sdxl`` on any
machine; the batch (panels, size); the speed-ups (storyboard's names); a compile cache folder.
Out: one JSON object on stdout.

With the compile cache warm, a new process still pays about 9-12 s on an H200 before its first
compiled step (``first_call_warm_cache_s`` 9.3 s in docs/speed-experiments.md, round 4; about
12 s in whole builds), and that is what makes a default build compile only long renders
(``WARM_COMPILE_PRIOR_S``). Whether it is dynamo tracing the UNet again, AOTAutograd, inductor
finding its cached graph, or loading the cached kernels decides which lever could shrink it
(regional compilation traces less; a compiled-artifacts cache skips lookups; nothing helps a
kernel load but fewer kernels). This probe runs new processes on one compile cache (``--cache``,
default a new folder), the first compiling cold unless the cache is warm already, and in each:
1. load the model with storyboard's ``load_model`` and apply ``--speedups`` as a build would
   (``engine/speed/apply.py``);
2. run one pipeline call (``--steps`` steps, latents out): the compile happens in it; then the
   same call again (the steady cost);
3. report both calls' seconds, ``torch._dynamo.utils.compile_times()`` (dynamo's own phases),
   and with ``--profile`` the first call under ``cProfile``, its time by where the code lives
   (self time of functions in ``torch/_dynamo``, ``torch/_functorch``, ``torch/_inductor``,
   ``triton`` and so on) and the functions with the most cumulative time. The profiler slows
   Python-heavy work such as tracing, so profile a process of its own (``--cache`` again).

    python bench/warm_compile_probe.py builtin:tiny-sdxl sdxl --panels 2 --size 64 \\
        --backend aot_eager --processes 2         # any machine: the numbers work
    python bench/warm_compile_probe.py /tmp/sbe/weights/sdxl-fp16 sdxl --panels 8 \\
        --cache /tmp/sbe/compile --processes 2    # an H200: cold, then warm
    python bench/warm_compile_probe.py /tmp/sbe/weights/sdxl-fp16 sdxl --panels 8 \\
        --cache /tmp/sbe/compile --processes 1 --profile   # warm, profiled
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from aoti_probe import model_arguments, run_child, sync  # noqa: E402

DEFAULT_SPEEDUPS = "channels_last,fused_qkv,tuned_kernels,torch.compile,vae.compile,cross_kv_once"
# Where a profiled function's file lives, first match wins: the parts of a compile.
GROUPS = (("torch/_dynamo", "dynamo"), ("torch/_functorch", "aot_autograd"),
          ("torch/_inductor", "inductor"), ("torch/_subclasses", "fake_tensors"),
          ("torch/fx", "fx"), ("torch/_guards", "dynamo"), ("triton", "triton"),
          ("diffusers", "diffusers"), ("storyboard", "storyboard"), ("torch", "torch_other"))


def group_of(filename: str) -> str:
    path = "/" + filename.replace(os.sep, "/")
    for part, name in GROUPS:  # a folder of that name, or a module (torch/_guards.py)
        if f"/{part}/" in path or f"/{part}.py" in path:
            return name
    return "builtins" if filename.startswith("~") or filename.startswith("<") else "other"


def profile_groups(profile) -> dict[str, float]:
    """Self seconds of the profiled call by where the code lives, largest first."""
    import pstats

    stats = pstats.Stats(profile)
    groups: dict[str, float] = {}
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        key = group_of(filename)
        groups[key] = groups.get(key, 0.0) + tottime
    return {k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


def top_functions(profile, n: int = 40) -> list[list]:
    """The ``n`` functions with the most cumulative time: [file:line(name), seconds]."""
    import pstats

    stats = pstats.Stats(profile)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[:n]
    return [[f"{Path(f).name}:{line}({name})", round(ct, 3)]
            for (f, line, name), (_cc, _nc, _tt, ct, _callers) in rows]


def child(args) -> dict:
    import cProfile

    import torch

    from storyboard.engine.loading import load_model
    from storyboard.engine.speed.apply import apply_speedups
    from storyboard.options import RuntimeOptions
    from storyboard.plan import Speedup
    from storyboard.plan.jobs import ModelRef

    from reference import COURSE_PANELS

    report: dict = {}
    t = time.perf_counter()
    if args.model.startswith("builtin:"):
        ref = ModelRef("builtin", args.model.split(":", 1)[1])
    else:
        ref = ModelRef("folder", args.model, family=args.family, dtype="fp16")
    model = load_model(ref, RuntimeOptions(progress=False))
    speed = apply_speedups(model, [Speedup(n) for n in args.speedups], backend=args.backend)
    report["load_s"] = round(time.perf_counter() - t, 2)
    report["applied"] = [str(s) for s in speed.applied]
    prompts = [COURSE_PANELS[i % len(COURSE_PANELS)] for i in range(args.panels)]

    def call() -> float:
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            if speed.cross_kv is not None:
                speed.cross_kv.reset()
            model.pipe(prompt=[p.prompt for p in prompts],
                       negative_prompt=[p.negative for p in prompts],
                       num_inference_steps=args.steps, guidance_scale=4.0, width=args.size,
                       height=args.size, output_type="latent")
            if speed.cross_kv is not None:
                speed.cross_kv.reset()
        sync()
        return round(time.perf_counter() - start, 3)

    profile = cProfile.Profile() if args.profile else None
    if profile is not None:
        profile.enable()
    report["first_call_s"] = call()
    if profile is not None:
        profile.disable()
    report["second_call_s"] = call()
    report["first_call_extra_s"] = round(report["first_call_s"] - report["second_call_s"], 3)
    from torch._dynamo.utils import compile_times

    headers, values = compile_times(repr="csv", aggregate=True)
    report["dynamo_compile_times_s"] = {h: v for h, v in zip(headers, values)}
    if profile is not None:
        report["profile_self_s"] = profile_groups(profile)
        report["profile_top_cumulative_s"] = top_functions(profile)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    model_arguments(ap)
    ap.add_argument("--speedups", type=lambda s: [x for x in s.split(",") if x],
                    default=DEFAULT_SPEEDUPS.split(","),
                    help=f"storyboard's speed-ups, comma-separated (default {DEFAULT_SPEEDUPS})")
    ap.add_argument("--steps", type=int, default=2, help="steps of each pipeline call")
    ap.add_argument("--backend", default="inductor", help="torch.compile's (aot_eager on a CPU)")
    ap.add_argument("--cache", type=Path, help="the compile cache (default: a new folder)")
    ap.add_argument("--processes", type=int, default=2, help="new processes, one after another")
    ap.add_argument("--profile", action="store_true",
                    help="profile each first call (cProfile slows Python-heavy tracing: its "
                         "seconds are not the unprofiled ones)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    cache = args.cache or Path(tempfile.mkdtemp(prefix="warm-compile-"))
    cache.mkdir(parents=True, exist_ok=True)
    # Inductor keeps its Triton kernels under its own cache folder, as in a build.
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    report = {"model": args.model, "panels": args.panels, "size": args.size,
              "steps": args.steps, "speedups": args.speedups, "backend": args.backend,
              "cache": str(cache), "processes": []}
    for _ in range(args.processes):
        report["processes"].append(run_child(__file__, [*sys.argv[1:], "--child"],
                                             "warm-compile", env))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
